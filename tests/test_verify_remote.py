"""Hardware in the loop on a remote device (hwcost.verify_remote, `hwcost verify RUN`): each round's
derived network goes out in a bundle of whole networks, the device's results come back, and the loop
re-derives until the measured network lies in [floor B, B].

The 'device' is a function that answers a bundle by a known law over the table's ops (the networks a
search derives run 1.35x their ops' sum there, the calibration networks at 1.0x: a calibration whose
op mix misleads), written in the runner's results format; one test runs the real runner (torch
blocked, as on a board) on a verify bundle, which holds networks and no op keys."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from costmodels.incontext import model_of
from costmodels.predict import predict_network
from device_tables import DATA_DIR, load_table, save_table
from hwcost.calibrate import bundle_networks, build_spec, fit_remote
from hwcost.cli import main
from hwcost.verify import VerifyPending, verify_search
from hwcost.verify_remote import RemoteMeasure, is_remote_table
from profilers import runner
from pristine import copy_run, restore
from search.run import SearchConfig, run_search

FAST = dict(data="synthetic", epochs=2, steps_per_epoch=3, batch_size=16, C=4, layers=3, threads=1)
DEVICE = {"name": "toy-pi", "cpu_model": "Cortex-A72 (toy)", "cpu": "Cortex-A72 (toy)"}
SLOWDOWN = 1.35


def _key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


class Device:
    """Answers a bundle's networks by a law over the table's ops: calibration networks run at their ops'
    sum (x ``phase``), any other network at SLOWDOWN x the sum (x ``phase``)."""

    def __init__(self, table, calibration_specs):
        self.table, self.calibration = table, {_key(s) for s in calibration_specs}
        self.phase, self.env = 1.0, {"device_name": DEVICE["name"], "cpu_model": DEVICE["cpu_model"],
                                     "provider": "CPUExecutionProvider", "threads": 1}
        self.runs = 0

    def ms(self, spec: dict) -> float:
        model, shape = build_spec(spec)
        s = predict_network(model, shape, self.table, incontext=None).latency_ms
        return s * (1.0 if _key(spec) in self.calibration else SLOWDOWN) * self.phase

    def __call__(self, bundle: Path, out: Path) -> None:
        with zipfile.ZipFile(bundle) as zf:
            raw = zf.read("manifest.json")
        manifest = json.loads(raw)
        assert manifest["keys"] == [] and manifest["calibration"]      # a verify bundle: networks only
        rows = [{"key": runner.NETWORK_PREFIX + c["name"], "name": c["name"], "spec": c["spec"],
                 **{f: self.ms(c["spec"]) * k for f, k in (("median_ms", 1.0), ("p10_ms", 0.99), ("p90_ms", 1.01))}}
                for c in manifest["calibration"]]
        doc = {"format": runner.RESULTS_FORMAT, "version": runner.RESULTS_VERSION,
               "bundle": {"id": hashlib.sha256(raw).hexdigest()}, "environment": self.env, "results": [],
               "failed": [], "calibration": rows}
        Path(out).write_text(json.dumps(doc))
        self.runs += 1


@pytest.fixture(scope="module")
def pristine_table(tmp_path_factory):
    """An imported table of a toy remote device (the shipped nb201 entries), calibrated on 4 networks
    the device ran at their ops' sum; with the device's own table and those networks' specs. Built once
    for the module; tests change the table (its calibration), so ``remote`` restores it for each."""
    t = load_table(DATA_DIR / "nb201_ort-cpu.json")
    t = dataclasses.replace(t, device=dict(DEVICE),
                            runtime={**t.runtime, "backend": "ort-cpu", "execution_provider": "CPUExecutionProvider",
                                     "threads": 1},
                            measurement={**t.measurement, "tool": "hwcost runner"},
                            provenance={**t.provenance, "source": "runner"}, calibration=None)
    nets = bundle_networks("nb201", ["nb201"], 4, seed=3)
    specs = [spec for _, spec, _, _ in nets]
    device = Device(t, specs)
    rows = [{"name": name, "spec": spec, "median_ms": device.ms(spec), "p10_ms": device.ms(spec),
             "p90_ms": device.ms(spec)} for name, spec, _, _ in nets]
    fitted, _ = fit_remote(t, rows)
    path = tmp_path_factory.mktemp("remote") / "pi.json"
    save_table(fitted, path)
    return SimpleNamespace(path=path, saved=path.read_bytes(), device_table=t, specs=specs)


@pytest.fixture
def remote(pristine_table):
    """The remote table as fitted, and a fresh device."""
    return restore(pristine_table), Device(pristine_table.device_table, pristine_table.specs)


@pytest.fixture(scope="module")
def pristine_run(pristine_table, tmp_path_factory):
    """One search on the remote table (as fitted) under a latency budget at the median of random
    networks' prices: run once for the module; ``searched`` gives each test its own copy."""
    out = tmp_path_factory.mktemp("searched") / "run"
    cfg, r, budget = _search(restore(pristine_table), out)
    return SimpleNamespace(out=out, cfg=cfg, result=r, budget=budget)


@pytest.fixture
def searched(remote, pristine_run, tmp_path) -> tuple[Path, SearchConfig, dict, float]:
    """(run directory, config, result, budget): a copy at ``tmp_path/run`` of the module's search on the
    remote table, whose file ``remote`` restored as it was when searched."""
    return copy_run(pristine_run, tmp_path)


def _search(table_path, out, q=0.5) -> tuple[SearchConfig, dict, float]:
    """A search on the table under a latency budget at the q-quantile of random networks' prices."""
    from hwcost.pipeline import random_derived_costs
    from search.costs import cached_search_cost_tensor
    from spaces import NB201_OPS
    # the search builds the same tensor through this cache (same file): built once
    ct, _ = cached_search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), str(table_path))
    lat = random_derived_costs(ct, 200, 0)[:, ct.index("latency_ms")].numpy()
    budget = float(np.quantile(lat, q))
    cfg = SearchConfig(space="nb201", table=str(table_path), budgets=[f"latency={budget}ms"], **FAST)
    return cfg, run_search(cfg, str(out), progress=False), budget


def test_a_remote_table_is_recognised_and_search_verify_points_to_hwcost_verify(remote, tmp_path, capsys):
    path, _ = remote
    assert is_remote_table(load_table(path))
    assert not is_remote_table(load_table(DATA_DIR / "nb201_ort-cpu.json"))
    code = main(["search", "--space", "nb201", "--table", str(path), "--budget", "latency=5ms", "--verify",
                 "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "hwcost verify RUN" in err and "Traceback" not in err


def test_remote_verify_waits_for_the_device_each_round_and_meets_the_budget(remote, searched):
    path, device = remote
    out, cfg, r, budget = searched
    first = device.ms({"kind": "nb201", "arch": r["arch"]})
    assert first > budget                      # the calibration's op mix said it fits; the device says 1.35x
    n_cal = len(model_of(load_table(path)).samples)
    result, rounds = r, 0
    while True:
        pending = (result.get("verify") or {}).get("pending")
        measure = RemoteMeasure(out, results=out / "results.json" if pending else None, pending=pending,
                                log=lambda s: None)
        result = verify_search(cfg, out, result, rounds=4, log=lambda s: None, measure=measure)
        saved = json.loads((out / "result.json").read_text())
        assert saved["verify"] == result["verify"]           # each call leaves result.json as it returns
        p = result["verify"].get("pending")
        if p is None:
            break
        rounds += 1
        assert p["round"] == len(result["verify"]["rounds"]) and Path(p["bundle"]).is_file()
        with zipfile.ZipFile(p["bundle"]) as zf:                # the derived network + 3 calibration networks
            m = json.loads(zf.read("manifest.json"))
        assert m["calibration"][0]["spec"] == {"kind": "nb201", "arch": p["arch"]} and len(m["calibration"]) == 4
        device(Path(p["bundle"]), out / "results.json")
        assert rounds < 8
    v = result["verify"]
    assert v["met"] and len(v["rounds"]) >= 2 and rounds == len(v["rounds"])
    for rec in v["rounds"]:                                     # every figure is the device's
        assert rec["measured_ms"] == pytest.approx(device.ms({"kind": "nb201", "arch": rec["arch"]}), rel=1e-9)
        assert rec["phase"] == pytest.approx(1.0) and rec["device"] == DEVICE["name"]
    assert not v["rounds"][0]["in_band"] and v["rounds"][-1]["in_band"]
    assert cfg.budget_floor * budget <= v["rounds"][-1]["measured_ms"] <= budget
    table = load_table(path)                                  # the device's networks joined its calibration
    roles = [s.role for s in model_of(table).samples]
    assert len(roles) == n_cal + len(v["rounds"]) - 1 and roles.count("verify") == len(v["rounds"]) - 1


def test_a_slower_phase_on_the_device_is_taken_out_by_the_calibration_networks_beside(remote, searched):
    path, device = remote
    out, cfg, r, budget = searched
    r = verify_search(cfg, out, r, rounds=0, log=lambda s: None, measure=RemoteMeasure(out, log=lambda s: None))
    device.phase = 1.25                         # everything runs 25% slower on the device now
    device(Path(r["verify"]["pending"]["bundle"]), out / "res.json")
    r = verify_search(cfg, out, r, rounds=0, log=lambda s: None,
                      measure=RemoteMeasure(out, out / "res.json", r["verify"]["pending"], log=lambda s: None))
    rec = r["verify"]["rounds"][0]
    assert rec["phase"] == pytest.approx(1.25)
    assert rec["measured_raw_ms"] == pytest.approx(rec["measured_ms"] * 1.25)
    device.phase = 1.0
    assert rec["measured_ms"] == pytest.approx(device.ms({"kind": "nb201", "arch": rec["arch"]}), rel=1e-9)


def test_cli_verify_remote_round_by_round_and_its_errors(remote, searched, tmp_path, capsys):
    path, device = remote
    out = searched[0]
    assert main(["verify", str(out)]) == 0
    said = capsys.readouterr().out
    bundle = out / "verify_round0.zip"
    assert bundle.is_file() and f"hwcost verify {out} --results results.json" in said
    assert main(["verify", str(out)]) == 0                   # asked again: says what it waits for
    assert "round 0 waits for the device" in capsys.readouterr().out
    # results of another bundle, of another device: one error each, nothing lost
    other = tmp_path / "other.zip"
    other.write_bytes(bundle.read_bytes())
    with zipfile.ZipFile(other, "a") as zf:
        zf.writestr("extra", "x")
    device(bundle, tmp_path / "good.json")
    bad = json.loads((tmp_path / "good.json").read_text())
    for change, says in ((lambda d: d["bundle"].update(id="0" * 64), "another bundle"),
                         (lambda d: d["environment"].update(cpu_model="Snapdragon"), "another device"),
                         (lambda d: d.pop("calibration"), "did not measure the derived network")):
        doc = json.loads(json.dumps(bad))
        change(doc)
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        assert main(["verify", str(out), "--results", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
        assert json.loads((out / "result.json").read_text())["verify"]["pending"]["round"] == 0   # still waiting
    assert main(["verify", str(out), "--results", str(tmp_path / "good.json")]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "result.json").read_text())["verify"]
    assert saved["rounds"][0]["measured_ms"] == pytest.approx(bad["calibration"][0]["median_ms"])
    if saved.get("pending"):                                  # outside the band: the next round's bundle
        assert saved["pending"]["round"] == 1 and "verify_round1.zip" in text
    else:
        assert "inside" in text


@pytest.mark.parametrize("argv, says", [
    (["verify", "{tmp}/nowhere"], "not a search's run directory"),
    (["verify", "{run}", "--results", "{tmp}/r.json"], "waits for a device's results"),
    (["verify", "{run}", "--rounds", "-1"], "--rounds must be a non-negative"),
])
def test_cli_verify_user_errors(remote, tmp_path, capsys, argv, says, request):
    path, _ = remote
    run = tmp_path / "run"
    if any("{run}" in a for a in argv):
        assert request.getfixturevalue("searched")[0] == run    # a searched run (a copy) at tmp_path/run
    (tmp_path / "r.json").write_text("{}")
    code = main([a.format(tmp=tmp_path, run=run) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


BLOCKED = ("torch", "spaces", "device_tables", "profilers", "hwcost", "costmodels", "search")
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); script = sys.argv[2]; "
        "sys.argv = sys.argv[2:]; runpy.run_path(script, run_name='__main__')")


@pytest.mark.slow   # the --ssh test runs the bundle's own runner too; this one adds torch blocked, as on a board
def test_the_real_runner_measures_a_verify_bundle_with_torch_blocked(remote, searched, tmp_path):
    """A verify bundle holds no op keys: the runner shipped in it runs it on a 'board' (isolated Python,
    torch and hwcost unimportable) and its results record the round."""
    path, _ = remote
    t = load_table(path)
    t = dataclasses.replace(t, device={**t.device, "cpu_model": runner.cpu_model()})    # this machine is the board
    save_table(t, path)
    out, cfg, r, _ = searched
    blocker = tmp_path / "blocker"
    for name in BLOCKED:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported')\n")

    def on_board(bundle: Path, results: Path) -> None:
        board = tmp_path / "board"
        board.mkdir(exist_ok=True)
        with zipfile.ZipFile(bundle) as zf:
            (board / "runner.py").write_bytes(zf.read("runner.py"))
        argv = [sys.executable, "-I", "-c", BOOT, str(blocker), str(board / "runner.py"), str(bundle), "--out",
                str(results), "--max-time", "0.06", "--passes", "2", "--warmup", "0.01", "--force", "--quiet"]
        proc = subprocess.run(argv, cwd=board, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    r = verify_search(cfg, out, r, rounds=0, log=lambda s: None, measure=RemoteMeasure(out, run_bundle=on_board,
                                                                                       log=lambda s: None))
    rec = r["verify"]["rounds"][0]
    assert "pending" not in r["verify"] and rec["measured_raw_ms"] > 0 and rec["phase"] > 0
    doc = json.loads(Path(rec["results"]).read_text())
    assert [c["name"] for c in doc["calibration"]][0].endswith("verify round 0")
    assert doc["calibration"][0]["median_ms"] == rec["measured_raw_ms"]


def test_verify_pending_carries_the_round():
    e = VerifyPending({"round": 2, "bundle": "b.zip"})
    assert e.pending["round"] == 2 and "b.zip" in str(e)


def test_cli_verify_over_ssh_runs_each_round_on_the_host(remote, searched, tmp_path, monkeypatch, capsys):
    """`hwcost verify RUN --ssh HOST`: every round's bundle is copied there, run by its own runner and its
    results fetched, to the end of the loop (ssh and scp are fakes that run the host's commands here)."""
    import os
    import stat

    from test_bundle import FAKE
    import hwcost.verify_remote as VR
    path, _ = remote
    t = load_table(path)
    save_table(dataclasses.replace(t, device={**t.device, "cpu_model": runner.cpu_model()}), path)
    bindir, home, log = tmp_path / "bin", tmp_path / "home", tmp_path / "calls.jsonl"
    bindir.mkdir()
    home.mkdir()
    for name in ("ssh", "scp"):
        (bindir / name).write_text(FAKE.format(python=sys.executable))
        (bindir / name).chmod((bindir / name).stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_HOME", str(home))
    real = VR.runner_settings
    monkeypatch.setattr(VR, "runner_settings", lambda table: {**real(table), "max_time_s": 0.06, "passes": 2})
    out = searched[0]
    assert main(["verify", str(out), "--ssh", "pi@board", "--rounds", "1", "--python", sys.executable]) == 0
    text = capsys.readouterr().out
    v = json.loads((out / "result.json").read_text())["verify"]
    assert "pending" not in v and 1 <= len(v["rounds"]) <= 2 and "measured" in text
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [c for c in calls if c[0] == "ssh" and "runner.py" in c[-1]]
    assert len(runs) == len(v["rounds"]) and all("--force" in c[-1] for c in runs)   # each round measured afresh
    for rec in v["rounds"]:
        doc = json.loads(Path(rec["results"]).read_text())
        assert doc["calibration"][0]["name"].endswith(f"verify round {rec['round']}")
        assert rec["measured_raw_ms"] == doc["calibration"][0]["median_ms"]


def test_cli_verify_of_a_run_on_a_bundled_table_is_one_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--table", "nb201_ort-cpu", "--budget", "latency=2ms", "--data",
                 "synthetic", "--epochs", "1", "--steps-per-epoch", "2", "--C", "4", "--layers", "3",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["verify", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a table file here" in err and "Traceback" not in err
