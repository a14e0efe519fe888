"""Remote-device profiling: bundle -> runner (torch unimportable) -> results -> device table.

The runner runs in a subprocess exactly as on a board: the single file
extracted from the bundle, Python in isolated mode (-I), a clean working
directory, and torch and every hwcost package made unimportable. ssh and scp
are fakes on PATH that record their argument lists and emulate the remote
host in a local directory.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from device_tables.errors import TableError
from device_tables.keys import OpKey
from device_tables.table import load_table, save_table
from hwcost.calibrate import bundle_networks
from profilers import runner
from profilers.bundle import check_host, import_results, remote_command, run_over_ssh, write_bundle
from spaces.errors import HwcostError

KEYS = [
    OpKey("nb201", "none", 1, 16, 16, 8, 8, 1),
    OpKey("nb201", "skip_connect", 1, 16, 16, 8, 8, 1),
    OpKey("nb201", "nor_conv_1x1", 1, 16, 16, 8, 8, 1),
    OpKey("nb201", "node_sum", 1, 16, 16, 8, 8, 1, (("n_inputs", 2),)),  # two graph inputs
]
# Short caps: these tests check behaviour, never timings.
FAST = {"max_time_s": 0.03, "warmup_s": 0.005, "rel_ci": 0.05, "min_samples": 6}
BLOCKED = ("torch", "spaces", "device_tables", "profilers", "hwcost", "costmodels", "search")
# Put the blocker directory first on sys.path, then run the script as __main__.
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); script = sys.argv[2]; "
        "sys.argv = sys.argv[2:]; runpy.run_path(script, run_name='__main__')")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "b.zip"
    info = write_bundle(KEYS, path, settings=FAST, networks=["nb201"])
    assert info.n_keys == len(KEYS)
    return path


@pytest.fixture(scope="module")
def device(tmp_path_factory, bundle) -> dict:
    """A 'device': a clean directory with runner.py extracted, and blocked imports."""
    root = tmp_path_factory.mktemp("device")
    with zipfile.ZipFile(bundle) as zf:
        (root / "runner.py").write_bytes(zf.read("runner.py"))
    blocker, markers = root / "blocker", root / "markers"
    markers.mkdir()
    for name in BLOCKED:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"open({str(markers / name)!r}, 'w').close()\n"
            f"raise ImportError('{name} must not be imported on the device')\n")
    return {"root": root, "runner": root / "runner.py", "blocker": blocker, "markers": markers}


def run_runner(device, *args, script=None) -> subprocess.CompletedProcess:
    script = script or device["runner"]
    argv = [sys.executable, "-I", "-c", BOOT, str(device["blocker"]), str(script), *map(str, args)]
    proc = subprocess.run(argv, cwd=device["root"], capture_output=True, text=True, timeout=120)
    imported = sorted(p.name for p in device["markers"].iterdir())
    assert not imported, f"the runner imported {imported}"
    return proc


@pytest.fixture(scope="module")
def results(device, bundle) -> Path:
    out = device["root"] / "results.json"
    proc = run_runner(device, bundle, "--out", out)
    assert proc.returncode == 0, proc.stderr
    passes = runner.DEFAULT_SETTINGS["passes"]
    rows = len(KEYS) * passes
    assert f"[{rows}/{rows}] pass {passes}/{passes}" in proc.stderr and "eta" in proc.stderr  # progress counter
    assert not Path(str(out) + ".journal").exists()
    return out


def test_runner_measures_every_key_and_the_table_imports(results, tmp_path):
    doc = json.loads(results.read_text())
    assert doc["format"] == runner.RESULTS_FORMAT and doc["failed"] == []
    env = doc["environment"]
    assert env["threads"] == 1 and env["provider"] == "CPUExecutionProvider" and env["cores"] >= 1
    assert env["cpu_model"] and env["onnxruntime"]
    table = import_results(results)
    assert set(table.keys()) == set(KEYS)
    for e in table:
        assert 0 < e.p10_ms <= e.median_ms <= e.p90_ms and e.n >= 1 and e.quality in ("ok", "capped", "noisy")
        # interleaved passes (10 by default); the entry is the quietest
        assert len(e.extra["pass_medians_ms"]) == e.extra["passes"] == runner.DEFAULT_SETTINGS["passes"] == 10
        assert e.median_ms == min(e.extra["pass_medians_ms"])
        assert e.extra["pass_medians_ms"][e.extra["quietest_pass"] - 1] == e.median_ms
    assert table.measurement["passes"] == 10
    assert table.kind == "op" and table.spaces == ["nb201"]
    assert table.runtime["backend"] == "ort-cpu" and table.runtime["threads"] == 1
    assert table.runtime["batch"] == 1 and table.device["name"] == env["device_name"]
    save_table(table, tmp_path / "t.json")
    assert load_table(tmp_path / "t.json").keys() == table.keys()


@pytest.fixture(scope="module")
def local_ort(tmp_path_factory):
    """A local ort-cpu profile of two keys on this host: what a runner's table must match."""
    from profilers.backends import get_backend
    from profilers.measure import Settings
    from profilers.profile import profile, space_jobs
    out = tmp_path_factory.mktemp("local") / "local.json"
    return profile(space_jobs("nb201", "nb201")[:2], get_backend("ort-cpu"), out, spaces=["nb201"],
                   settings=Settings(max_time_s=0.04, warmup_s=0.005, passes=2), progress=False)


def test_runner_table_records_call_overhead_as_a_local_ort_profile(results, local_ort):
    """Issue 14: a runner import recorded no call overhead, so predict took each entry for one
    module call and over-predicted; it must give the overhead a local ort-cpu profile gives."""
    from costmodels.predict import Overhead

    doc = json.loads(results.read_text())
    co = doc["call_overhead"]
    assert 0 < co["p10_ms"] <= co["median_ms"] <= co["p90_ms"] and len(co["pass_medians_ms"]) == 10
    assert doc["isolation"] == runner.ISOLATION
    remote, local = import_results(results), local_ort
    for name in ("isolation", "call_overhead_note"):
        assert remote.measurement[name] == local.measurement[name]
    assert remote.measurement["call_overhead_ms"] == round(co["median_ms"], 6) > 0
    here, there = Overhead.from_table(local), Overhead.from_table(remote)
    for o in (here, there):   # the same kind of source: the table's empty op, not "none"
        assert o.source.startswith("table: ") and "call_overhead_ms" in o.source and o.per_call_ms > 0
    assert there.per_call_ms <= min(e.median_ms for e in remote)


def test_runner_table_has_the_local_backend_name_and_merges_with_a_local_table(results, local_ort, tmp_path):
    """Issue 14: `table merge` of a local ort-cpu table and a runner import refused 'ort-cpu' vs 'onnxruntime'."""
    from device_tables.table import merge_tables
    from profilers.backends import get_backend
    doc = json.loads(results.read_text())
    assert doc["environment"]["backend"] == get_backend("ort-cpu").runtime()["backend"] == "ort-cpu"
    remote = import_results(results, device_name=local_ort.device["name"])   # one machine, one name
    assert remote.runtime["backend"] == local_ort.runtime["backend"] == "ort-cpu"
    assert remote.device["cpu"]   # named as a local profile names it (calibrate compares it with this host)
    merged, _ = merge_tables([local_ort, remote])
    assert merged.runtime["backend"] == "ort-cpu" and set(remote.keys()) <= set(merged.keys())
    # results of an older runner (no backend recorded): the provider names the backend
    del doc["environment"]["backend"]
    doc["environment"]["provider"] = "XnnpackExecutionProvider"
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert import_results(tmp_path / "old.json").runtime["backend"] == "ort:XnnpackExecutionProvider"


def test_resume_keeps_the_measured_call_overhead(device, bundle, results, tmp_path):
    out = tmp_path / "r.json"
    out.write_text(results.read_text())
    proc = run_runner(device, bundle, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "call overhead" not in proc.stderr   # nothing measured again
    assert json.loads(out.read_text())["call_overhead"] == json.loads(results.read_text())["call_overhead"]


def test_results_of_a_bundle_without_an_empty_op_still_import(results, tmp_path):
    from costmodels.predict import Overhead
    doc = json.loads(results.read_text())
    del doc["call_overhead"], doc["isolation"]   # an older bundle and runner
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    table = import_results(path)
    assert "call_overhead_ms" not in table.measurement and "not measured" in table.provenance["call_overhead"]
    assert Overhead.from_table(table).per_call_ms == 0


def test_the_bundle_itself_runs_as_a_zip_application(device, bundle, tmp_path):
    out = tmp_path / "r.json"
    proc = run_runner(device, "--out", out, "--max-time", "0.01", "--quiet", script=bundle)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text())["results"]) == len(KEYS)


def _journal_lines(results_path: Path, n_rows: int) -> list[str]:
    doc = json.loads(results_path.read_text())
    header = {"format": runner.JOURNAL_FORMAT, "version": runner.RESULTS_VERSION, "bundle_id": doc["bundle"]["id"],
              "started": doc["started"], "settings": doc["settings"], "environment": doc["environment"]}
    return [json.dumps(header)] + [json.dumps(r) for r in doc["results"][:n_rows]]


def test_resume_after_a_torn_journal_line_keeps_saved_rows(device, bundle, results, tmp_path):
    out = tmp_path / "r.json"
    journal = Path(str(out) + ".journal")
    saved = _journal_lines(results, 2)
    torn = '{"key": "nb201/nor_conv_1x1|b1|ci'  # killed in the middle of a write
    journal.write_text("\n".join(saved) + "\n" + torn)

    proc = run_runner(device, bundle, "--out", out)  # without --resume: refuses, loses nothing
    assert proc.returncode == 2 and "--resume" in proc.stderr and journal.exists()

    proc = run_runner(device, bundle, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 20 of 40 rows" in proc.stderr  # 2 finished keys x 10 passes
    rows = json.loads(out.read_text())["results"]
    assert [r["key"] for r in rows] == [k.to_str() for k in KEYS]
    assert rows[:2] == [json.loads(line) for line in saved[1:]]  # not measured again
    assert not journal.exists()


def test_resume_midway_through_a_pass_keeps_every_saved_pass(device, bundle, results, tmp_path):
    out = tmp_path / "r.json"
    journal = Path(str(out) + ".journal")
    header, *done = _journal_lines(results, len(KEYS))
    saved = []  # pass 1 of every key and pass 2 of the first: as if killed in pass 2
    for number, line in [(1, line) for line in done] + [(2, done[0])]:
        row = json.loads(line)
        for name in ("passes", "quietest_pass", "pass_medians_ms"):
            row.pop(name)
        row.update(median_ms=1.0 + number + 0.1 * len(saved), p10_ms=0.5, p90_ms=9.0)  # recognisable values
        row["pass"] = number
        saved.append(row)
    journal.write_text("\n".join([header] + [json.dumps(r) for r in saved]) + "\n")
    proc = run_runner(device, bundle, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 5 of 40 rows" in proc.stderr
    rows = {r["key"]: r for r in json.loads(out.read_text())["results"]}
    for row in saved:  # each saved pass is in its key's result, at its pass, unchanged
        assert rows[row["key"]]["pass_medians_ms"][row["pass"] - 1] == row["median_ms"]
    for r in rows.values():
        assert len(r["pass_medians_ms"]) == 10 and r["median_ms"] == min(r["pass_medians_ms"])
        assert "pass" not in r and not journal.exists()


def test_resume_refuses_a_corrupt_middle_line_or_other_settings(device, bundle, results, tmp_path):
    out = tmp_path / "r.json"
    journal = Path(str(out) + ".journal")
    lines = _journal_lines(results, 2)
    journal.write_text("\n".join([lines[0], "{oops", lines[2]]) + "\n")
    proc = run_runner(device, bundle, "--out", out, "--resume")
    assert proc.returncode == 2 and "line 2 is corrupt" in proc.stderr
    journal.write_text("\n".join(lines) + "\n")
    proc = run_runner(device, bundle, "--out", out, "--resume", "--threads", "2")
    assert proc.returncode == 2 and "threads=1" in proc.stderr and "Traceback" not in proc.stderr


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.mark.parametrize("case,match", [
    ("not-a-zip", "not a readable zip file"),
    ("missing", "does not exist"),
    ("no-manifest", "has no manifest.json"),
    ("version", "manifest version 99 is not supported"),
    ("bad-json", "not valid JSON"),
    ("missing-model", "missing from the zip"),
])
def test_bad_bundles_exit_2_with_one_line(device, tmp_path, case, match):
    path = tmp_path / "b.zip"
    manifest = {"format": runner.MANIFEST_FORMAT, "version": 1,
                "keys": [{"key": "k", "model": "m.onnx", "inputs": []}]}
    if case == "not-a-zip":
        path.write_text("PK? no, just text")
    elif case == "no-manifest":
        _zip(path, {"runner.py": ""})
    elif case == "version":
        _zip(path, {"manifest.json": json.dumps({**manifest, "version": 99})})
    elif case == "bad-json":
        _zip(path, {"manifest.json": "{"})
    elif case == "missing-model":
        _zip(path, {"manifest.json": json.dumps(manifest)})
    proc = run_runner(device, path, "--out", tmp_path / "r.json")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner: error:") and match in lines[0], proc.stderr


def test_median_ci_ranks_follow_the_binomial():
    assert runner.median_ci_ranks(5) is None  # 2 * 0.5**5 > 0.05: no 95% interval exists
    assert runner.median_ci_ranks(6) == (0, 5)
    assert runner.median_ci_ranks(100) == (39, 60)  # the textbook ranks 40 and 61 (1-based)
    lo, hi = runner.median_ci_ranks(5000)
    assert lo < 2500 < hi and hi - lo < 160


# ---------------------------------------------------------------- import validation

@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["results"][1].update(median_ms=-1.0), r"results\[1\] \(nb201/skip_connect.*median_ms"),
    (lambda d: d["results"][0].update(p90_ms=float("inf")), "Infinity"),
    (lambda d: d["results"][0].update(key="nb201/none|b1"), "bad op key"),
    (lambda d: d["results"][0].update(quality="great"), "quality"),
    (lambda d: d.update(failed=[{"key": "nb201/x|b1|cin1|cout1|h1|w1|s1", "error": "Fail: boom"}]),
     "1 key.*failed.*--allow-failed"),
    (lambda d: d.update(format="something"), "not a runner results file"),
    (lambda d: d.update(version=7), "version 7"),
    (lambda d: d.update(results=[]), "no measured keys"),
    (lambda d: d["environment"].pop("threads"), "environment.threads"),
])
def test_import_results_validates_everything(results, tmp_path, mutate, match):
    doc = json.loads(results.read_text())
    mutate(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(TableError, match=match) as e:
        import_results(bad)
    assert str(bad) in str(e.value)


def test_import_results_can_leave_failed_keys_out(results, tmp_path):
    doc = json.loads(results.read_text())
    doc["failed"] = [{"key": "nb201/x|b1|cin1|cout1|h1|w1|s1", "error": "Fail: boom"}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    table = import_results(path, allow_failed=True)
    assert len(table) == len(KEYS) and table.provenance["failed"] == doc["failed"]


# ---------------------------------------------------------------- ssh

FAKE = """#!{python}
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + argv) + "\\n")
home = os.environ["FAKE_HOME"]
while argv and argv[0] != "--":  # options
    argv.pop(0)
argv.pop(0)
if os.path.basename(sys.argv[0]) == "ssh":
    host, command = argv[0], " ".join(argv[1:])  # ssh joins the words for the remote shell
    sys.exit(subprocess.run(["sh", "-c", command], cwd=home).returncode)
src, dst = argv
local = lambda p: os.path.join(home, p.split(":", 1)[1]) if ":" in p and not p.startswith("/") else p
shutil.copyfile(local(src), local(dst))
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bindir, home = tmp_path / "bin", tmp_path / "remote home"
    bindir.mkdir()
    home.mkdir()
    for name in ("ssh", "scp"):
        exe = bindir / name
        exe.write_text(FAKE.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_HOME", str(home))
    calls = lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []  # noqa: E731
    return {"home": home, "calls": calls}


def test_run_over_ssh_copies_runs_and_fetches_with_argument_lists(fake_ssh, bundle, tmp_path):
    odd = tmp_path / "dir with 'quotes' and \"spaces\""
    odd.mkdir()
    local_bundle = odd / "my bundle's.zip"
    local_bundle.write_bytes(bundle.read_bytes())
    out = odd / "res ults.json"
    name = "Pi 4 'lab' $(touch pwned) `touch pwned2`; touch pwned3"
    runner_args = ["--device-name", name, "--max-time", "0.01"]
    got = run_over_ssh(local_bundle, "pi@board", out, python=sys.executable, runner_args=runner_args)

    assert got == out.resolve()
    doc = json.loads(out.read_text())
    assert doc["environment"]["device_name"] == name  # survived the remote shell intact
    assert not list(fake_ssh["home"].glob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    assert not Path(str(out) + ".part").exists()
    calls = fake_ssh["calls"]()
    assert calls[0] == ["ssh", "--", "pi@board", "mkdir -p -- hwcost-run"]
    assert calls[1] == ["scp", "-q", "--", str(local_bundle), "pi@board:hwcost-run/bundle.zip"]
    assert calls[2][:3] == ["scp", "-q", "--"] and calls[2][4] == "pi@board:hwcost-run/runner.py"
    assert calls[3] == ["ssh", "--", "pi@board",
                        remote_command("hwcost-run", sys.executable, [*runner_args, "--resume"])]
    assert calls[4] == ["scp", "-q", "--", "pi@board:hwcost-run/results.json", f"{out}.part"]
    assert len(calls) == 5


def test_run_over_ssh_passes_the_port(fake_ssh, bundle, tmp_path):
    run_over_ssh(bundle, "board", tmp_path / "r.json", port=2222, python=sys.executable,
                 runner_args=["--max-time", "0.005", "--quiet"], resume=False)
    calls = fake_ssh["calls"]()
    assert calls[0][:4] == ["ssh", "-p", "2222", "--"]
    assert calls[1][:5] == ["scp", "-q", "-P", "2222", "--"]
    assert calls[3][-1].endswith("--force")


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "", "host;rm -rf x", "a\nb", "$(x)", "u@-h", "a'b"])
def test_hostile_hosts_are_refused_before_any_call(fake_ssh, bundle, tmp_path, host):
    with pytest.raises(HwcostError, match="bad ssh host"):
        run_over_ssh(bundle, host, tmp_path / "r.json")
    assert fake_ssh["calls"]() == []


@pytest.mark.parametrize("remote_dir", ["-rf", "a b", "x;y", "../up", "$HOME"])
def test_odd_remote_dirs_are_refused(fake_ssh, bundle, tmp_path, remote_dir):
    with pytest.raises(HwcostError, match="bad remote directory"):
        run_over_ssh(bundle, "board", tmp_path / "r.json", remote_dir=remote_dir)
    assert fake_ssh["calls"]() == []


def test_check_host_accepts_usual_forms():
    for host in ("pi", "pi@raspberrypi.local", "u@10.0.0.2", "[fe80::1]", "u@[::1]", "my-board_2"):
        assert check_host(host) == host


# ---------------------------------------------------------------- CLI

def _cli(argv: list[str]) -> argparse.Namespace:
    from hwcost.cmd_bundle import add_bundle_parsers, add_table_import_parser
    parser = argparse.ArgumentParser(prog="hwcost")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bundle_parsers(sub)
    table = sub.add_parser("table").add_subparsers(dest="table_command", required=True)
    add_table_import_parser(table)
    return parser.parse_args(argv)


def test_cli_table_import(results, tmp_path, capsys):
    args = _cli(["table", "import", str(results), "--out", str(tmp_path / "T.json"), "--device-name", "rpi4"])
    assert args.func(args) == 0
    table = load_table(tmp_path / "T.json")
    assert table.device["name"] == "rpi4" and len(table) == len(KEYS)
    assert "wrote" in capsys.readouterr().out


def test_cli_bundle_over_ssh_end_to_end(fake_ssh, tmp_path, capsys):
    args = _cli(["bundle", "--space", "nb201", "--networks", "nb201", "--ops", "nor_conv_1x1", "--quiet",
                 "--max-time", "0.01", "--out", str(tmp_path / "b.zip"), "--ssh", "pi@board",
                 "--results", str(tmp_path / "r.json"), "--table", str(tmp_path / "T.json"),
                 "--python", sys.executable])
    assert args.func(args) == 0
    table = load_table(tmp_path / "T.json")
    assert sorted(k.h for k in table.keys()) == [8, 16, 32] and {k.op for k in table.keys()} == {"nor_conv_1x1"}


@pytest.mark.parametrize("argv,match", [
    (["--results", "r.json"], "give --ssh"),
    (["--ssh=-oProxyCommand=x"], "bad ssh host"),
    (["--ops", "conv_9x9", "--space", "nb201", "--networks", "nb201"], "conv_9x9"),
])
def test_cli_bundle_user_errors(tmp_path, argv, match):
    args = _cli(["bundle", "--out", str(tmp_path / "b.zip"), *argv])
    with pytest.raises(HwcostError, match=match):
        args.func(args)


@pytest.mark.parametrize("space,networks", [("nb201", ["nb201"]), ("darts", ["cifar10-search", "cifar10"])])
def test_cli_bundle_networks_default_follows_the_space(tmp_path, monkeypatch, capsys, space, networks):
    import profilers.bundle
    from profilers.bundle import BundleInfo
    seen = {}

    def fake_write_bundle(keys, out, networks=(), **kw):
        seen.update(keys=list(keys), networks=list(networks))
        return BundleInfo(str(out), len(seen["keys"]), 1)

    monkeypatch.setattr(profilers.bundle, "write_bundle", fake_write_bundle)
    args = _cli(["bundle", "--space", space, "--out", str(tmp_path / "b.zip"), "--quiet"])
    assert args.func(args) == 0
    assert seen["networks"] == networks and seen["keys"] and {k.space for k in seen["keys"]} == {space}
    assert ", ".join(networks) in capsys.readouterr().out


def test_cli_bundle_nb201_without_networks_reaches_the_ops_check(tmp_path):
    # issue 14: the darts default (cifar10-search) was used for nb201: "unknown network configuration"
    args = _cli(["bundle", "--space", "nb201", "--ops", "conv_9x9", "--out", str(tmp_path / "b.zip")])
    with pytest.raises(HwcostError, match="--ops: conv_9x9 does not occur"):
        args.func(args)
    args = _cli(["bundle", "--space", "nosuch", "--out", str(tmp_path / "b.zip")])
    with pytest.raises(HwcostError, match="nosuch"):
        args.func(args)


# ---------------------------------------------------------------- calibration networks on the device

def test_bundle_carries_calibration_networks_and_import_fits_the_device_model(device, tmp_path):
    """Remote calibration (issue 11): the bundle ships whole networks, the runner (torch blocked)
    measures them after the keys, and `table import` fits the in-context model on them."""
    from costmodels.incontext import group_features, model_of
    from costmodels.predict import predict_network
    from hwcost.calibrate import build_spec
    from hwcost.cmd_bundle import import_calibrated
    from profilers.bundle import import_runner_results
    from profilers.shapes import space_keys
    nets = bundle_networks("nb201", ["nb201"], 3, seed=5)
    path = tmp_path / "cal.zip"
    write_bundle(space_keys("nb201", ["nb201"]), path, settings=FAST, networks=["nb201"], calibration=nets)
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert [c["spec"] for c in manifest["calibration"]] == [spec for _, spec, _, _ in nets]
    out = tmp_path / "r.json"
    proc = run_runner(device, path, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not list(device["markers"].iterdir())           # torch & co were never imported there
    doc = json.loads(out.read_text())
    assert len(doc["calibration"]) == 3 and all(r["median_ms"] > 0 for r in doc["calibration"])
    table = import_results(out)
    assert table.calibration is None and table.provenance["calibration_networks"] == 3
    table = import_calibrated(str(out))
    model = model_of(table)
    assert [s.spec for s in model.samples] == [spec for _, spec, _, _ in nets]
    assert model.host["device"] == table.device["name"]      # measured there, not here
    for s, row in zip(model.samples, import_runner_results(out)[1]):
        assert s.measured_ms == row["median_ms"]
        net, shape = build_spec(s.spec)                       # features: the table's ops of that network
        p = predict_network(net, shape, table, incontext=None)
        feats, n_ops = group_features(p.per_key, p.streamed)
        assert s.n_ops == n_ops and s.features == pytest.approx(feats)


def test_calibration_rows_with_bad_values_are_one_error(tmp_path):
    from profilers.bundle import calibration_rows
    good = {"name": "a", "spec": {"kind": "nb201", "arch": "x"}, "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1}
    assert calibration_rows({"calibration": [good, {**good, "error": "EPFail"}]}) == [good]   # a failed one left out
    for bad, match in [({**good, "median_ms": -1.0}, "positive"), ({**good, "median_ms": "1"}, "median_ms"),
                       ({k: v for k, v in good.items() if k != "spec"}, "spec")]:
        with pytest.raises(TableError, match=match):
            calibration_rows({"calibration": [bad]})


def test_cli_bundle_calibration_networks_with_ops_is_one_error(tmp_path):
    args = _cli(["bundle", "--space", "nb201", "--ops", "nor_conv_1x1", "--calibration-networks", "3",
                 "--out", str(tmp_path / "b.zip")])
    with pytest.raises(HwcostError, match="--calibration-networks"):
        args.func(args)
    args = _cli(["bundle", "--space", "nb201", "--calibration-networks", "1", "--out", str(tmp_path / "b.zip")])
    with pytest.raises(HwcostError, match="0 \\(none\\) or at least 2"):
        args.func(args)
    assert not (tmp_path / "b.zip").exists()
