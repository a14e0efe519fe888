"""Every registered backend keeps the backend contract: tests generated from the registry, so a
new ``@register_backend`` class is checked without anyone writing a test for it.

The contract (profilers/backends.py): ``get_backend(name)`` gives a backend whose ``name`` and
``runtime()["backend"]`` are its registered name, or -- where the machine lacks what it needs
-- one :class:`HwcostError` that names it; settings are checked on construction; an available
backend times a tiny op (positive, finite) and restores the thread count it changed.
No timing asserts."""
from __future__ import annotations

import math

import pytest
import torch

from device_tables import OpKey
from profilers import backends as B
from profilers.measure import Settings
from profilers.shapes import key_module
from spaces.errors import HwcostError

# list_backends() names a prefix family "ort:<ExecutionProvider>": a name and a placeholder.
REGISTERED = [n for n in B.list_backends() if "<" not in n]
FAMILIES = [n[:n.index("<")] for n in B.list_backends() if "<" in n]
# One member each family surely has on a CPU machine (a new family must add its own here).
FAMILY_MEMBERS = {"ort:": "CPUExecutionProvider"}
NAMES = REGISTERED + [f + FAMILY_MEMBERS[f] for f in FAMILIES if f in FAMILY_MEMBERS]

# What a backend needs that a machine may lack; any backend not listed must run on every CPU machine.
NEEDS = {"torch-cuda": torch.cuda.is_available}
TINY = Settings(max_time_s=0.2, warmup_s=0.01)


def available(name: str) -> bool:
    return NEEDS.get(name, lambda: True)()


def _available_only(names):
    return [pytest.param(n, marks=pytest.mark.skipif(not available(n), reason=f"{n} is not available here"))
            for n in names]


def _unavailable_only(names):
    return [pytest.param(n, marks=pytest.mark.skipif(available(n), reason=f"{n} is available here"))
            for n in names]


def test_the_registry_lists_backends_and_each_family_has_a_member_to_test():
    assert {"torch-cpu", "torch-cuda", "ort-cpu"} <= set(REGISTERED)
    assert set(FAMILIES) <= set(FAMILY_MEMBERS), "add a member of the new backend family to FAMILY_MEMBERS"


@pytest.mark.parametrize("name", NAMES)
def test_availability_is_a_backend_or_one_clear_error(name):
    """Asking for a backend never fails with anything but a HwcostError, and only where it should."""
    try:
        backend = B.get_backend(name)
    except HwcostError as e:
        assert not available(name), f"{name} should run here: {e}"
        return
    assert available(name), f"{name} was built on a machine that lacks what NEEDS says it needs"
    assert isinstance(backend, B.Backend)


@pytest.mark.parametrize("name", _available_only(NAMES))
def test_name_round_trips(name):
    backend = B.get_backend(name)
    assert backend.name in REGISTERED                      # a family member answers to its short name, if any
    assert backend.name == name or name.startswith(tuple(FAMILIES))
    again = B.get_backend(backend.name)
    assert again.runtime() == backend.runtime() and backend.runtime()["backend"] == backend.name


@pytest.mark.parametrize("name", _available_only(NAMES))
def test_available_backend_measures_a_tiny_op_and_restores_threads(name):
    backend = B.get_backend(name, threads=1)
    before = torch.get_num_threads()
    m = backend.measure(*key_module(OpKey("darts", "sep_conv_3x3", 1, 8, 8, 8, 8, 1)), TINY)
    assert math.isfinite(m.median) and m.median > 0 and m.n >= 3
    assert torch.get_num_threads() == before
    rt = backend.runtime()
    assert {"backend", "backend_version", "execution_provider", "threads", "dtype", "batch"} <= set(rt)
    assert (rt["threads"], rt["dtype"], rt["batch"]) == (1, "float32", 1)


@pytest.mark.parametrize("name", _unavailable_only(NAMES))
def test_unavailable_backend_is_a_clear_error_when_used(name, tmp_path, capsys):
    with pytest.raises(HwcostError, match=name):
        B.get_backend(name)
    from hwcost.cli import main
    out = tmp_path / "t.json"
    assert main(["profile", "--space", "nb201", "--backend", name, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwcost: error: ") and name in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name", NAMES)
def test_settings_are_checked_on_construction(name):
    with pytest.raises(HwcostError, match="threads"):
        B.get_backend(name, threads=0)
    with pytest.raises(HwcostError, match="batch"):
        B.get_backend(name, batch=0)
    with pytest.raises(HwcostError, match="float32"):
        B.get_backend(name, dtype="int3")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_without_or_with_an_unknown_member_is_a_clear_error(family):
    with pytest.raises(HwcostError, match=f"unknown backend '{family}'"):
        B.get_backend(family)
    with pytest.raises(HwcostError, match="NoSuchMember"):
        B.get_backend(family + "NoSuchMember")
