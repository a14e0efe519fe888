"""Host phases: the reference kernel timed beside a profile's passes says whether the host stayed in
one quiet phase while the keys were measured (issue 11, item 5)."""
from __future__ import annotations

import dataclasses
from dataclasses import replace

from device_tables import load_table, save_table
from hwcost.cli import main
from profilers import backends as B
from profilers.measure import Settings
from profilers.profile import HostPhases, profile, space_jobs

FAST = Settings(max_time_s=0.05, warmup_s=0.005, min_sample_s=2e-4)


def test_profile_times_the_reference_kernel_at_start_after_each_pass_and_at_the_end(tmp_path):
    out = tmp_path / "t.json"
    settings = replace(FAST, passes=3, max_time_s=FAST.max_time_s * 3)
    table = profile(space_jobs("nb201", "nb201")[:2], B.get_backend("torch-cpu"), out, spaces=["nb201"],
                    settings=settings, progress=False)
    ref = load_table(out).measurement["host_reference"]
    assert ref["when"] == ["start", "after pass 1", "after pass 2", "end"]
    assert len(ref["median_ms"]) == 4 and all(v > 0 for v in ref["median_ms"])
    assert ref["spread"] == round(max(ref["median_ms"]) / min(ref["median_ms"]), 4)
    assert ref["quiet"] == (ref["spread"] <= HostPhases.QUIET)
    assert table.measurement["host_reference"] == ref
    without = profile(space_jobs("nb201", "nb201")[:1], B.get_backend("torch-cpu"), tmp_path / "u.json",
                      spaces=["nb201"], settings=FAST, progress=False, reference=False)
    assert "host_reference" not in without.measurement


def _with_reference(tmp_path, ms):
    t = profile(space_jobs("nb201", "nb201")[:1], B.get_backend("torch-cpu"), tmp_path / "t.json",
                spaces=["nb201"], settings=FAST, progress=False, reference=False)
    spread = max(ms) / min(ms)
    rec = {"kernel": "k", "median_ms": ms, "when": ["start", "end"], "spread": spread, "quiet": spread <= 1.05}
    path = tmp_path / "ref.json"
    save_table(dataclasses.replace(t, measurement={**t.measurement, "host_reference": rec}), path)
    return path


def test_table_show_flags_a_profile_whose_reference_kernel_varied(tmp_path, capsys):
    assert main(["table", "show", str(_with_reference(tmp_path, [0.40, 0.46]))]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("host phases"))
    assert "0.4 .. 0.46 ms over 2 timings (+15.0%)" in line and "VARIED" in line
    assert "host_reference" not in out                    # not repeated in the measurement line


def test_table_show_says_steady_when_it_held(tmp_path, capsys):
    assert main(["table", "show", str(_with_reference(tmp_path, [0.40, 0.41]))]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("host phases"))
    assert "steady" in line and "VARIED" not in line
