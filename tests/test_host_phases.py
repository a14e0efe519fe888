"""Host phases: the reference kernel timed beside a profile's passes says whether the host stayed in
one quiet phase while the keys were measured (issue 11, item 5)."""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

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


def _fake_measurer(monkeypatch, refs_ms, net_ms=(10.0, 20.0)):
    """measure_models_with_reference answering from a script: try i runs the reference at refs_ms[i] and
    every network that many times slower than at a 1.0 ms reference."""
    from profilers import profile as P
    from profilers.measure import Measurement
    calls = []

    def fake(models, backend, settings=None, sessions=1):
        r = refs_ms[len(calls)]
        calls.append(r)
        nets = [Measurement([ms * r / 1e3] * 5) for ms, _ in zip(net_ms, models)]
        return nets, Measurement([r / 1e3] * 5)
    monkeypatch.setattr(P, "measure_models_with_reference", fake)
    return calls


def test_calibration_measured_in_a_slow_phase_is_measured_again_then_scaled_back(tmp_path, monkeypatch):
    from hwcost.calibrate import PHASE_TRIES, measure_in_table_phase, quiet_reference_ms
    from device_tables import load_table
    table = load_table(_with_reference(tmp_path, [1.3, 1.0, 1.2]))
    assert quiet_reference_ms(table) == 1.0
    calls, logs = _fake_measurer(monkeypatch, [1.6, 1.5, 1.7]), []
    measured, ref, phase = measure_in_table_phase(table, [None, None], None, None, logs.append)
    assert len(calls) == PHASE_TRIES == 3
    assert phase == 1.5 and abs(ref.median - 1.5e-3) < 1e-12            # the quietest try is kept
    assert [round(m.median * 1e3, 9) for m in measured] == [10.0, 20.0]  # ... and divided by its slowdown
    assert "measuring the networks again (2 of 3)" in logs[0] and "never came" in logs[-1]


def test_calibration_stops_measuring_when_the_quiet_phase_comes(tmp_path, monkeypatch):
    from hwcost.calibrate import measure_in_table_phase
    from device_tables import load_table
    table = load_table(_with_reference(tmp_path, [1.0, 1.1]))
    calls = _fake_measurer(monkeypatch, [1.4, 1.03, 0.5])
    measured, ref, phase = measure_in_table_phase(table, [None, None], None, None, lambda s: None)
    assert calls == [1.4, 1.03] and phase is None
    assert [round(m.median * 1e3, 9) for m in measured] == [10.3, 20.6]   # as measured: within HOST_SLOW
    # a table without a reference kernel (imported, older) is measured once, as is
    bare = dataclasses.replace(table, measurement={k: v for k, v in table.measurement.items()
                                                   if k != "host_reference"})
    calls = _fake_measurer(monkeypatch, [1.9])
    measured, _, phase = measure_in_table_phase(bare, [None], None, None, lambda s: None)
    assert calls == [1.9] and phase is None and round(measured[0].median * 1e3, 9) == 19.0


def test_a_scaled_calibration_round_trips_and_shows(tmp_path, capsys):
    from costmodels.incontext import Sample, fit_in_context, model_of
    from device_tables import load_table
    path = _with_reference(tmp_path, [1.0, 1.02])
    table = load_table(path)
    samples = [Sample(f"n{i}", {"a": 1.0 + i, "b": 2.0 * i}, 10, 3.0 + 2.5 * i, {"kind": "x"},
                      reference_ms=1.5, phase=1.5 if i % 2 else None) for i in range(4)]
    model = fit_in_context(samples, 0.0, backend="torch-cpu", host={"cpu": "x"}, created="2026-12-02")
    assert model.phase == 1.5
    assert model.reference_ms == 1.25        # the median of 1.5 / 1.5 (twice) and 1.5 (twice)
    save_table(dataclasses.replace(table, calibration=model.to_json()), path)
    back = model_of(load_table(path))
    assert [s.phase for s in back.samples] == [None, 1.5, None, 1.5]
    assert main(["table", "show", str(path)]) == 0
    assert "measured in a phase up to 1.50x slower than the profile's quietest, scaled back" in capsys.readouterr().out


def test_profile_calls_beside_where_the_reference_is_timed_inside_the_backends_settings(tmp_path):
    """``profile(beside=...)``: called at the start, after each pass and at the end, with the backend's
    thread count and grad mode in force (what ``zoo_accuracy.py --blocks paired`` times a model in)."""
    import torch
    seen = []
    backend = B.get_backend("torch-cpu", threads=1)

    def beside(when):
        seen.append((when, torch.get_num_threads(), torch.is_grad_enabled()))
    settings = replace(FAST, passes=3, max_time_s=FAST.max_time_s * 3)
    profile(space_jobs("nb201", "nb201")[:2], backend, tmp_path / "t.json", spaces=["nb201"], settings=settings,
            progress=False, reference=False, beside=beside)
    assert seen == [(w, 1, False) for w in ("start", "after pass 1", "after pass 2", "end")]


def _zoo_accuracy():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_accuracy.py"
    spec = importlib.util.spec_from_file_location("zoo_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_network_time_takes_out_a_phase_that_slows_network_and_layers_alike():
    """``zoo_accuracy.pass_sums`` / ``paired_ms``: a host 30 % slower through pass 3 of 5 slows that pass's
    layers and the network's windows on either side of it alike: pass 3's network time in the table's phase
    is the network's 12 ms exactly; passes 2 and 4, with one slow window beside them and fast layers, keep
    half of the phase (x sqrt(1.3)); the median over passes is 12 ms (numbers by hand)."""
    import math
    from types import SimpleNamespace

    import pytest
    mod = _zoo_accuracy()
    # two keys: a (3 calls, 1 fused away: 2 priced) and b (1 call); c is not in the table; d fused away
    slow = [1.0, 1.0, 1.3, 1.0, 1.0]
    entries = {"a": SimpleNamespace(median_ms=1.0, extra={"pass_medians_ms": [1.0 * g for g in slow]}),
               "b": SimpleNamespace(median_ms=4.0, extra={"pass_medians_ms": [4.0 * g for g in slow]}),
               "d": SimpleNamespace(median_ms=9.0, extra={"pass_medians_ms": [9.0] * 5})}
    table = SimpleNamespace(get=entries.get)
    per_key = [("a", 3, 1, 1.0, "table"), ("b", 1, 0, 4.0, "table"), ("c", 1, 0, 2.0, "surrogate"),
               ("d", 2, 2, 0.0, "table")]
    sums, quiet = mod.pass_sums(table, per_key)
    assert sums == pytest.approx([6.0, 6.0, 7.8, 6.0, 6.0]) and quiet == pytest.approx(6.0)
    # the network: 12 ms in the table's phase; the windows after pass 2 and after pass 3 met the slow phase
    windows = [12.0, 12.0, 12.0 * 1.3, 12.0 * 1.3, 12.0, 12.0]
    each = mod.paired_ms(windows, sums, quiet)
    half = 12.0 * math.sqrt(1.3)
    assert each == pytest.approx([12.0, half, 12.0, half, 12.0])
    assert sorted(each)[2] == pytest.approx(12.0)
    # a host that kept one phase: the network's own time
    assert mod.paired_ms([12.0] * 4, [6.0, 6.0, 6.0], 6.0) == pytest.approx([12.0] * 3)
    with pytest.raises(ValueError, match="one more window than passes"):
        mod.paired_ms([12.0] * 3, sums, quiet)


def test_rescoring_a_paired_zoo_run_gives_back_both_of_its_scores():
    """``zoo_accuracy.py --rescore`` of the saved ``--blocks paired`` run (host E, 2026-12-03): fitted again
    from its rows, it prints the by-the-clock score and then the in-phase one, each the run's own MAPE."""
    from pathlib import Path
    mod = _zoo_accuracy()
    path = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "hostE"
            / "zoo_torchvision-layers-paired-hostE_torch-cpu.json")
    import json
    d = json.loads(path.read_text())
    lines = []
    assert mod.rescore(path, lines.append) == 0
    text = "\n".join(lines)
    clock, phase = text.index("by the clock"), text.index("measured in the table's phase")
    assert clock < phase
    for summary, part in ((d["by_clock"]["summary"], text[clock:phase]), (d["summary"], text[phase:])):
        for field in ("sum_of_ops_ms", "calibrated_ms"):
            assert f"MAPE {summary[field]['mape']:.2%}" in part


def test_a_blocks_runs_fit_never_takes_the_scored_models_own_overhead(monkeypatch):
    """``zoo_accuracy.score`` with a table per model ({model: per-call overhead}): the fit that predicts a
    model removes the median overhead of the *other* models' tables, never its own."""
    mod = _zoo_accuracy()
    from costmodels.incontext import Sample
    seen = []
    real = mod.fit_in_context

    def spy(samples, per_call, **kw):
        seen.append((sorted(s.name for s in samples), per_call))
        return real(samples, per_call, **kw)
    monkeypatch.setattr(mod, "fit_in_context", spy)
    samples = {n: Sample(n, {"conv_kxk": f, "linear": 1.0}, 10, 1.2 * (f + 1.0), op_types={"Conv2d": f, "Linear": 1.0})
               for n, f in (("a", 4.0), ("b", 6.0), ("c", 9.0), ("d", 12.0))}
    extra = {n: {"sum_of_ops_ms": s.features["conv_kxk"] + 1.0, "layers": 10, "per_key": []}
             for n, s in samples.items()}
    overhead = {"a": 0.001, "b": 0.002, "c": 0.004, "d": 0.100}
    mod.score(samples, extra, set(), overhead, "layers", lambda line: None)
    assert seen == [(["b", "c", "d"], 0.004), (["a", "c", "d"], 0.004), (["a", "b", "d"], 0.002),
                    (["a", "b", "c"], 0.002)]


# --- `hwcost host`: is this machine quiet enough to measure on? ---------------------------------

def test_host_rating_tells_quiet_steal_and_contention_apart():
    from profilers.host import NOISY, QUIET, rate
    quiet = [400.0 + (i % 3) for i in range(12)]
    assert rate(quiet, quiet) == (pytest.approx(402 / 400, rel=1e-3), "quiet", None)
    slow = [400.0] * 8 + [600.0] * 4            # a third of the windows 1.5x slower
    spread, rating, kind = rate(slow, [v * 0.99 for v in slow])   # the CPU time moved with the wall time
    assert spread == pytest.approx(1.5) and spread > NOISY and (rating, kind) == ("noisy", "contention")
    assert rate(slow, [396.0] * 12)[2] == "steal"  # the CPU time stayed put: the vCPU was taken away
    # Under 10 windows the spread is max / min; between the two thresholds: "phases".
    mid = [400.0, 440.0, 410.0]
    assert QUIET < 1.1 <= NOISY and rate(mid, None) == (pytest.approx(1.1), "phases", None)


def test_host_check_times_the_reference_kernel_in_windows(capsys):
    import json
    import statistics
    import time

    import torch

    from profilers.profile import reference_module
    code = main(["host", "--seconds", "0.8", "--window", "0.2", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and 3 <= len(d["windows_us"]) <= 5 and d["rating"] in ("quiet", "phases", "noisy")
    assert d["median_us"] == pytest.approx(statistics.median(d["windows_us"]))
    # The kernel timed another way (plain calls, all threads): the check's one-thread median is of its order.
    module, shape = reference_module()
    x = torch.randn(*shape)
    with torch.no_grad():
        module(x)
        t = []
        for _ in range(30):
            t0 = time.perf_counter()
            module(x)
            t.append(time.perf_counter() - t0)
    assert 0.2 < d["median_us"] / (statistics.median(t) * 1e6) < 10
    code = main(["host", "--seconds", "0.4", "--window", "0.2"])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: " in out and "window medians (us): " in out


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--seconds", "0.3", "--window", "0.2"], ["--window", "-1"]])
def test_host_check_refuses_windows_it_cannot_compare(capsys, argv):
    assert main(["host", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwcost: error:") and "Traceback" not in err
