"""Keys timed in a sequence (``hwcost profile --context sequence``): each call timed alone between
the other keys' calls, its input rewritten just before."""
from __future__ import annotations

import tempfile

import pytest
import torch
import torch.nn as nn

from pathlib import Path

from device_tables import TableError, load_table, merge_tables
from hwcost.cli import main
from profilers.backends import get_backend, rewrite_in_place
from profilers.measure import Settings, Timer, cpu_block_timer
from profilers.profile import ProfileInterrupted, _steps, model_jobs, profile
from spaces.errors import HwcostError


class CacheToy:
    """A fake host: a call costs ``hot`` seconds right after a call of the same key (its data and code
    still in the caches), ``cold`` after any other call, and its ``touch`` is logged."""

    def __init__(self, costs: dict[str, tuple[float, float]]):
        self.costs, self.now, self.last, self.log = costs, 0.0, None, []

    def clock(self) -> float:
        return self.now

    def call(self, name: str):
        def run():
            hot, cold = self.costs[name]
            self.now += hot if self.last == name else cold
            self.last = name
            self.log.append(name)
        return run

    def touch(self, name: str):
        return lambda: self.log.append(f"touch {name}")


def test_sequence_times_each_call_between_the_others_and_alone_times_it_hot():
    toy = CacheToy({"a": (1e-3, 3e-3), "b": (2e-4, 1e-3), "c": (5e-3, 5.5e-3)})
    backend = get_backend("torch-cpu")
    backend.wall_clock = toy.clock
    settings = Settings(max_time_s=0.05, min_samples=10, passes=1)
    calls = [(toy.call(n), toy.touch(n)) for n in "abc"]
    measured = backend.measure_sequence(calls, settings)
    # each key's time is its cost after another key's call, exactly (the fake clock has no overhead)
    assert [m.median for m in measured] == pytest.approx([3e-3, 1e-3, 5.5e-3], rel=1e-12)
    assert all(m.n >= 10 and m.runs_per_sample == 1 and m.quality == "ok" for m in measured)
    assert len({m.n for m in measured}) == 1  # whole rounds
    # every timed call comes right after its own touch, and the keys take turns
    timed = toy.log[12:]  # after the warm-up: 2 x (touch, run) per key
    assert timed[:6] == ["touch a", "a", "touch b", "b", "touch c", "c"]
    assert timed[::2] == [f"touch {n}" for n in timed[1::2]]
    assert timed[1::2] == list("abc") * measured[0].n
    # ... while a key timed in a loop of its own calls pays the hot cost: what a layer never meets in a network
    alone = Timer(toy.call("b"), settings, cpu_block_timer(toy.clock), toy.clock).measure()
    assert alone.median == pytest.approx(2e-4, rel=1e-9)


def test_rewrite_in_place_keeps_every_value_and_the_memory():
    x = torch.tensor([1.5, -0.0, 1e-40, float("nan"), float("inf"), -3.25e38])
    before = x.clone()
    ptr = x.data_ptr()
    wide = torch.randn(4, 1).expand(4, 8)  # cannot be written in place: read instead
    ints = torch.arange(5)
    touch = rewrite_in_place((x, wide, ints, 3))
    for _ in range(3):
        touch()
    assert x.data_ptr() == ptr
    assert torch.equal(torch.signbit(x), torch.signbit(before))
    assert torch.equal(x[~x.isnan()], before[~before.isnan()]) and x.isnan().tolist() == before.isnan().tolist()
    assert 0 < x[2].item() < 1.18e-38 and x[2] == before[2]  # a subnormal stays itself
    assert torch.equal(ints, torch.arange(5))


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()


def test_profile_in_sequence_records_it_and_resumes_only_in_it(tmp_path):
    backend = get_backend("torch-cpu")
    jobs = model_jobs(_tiny(), (1, 3, 16, 16))
    settings = Settings(max_time_s=0.04, passes=2, min_samples=5)
    out = tmp_path / "t.json"
    seen = []

    def stop_after_three(entry):
        seen.append(entry)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(ProfileInterrupted):
        profile(jobs, backend, out, spaces=["torch"], settings=settings, context="sequence",
                on_entry=stop_after_three, reference=False)
    # the first sequence (every key of pass 1) was saved whole before the first entry was announced
    rows = Path(str(out) + ".journal").read_text().splitlines()[1:]  # the header, then one row per line
    assert len(rows) == len(jobs) and all('"pass":1' in r for r in rows)
    with pytest.raises(HwcostError, match="context='sequence'"):
        profile(jobs, backend, out, spaces=["torch"], settings=settings, resume=True, reference=False)
    table = profile(jobs, backend, out, spaces=["torch"], settings=settings, resume=True, context="sequence",
                    reference=False)
    assert sorted(k.to_str() for k in table.keys()) == sorted(j.key.to_str() for j in jobs)
    again = load_table(out)
    assert again.measurement["context"] == "sequence" and "rewritten" in again.measurement["context_note"]
    for e in again.entries:
        assert e.extra["passes"] == 2 and e.extra["runs_per_sample"] == 1 and e.n >= 5 and e.median_ms > 0
    # a table of the same keys timed alone is another measurement: merging the two needs --force
    alone = profile(jobs, backend, tmp_path / "alone.json", spaces=["torch"], settings=settings, reference=False)
    with pytest.raises(TableError, match="measurement.context"):
        merge_tables([again, alone])
    merged, conflicts = merge_tables([again, alone], force=True)
    assert len(merged) == len(jobs) and len(conflicts) == len(jobs)
    with pytest.raises(HwcostError, match="context must be one of"):
        profile(jobs, backend, tmp_path / "u.json", spaces=["torch"], settings=settings, context="network")


def test_cli_sequence_is_for_torch_cpu_only(capsys, tmp_path):
    out = tmp_path / "t.json"
    code = main(["profile", "--model", "torchvision:squeezenet1_1", "--input", "1x3x32x32", "--backend", "ort-cpu",
                 "--context", "sequence", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "torch-cpu only" in err and "Traceback" not in err and not out.exists()


def test_a_model_in_sequence_runs_every_call_in_its_own_order_each_with_its_own_module():
    torch.manual_seed(0)
    # two 3x3 convolutions of one shape (one key, two modules with their own weights), each followed by a ReLU
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 1)).eval()
    jobs = model_jobs(model, (1, 8, 12, 12))
    assert [j.extra["count"] for j in jobs] == [2, 2, 1] and [len(j.calls) for j in jobs] == [2, 2, 1]
    steps = _steps([(1, j) for j in jobs] + [(2, j) for j in jobs], "sequence")
    assert len(steps) == 2  # one sequence per pass (5 calls < SEQUENCE_KEYS)
    for step in steps:
        order = [(j.key.op, c) for _, j, c in step]
        assert order == [("Conv2d", 0), ("ReLU", 0), ("Conv2d", 1), ("ReLU", 1), ("Conv2d", 0)]
    conv = jobs[0]
    (m0, _), (m1, _) = conv.calls[0][1](), conv.calls[1][1]()
    assert m0 is model[0] and m1 is model[2]   # each call its own weights, as in the network
    assert _steps([(1, j) for j in jobs], "alone") == [[(1, j, 0)] for j in jobs]

    backend = get_backend("torch-cpu")
    seen: list = []
    prepare = backend.prepare_in_sequence
    backend.prepare_in_sequence = lambda module, inputs: seen.append(module) or prepare(module, inputs)
    table = profile(jobs, backend, Path(tempfile.mkdtemp()) / "t.json", spaces=["torch"], context="sequence",
                    settings=Settings(max_time_s=0.02, passes=1, min_samples=5), reference=False)
    assert [id(m) for m in seen] == [id(m) for m in model]  # every call prepared with its own module, in order
    entries = {e.key.op + str(e.key.c_out): e for e in table.entries}
    assert entries["Conv2d8"].extra["calls_timed"] == 2 and "calls_timed" not in entries["Conv2d16"].extra
    # a key pools its calls' samples: whole rounds, so twice the samples of a key called once
    assert entries["Conv2d8"].n == 2 * entries["Conv2d16"].n


def test_alone_a_repeated_layer_is_timed_once_by_its_first_call(tmp_path):
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    jobs = model_jobs(model, (1, 8, 12, 12))
    table = profile(jobs, get_backend("torch-cpu"), tmp_path / "t.json", spaces=["torch"], reference=False,
                    settings=Settings(max_time_s=0.02, passes=2, min_samples=5))
    assert len(table) == 2 and all(e.extra["count"] == 2 and "calls_timed" not in e.extra for e in table.entries)


def test_profile_refuses_a_sequence_on_a_backend_that_cannot_time_one_before_any_journal(tmp_path):
    out = tmp_path / "t.json"
    with pytest.raises(HwcostError, match="torch-cpu only, not ort-cpu"):
        profile(model_jobs(_tiny(), (1, 3, 16, 16)), get_backend("ort-cpu"), out, spaces=["torch"],
                context="sequence")
    assert not out.exists() and not Path(str(out) + ".journal").exists()
