"""A real ``hwcost profile`` killed midway resumes without losing or repeating a row."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_tables import load_table
from profilers.shapes import space_keys

pytestmark = pytest.mark.slow


def _hwcost() -> list[str]:
    return [sys.executable, "-m", "hwcost.cli"]


def _profile_cmd(out: Path, *extra: str) -> list[str]:
    return _hwcost() + ["profile", "--space", "nb201", "--backend", "torch-cpu", "--max-time", "0.05",
                        "--out", str(out), "--no-progress", *extra]


def _complete_rows(journal: Path) -> list[bytes]:
    """Entry lines of a journal that were fully written (a torn last line is not)."""
    if not journal.exists():
        return []
    rows = []
    for line in journal.read_bytes().split(b"\n")[1:]:
        try:
            json.loads(line)
        except ValueError:
            continue
        rows.append(line)
    return rows


def _start_and_wait(out: Path, rows: int) -> subprocess.Popen:
    # A job started in the background of a non-interactive shell (as CI may run us) inherits SIGINT
    # ignored, and Python keeps it so; a user's terminal delivers it: reset it to the default.
    proc = subprocess.Popen(_profile_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
                            if os.name == "posix" else None)
    journal = Path(str(out) + ".journal")
    deadline = time.monotonic() + 120
    while len(_complete_rows(journal)) < rows:
        assert proc.poll() is None, "the profile ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def _table_rows(out: Path) -> list[bytes]:
    lines = out.read_bytes().split(b"\n")
    return [line.strip().rstrip(b",") for line in lines if line.startswith(b'  {"key"')]


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path):
    out = tmp_path / "nb201.json"
    journal = Path(str(out) + ".journal")
    want = space_keys("nb201", ["nb201"])
    proc = _start_and_wait(out, rows=len(want) + 4)  # 10 interleaved passes by default: kill in pass 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _complete_rows(journal)
    assert len(before) >= len(want) + 4 and not out.exists()

    done = subprocess.run(_profile_cmd(out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "already measured" in done.stderr
    assert not journal.exists()
    table = load_table(out, expect_space="nb201")
    assert sorted(k.to_str() for k in table.keys()) == sorted(k.to_str() for k in want)  # all, none twice
    assert len(_table_rows(out)) == len(want)
    for entry in table.entries:  # every key has all its passes, and its quietest is what the table says
        assert len(entry.extra["pass_medians_ms"]) == entry.extra["passes"] == 10
        assert entry.median_ms == min(entry.extra["pass_medians_ms"])
    for row in before:  # measured before the kill: kept as that key's pass, not measured again
        r = json.loads(row)
        entry = table.get(r["key"])
        assert entry.extra["pass_medians_ms"][r["extra"]["pass"] - 1] == r["median_ms"]


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_ctrl_c_says_how_to_resume(tmp_path):
    out = tmp_path / "nb201.json"
    proc = _start_and_wait(out, rows=2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130
    assert "--resume" in err and str(out) + ".journal" in err and "Traceback" not in err
    done = subprocess.run(_profile_cmd(out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(load_table(out)) == len(space_keys("nb201", ["nb201"]))


def test_cli_error_in_a_real_process_is_one_line(tmp_path):
    r = subprocess.run(_hwcost() + ["profile", "--space", "darts", "--backend", "tpu", "--out",
                                    str(tmp_path / "t.json")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("hwcost: error: unknown backend 'tpu'") and r.stderr.count("\n") == 1
