"""Hardware in the loop (hwcost.verify) and confidence budgets, on a toy backend whose networks cost
more than the sum of their ops -- the situation that put the demo's network over budget on another host."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from costmodels.predict import predict_network
from device_tables import DATA_DIR, load_table, save_table
from hwcost.cli import main
from profilers import backends as B
from profilers.environment import device_info
from profilers.measure import Measurement
from pristine import copy_run, restore
from search.run import SearchConfig, run_search

TOY = "toy-incontext"
SLOWDOWN, EXTRA_MS = 1.35, 0.02      # a network = 1.35 x its ops' sum + 20 us: the sum under-predicts
FAST = dict(data="synthetic", epochs=2, steps_per_epoch=3, batch_size=16, C=4, layers=3, threads=1)


class _Toy(B.Backend):
    """Networks 'measured' by a known in-context law over the toy table's ops (deterministic)."""
    name = TOY
    table = None
    phase = 1.0                             # the host's speed for networks (a slow phase: > 1)

    def prepare(self, module, inputs):
        if not any(hasattr(m, "hw_op") for m in module.modules()):
            ms = 0.4                        # the host's reference kernel: a steady host
        else:
            ms = SLOWDOWN * predict_network(module, tuple(inputs[0].shape), self.table, incontext=None).latency_ms
            ms = ms * self.phase + EXTRA_MS

        def fn():
            return None
        fn.toy_ms = ms
        return fn

    def measure_interleaved(self, fns, settings):
        return [Measurement([f.toy_ms / 1e3] * 9) for f in fns]

    def block_timer(self, settings):
        return lambda fn, k: k * fn.toy_ms / 1e3    # run by run (measure_paired): the toy's time, k runs


@pytest.fixture(scope="module")
def pristine_toy(tmp_path_factory):
    """The shipped nb201 ort-cpu entries as a table of the toy backend, profiled 'here', saved once for
    the module (tests add to its calibration: ``toy_table`` restores it for each); with ``median``, the
    median of random networks' latency as this uncalibrated table prices them (``_budget``)."""
    t = load_table(DATA_DIR / "nb201_ort-cpu.json")
    t = dataclasses.replace(t, device=device_info(), runtime={**t.runtime, "backend": TOY})
    path = tmp_path_factory.mktemp("toy") / "toy.json"
    save_table(t, path)
    return SimpleNamespace(path=path, saved=path.read_bytes(), median=_budget(path))


@pytest.fixture
def toy_table(pristine_toy):
    """The toy table (uncalibrated), its backend registered."""
    path = restore(pristine_toy)
    B._BACKENDS[TOY] = _Toy
    _Toy.table = load_table(path)
    yield path
    B._BACKENDS.pop(TOY, None)
    _Toy.phase = 1.0


@pytest.fixture(scope="module")
def pristine_run(pristine_toy, tmp_path_factory):
    """One search on the uncalibrated toy table under 1.1 x the median (the sum of ops says it fits; the
    toy device says 1.35x): run once for the module; ``searched`` gives each test its own copy."""
    path = restore(pristine_toy)
    budget = pristine_toy.median * 1.1
    cfg = SearchConfig(space="nb201", table=str(path), budgets=[f"latency={budget}ms"], **FAST)
    out = tmp_path_factory.mktemp("searched") / "run"
    return SimpleNamespace(out=out, cfg=cfg, result=run_search(cfg, str(out), progress=False), budget=budget)


@pytest.fixture
def searched(toy_table, pristine_run, tmp_path) -> tuple[Path, SearchConfig, dict, float]:
    """(run directory, config, result, budget): a copy at ``tmp_path/run`` of the module's search, on the
    toy table that ``toy_table`` restored as it was when searched."""
    return copy_run(pristine_run, tmp_path)


def _budget(path, q=0.5) -> float:
    """A latency budget inside the space as the table prices it (and, uncalibrated, as the toy runs it)."""
    from hwcost.pipeline import random_derived_costs
    from search.costs import cached_search_cost_tensor
    from spaces import NB201_OPS
    # a search on the same file builds the same tensor through this cache: built once
    ct, _ = cached_search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), str(path))
    lat = random_derived_costs(ct, 200, 0)[:, ct.index("latency_ms")].numpy()
    return float(np.quantile(lat, q))


def test_verify_loop_brings_the_measured_network_into_the_band(toy_table, searched):
    run, cfg, r, budget = searched
    # the uncalibrated sum says it fits; the device (toy) says 1.35x: over budget
    from hwcost.verify import verify_search
    first = SLOWDOWN * r["derived"]["latency_ms"] + EXTRA_MS
    assert first > budget
    r = verify_search(cfg, run, r, rounds=3, log=lambda s: None)
    rounds = r["verify"]["rounds"]
    assert rounds[0]["measured_ms"] == pytest.approx(first, rel=1e-6)
    assert not rounds[0]["in_band"]
    last = rounds[-1]
    assert r["verify"]["met"] and 0.85 * budget <= last["measured_ms"] <= budget
    assert last["calibrated"] and last["low_ms"] <= last["measured_ms"] <= last["high_ms"]
    assert last["host_vs_calibration"] == pytest.approx(1.0)   # the reference kernel ran as at calibration
    # what was measured is in the table's calibration, and result.json records every round
    cal = load_table(toy_table).calibration
    assert sum(n["role"] == "verify" for n in cal["networks"]) == len(rounds) - 1
    assert json.loads((run / "result.json").read_text())["verify"]["rounds"] == rounds


def test_confidence_budget_aims_under_the_budget_by_the_calibrated_margin(toy_table, tmp_path):
    from hwcost.calibrate import calibrate
    table, model = calibrate(load_table(toy_table), toy_table, n=6, log=lambda s: None)
    budget = _budget(toy_table) * 1.3
    cfg = SearchConfig(space="nb201", table=str(toy_table), budgets=[f"latency={budget}ms"], confidence=0.95,
                       **FAST)
    r = run_search(cfg, str(tmp_path / "run"), progress=False)
    u = model.upper_factor(0.95)
    assert r["confidence"]["upper_factor"] == pytest.approx(u)
    assert r["budgets_given"]["latency_ms"] == pytest.approx(budget)
    assert r["budgets"]["latency_ms"] == pytest.approx(budget / u)
    assert r["derived"]["latency_ms"] <= budget / u
    # the search's latency is the calibrated one: the toy law, up to the fit
    measured = SLOWDOWN * predict_network(*_net(r["arch"]), load_table(toy_table), incontext=None).latency_ms + EXTRA_MS
    assert r["derived"]["latency_ms"] == pytest.approx(measured, rel=0.02)


def _net(arch):
    from spaces import Nb201NetConfig, build_network
    net = build_network(Nb201NetConfig(arch=arch))
    return net, tuple(net.input_shape(1))


def test_cli_search_confidence_without_calibration_is_one_error(toy_table, tmp_path, capsys):
    assert main(["search", "--space", "nb201", "--data", "synthetic", "--epochs", "1", "--steps-per-epoch", "1",
                 "--table", str(toy_table), "--budget", "latency=5ms", "--confidence", "0.9", "--no-verify",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--confidence needs a calibrated table" in err and "Traceback" not in err


def test_cli_verify_with_a_table_of_another_device_is_one_error(tmp_path, capsys):
    t = load_table(DATA_DIR / "nb201_ort-cpu.json")
    t = dataclasses.replace(t, device={**t.device, "cpu": "Another CPU 1", "cpu_id": "x"})
    save_table(t, tmp_path / "other.json")
    assert main(["search", "--space", "nb201", "--data", "synthetic", "--epochs", "1", "--table",
                 str(tmp_path / "other.json"), "--budget", "latency=5ms", "--verify", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Another CPU 1" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_verify_is_on_by_default_only_for_a_table_profiled_here(toy_table, tmp_path):
    from hwcost.verify import verify_default
    assert verify_default(str(toy_table))[0]
    assert not verify_default("nb201_ort-cpu")[0]          # bundled: measured elsewhere
    assert not verify_default("raspi4")[0]


def test_a_network_measured_on_the_device_is_priced_by_its_measurement(toy_table, tmp_path):
    """Hardware in the loop: once the calibration holds a network's measurement, derivation uses it
    (scaled by the budget margin) instead of the model's prediction."""
    from costmodels.incontext import Sample, fit_in_context
    from device_tables.table import now_iso
    from search.costs import enumerate_nb201_costs, exact_cost_fn, search_cost_tensor
    from spaces import NB201_OPS
    arch = "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
    samples = [Sample("a", {"nor_conv_3x3": 1.0}, 50, 1.2, {"kind": "nb201", "arch": arch}),
               Sample("b", {"nor_conv_3x3": 2.0}, 60, 2.3, {"kind": "nb201", "arch": "other"})]
    m = fit_in_context(samples, 0.0, backend=TOY, host={"cpu": "x"}, created=now_iso())
    t = load_table(toy_table)
    save_table(dataclasses.replace(t, calibration=m.to_json()), toy_table)
    ct, _ = search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), str(toy_table))
    archs, costs = enumerate_nb201_costs(str(toy_table), ct, upper_factor=1.5)
    i = ct.index("latency_ms")
    assert costs[archs.index(arch), i].item() == pytest.approx(1.2 * 1.5)
    other = archs.index("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert costs[other, i].item() != pytest.approx(1.2 * 1.5)
    assert exact_cost_fn("nb201", str(toy_table), ct)(arch, ct.fixed.clone())[i].item() == pytest.approx(1.2)


@pytest.mark.parametrize("flag,value,says", [("--verify-rounds", "2", "--verify-rounds goes with --verify"),
                                              ("--verify-finetune", "5", "--verify-finetune goes with --verify"),
                                              ("--verify-finetune", "-1", "non-negative number of steps")])
def test_cli_verify_tuning_without_verify_is_one_error(tmp_path, capsys, flag, value, says):
    assert main(["search", "--space", "nb201", "--data", "synthetic", "--epochs", "1", "--table", "raspi4",
                 "--budget", "latency=20ms", flag, value, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_verify_stopping_on_a_measured_network_keeps_result_and_rounds_in_agreement(toy_table, searched,
                                                                                    monkeypatch):
    """When re-derivation leads back to a network measured already, the loop stops and the result
    stays the last measured network's (result.json's derived latency is the last round's)."""
    import search.run
    from hwcost.verify import verify_search
    run, cfg, r, budget = searched
    same = {**r, "derived": {**r["derived"], "latency_ms": 999.0}}     # the same arch, other costs
    monkeypatch.setattr(search.run, "run_search", lambda *a, **k: same)
    out = verify_search(cfg, run, r, rounds=3, log=lambda s: None, finetune=0)
    assert out["verify"]["stopped"] == "re-derived a network measured already"
    assert len(out["verify"]["rounds"]) == 1
    assert out["derived"]["latency_ms"] == out["verify"]["rounds"][-1]["predicted_ms"] != 999.0
    saved = json.loads((run / "result.json").read_text())
    assert saved["derived"]["latency_ms"] == out["verify"]["rounds"][-1]["predicted_ms"]


def test_local_correction_scales_latency_and_narrows_the_band(toy_table):
    from search.costs import local_correction, search_cost_tensor
    from search.objective import parse_term
    from spaces import NB201_OPS
    ct, _ = search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), str(toy_table))
    terms = [parse_term("latency=2ms", "hard"), parse_term("params=1M", "hard")]
    scaled, margin = local_correction(ct, terms, {"scale": 0.8, "margin": 0.03}, floor=0.85)
    i = ct.index("latency_ms")
    assert np.allclose(scaled.c[..., i].numpy(), 0.8 * ct.c[..., i].numpy())
    assert scaled.fixed[i].item() == pytest.approx(0.8 * ct.fixed[i].item())
    j = ct.index("params")                                # exact counts are untouched
    assert np.array_equal(scaled.c[..., j].numpy(), ct.c[..., j].numpy())
    lat = terms[0]
    assert lat.given == 2.0 and lat.value == pytest.approx(2.0 * 0.97)
    assert lat.floor * lat.value == pytest.approx(0.85 * 2.0 * 1.03)   # aims at [0.85 B (1 + d), B (1 - d)]
    assert terms[1].value == 1e6 and terms[1].given is None
    assert margin["upper_factor"] == 1.0 and margin["local_scale"] == 0.8
    with pytest.raises(Exception, match="scale > 0"):
        local_correction(ct, terms, {"scale": 0.0, "margin": 0.03}, floor=0.85)


def test_verify_recovers_from_a_calibration_measured_in_a_slow_phase(toy_table, tmp_path):
    """The calibration was measured while the host ran networks 25% slower (a neighbour's load): the
    model over-predicts, so the derived network lands under the band's floor. The loop scales the
    model to the measured network and re-derives into [floor B, B]."""
    from hwcost.calibrate import calibrate
    from hwcost.verify import verify_search
    _Toy.phase = 1.25
    calibrate(load_table(toy_table), toy_table, n=6, log=lambda s: None)
    _Toy.phase = 1.0
    budget = _budget(toy_table, 0.4) * 1.35
    cfg = SearchConfig(space="nb201", table=str(toy_table), budgets=[f"latency={budget}ms"], **FAST)
    r = run_search(cfg, str(tmp_path / "run"), progress=False)
    r = verify_search(cfg, tmp_path / "run", r, rounds=3, log=lambda s: None)
    rounds = r["verify"]["rounds"]
    assert rounds[0]["measured_ms"] < 0.85 * budget          # the slow-phase model over-predicts
    assert r["verify"]["met"] and 0.85 * budget <= rounds[-1]["measured_ms"] <= budget
    assert rounds[0]["correction"]["scale"] < 1.0
    assert r["verify"]["correction"]["local_scale"] == rounds[-2]["correction"]["scale"]


def test_a_measurement_in_another_phase_is_brought_back_by_calibration_networks_run_beside_it(toy_table):
    """Each run of a derived network follows a run of a calibration network (a candle); its time x the
    candle's calibrated time / the candle's time beside it is the run in the calibration's phase: the host
    30% slower than at calibration -> the figure is the calibrated-speed time; 20% faster -> the figure is
    that speed x 0.8, the phase seen now (the quickest phase seen is the device's); the clock's figure is
    the raw one."""
    from hwcost.calibrate import build_spec, calibrate, network_settings, table_backend
    from hwcost.verify import CANDLES, candles, measure_in_phase
    calibrate(load_table(toy_table), toy_table, n=4, log=lambda s: None)
    table = load_table(toy_table)
    lit = candles(table)
    assert len(lit) == CANDLES and all(then > 0 for _, _, then in lit)
    net, shape = build_spec({"kind": "nb201", "arch": "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|"
                                                     "avg_pool_3x3~0|none~1|nor_conv_3x3~2|"})
    true_ms = SLOWDOWN * predict_network(net, shape, table, incontext=None).latency_ms + EXTRA_MS
    backend = table_backend(table)
    for phase in (1.3, 0.8):
        _Toy.phase = phase
        meas, raw, ref, seen = measure_in_phase(net, shape, table, backend, network_settings(0.05), sessions=2)
        assert raw.median * 1e3 == pytest.approx(SLOWDOWN * predict_network(net, shape, table, incontext=None)
                                                 .latency_ms * phase + EXTRA_MS, rel=1e-6)
        # the toy's per-network constant (20 us) does not scale with the phase: the candles' ratio is
        # a little off the phase, so the correction lands within 1% of the calibrated-speed time
        assert seen == pytest.approx(phase, rel=0.02)
        assert meas.median * 1e3 == pytest.approx(true_ms * min(phase, 1.0), rel=0.01)
        assert (meas.median < raw.median) == (phase > 1)
        if phase < 1:
            assert meas.median == pytest.approx(raw.median, rel=0.01)
        assert len(meas.session_medians) == 2 and ref.median == pytest.approx(0.4e-3)
    _Toy.phase = 1.0


def test_paired_runs_follow_their_candles_in_rotation():
    """measure_paired: every run of a network right after one run of a candle, the candles in rotation,
    at least min_samples runs; a run x then / its candle's time undoes a phase shared by the pair."""
    from profilers.measure import Pairs, Settings
    calls = []

    class Clocked(B.TorchCPU):
        def block_timer(self, settings):
            def run(fn, k):
                calls.append(fn.label)
                return k * fn.ms
            return run

    def fn(label, ms):
        f = lambda: None  # noqa: E731
        f.label, f.ms = label, ms
        return f

    be = Clocked()
    a, b = fn("a", 2e-3), fn("b", 4e-3)
    c0, c1 = fn("c0", 1e-3), fn("c1", 3e-3)
    pa, pb = be.measure_paired([a, b], [c0, c1], Settings(max_time_s=1e-9, warmup_s=1e-9, min_samples=5))
    timed = calls[4:]          # after one warm-up run of each candle and network
    assert timed[:10] == ["c0", "a", "c1", "a", "c0", "a", "c1", "a", "c0", "a"]
    assert pa.candles == [0, 1, 0, 1, 0] and pb.times == [4e-3] * 5
    assert pa.in_phase([2e-3, 3e-3]).median == pytest.approx(4e-3)   # candle 0 ran 2x faster than then
    assert pa.phase([2e-3, 6e-3]) == pytest.approx(0.5)
    with pytest.raises(Exception, match="candle"):
        be.measure_paired([a], [], Settings())
    with pytest.raises(ValueError):
        Pairs([1.0], [], [])


def test_a_rounds_interval_is_printed_beside_the_figure_it_belongs_to():
    from hwcost.verify import predicted_text
    same = {"predicted_ms": 7.53, "table_predicted_ms": 7.53, "low_ms": 7.25, "high_ms": 7.81, "calibrated": True}
    assert predicted_text(same, 2) == "7.53 ms [7.25, 7.81]"
    # re-derived with the locally scaled model: the interval is the refitted table's, around 7.97 ms
    moved = {**same, "predicted_ms": 7.29, "table_predicted_ms": 7.97, "low_ms": 7.49, "high_ms": 8.58}
    text = predicted_text(moved, 2)
    assert text == "7.29 ms (the table: 7.97 ms [7.49, 8.58])"
    assert not text.startswith("7.29 ms [")
    assert predicted_text({**same, "calibrated": False, "low_ms": None}, 3) == "7.530 ms (uncalibrated)"


def test_fine_tuning_trains_alpha_under_the_corrected_costs_and_leaves_the_checkpoint(toy_table, pristine_toy,
                                                                                       tmp_path):
    """SearchRun.finetune: N more search steps under the corrected cost tensor, from the search's
    checkpoint (left as it was, so two fine-tunings from it agree), logged to finetune.jsonl."""
    budget = pristine_toy.median * 1.1
    cfg = SearchConfig(space="nb201", table=str(toy_table), budgets=[f"latency={budget}ms"], arch_lr=1e-3, **FAST)
    run = tmp_path / "run"
    r = run_search(cfg, str(run), progress=False)
    ckpt = (run / "checkpoint.pt").read_bytes()
    plain = run_search(cfg, str(run), resume=True, progress=False, correction={"scale": 1.0, "margin": 0.0},
                       finetune=4)
    tuned = run_search(cfg, str(run), resume=True, progress=False, correction={"scale": 1.6, "margin": 0.0},
                       finetune=4)
    f = tuned["finetune"]
    # before any step: the checkpoint's alpha priced by the corrected costs (every op and the fixed part x 1.6)
    assert f["expected_before"]["latency_ms"] == pytest.approx(1.6 * plain["finetune"]["expected_before"]["latency_ms"],
                                                              rel=1e-6)
    assert f["steps"] == 4 and "latency_ms" in f["multipliers"]
    steps = [json.loads(line) for line in (run / "finetune.jsonl").read_text().splitlines()]
    assert [s["finetune_step"] for s in steps] == [0, 1, 2, 3]          # this fine-tuning's steps only
    assert (run / "checkpoint.pt").read_bytes() == ckpt                 # the search's own checkpoint stays
    again = run_search(cfg, str(run), resume=True, progress=False, correction={"scale": 1.6, "margin": 0.0},
                       finetune=4)
    assert again["finetune"] == f and again["arch"] == tuned["arch"]    # from the checkpoint each time
    # the steps trained alpha (Adam moves each logit by about its learning rate per step)
    assert 0 < f["alpha_change_max"] <= 4 * 2 * cfg.arch_lr and plain["finetune"]["alpha_change_max"] > 0
    with pytest.raises(Exception, match="non-negative"):
        run_search(cfg, str(run), resume=True, progress=False, finetune=-1)
    assert r["steps"] == 6


def test_a_re_derivation_back_to_a_measured_network_fine_tunes_alpha_first(toy_table, searched, monkeypatch):
    """The verify loop: a re-derivation that leads back to the network measured already is tried once
    more after fine-tuning; its network (a new one) is measured in the next round."""
    import search.run
    from hwcost.verify import verify_search
    real = search.run.run_search
    run, cfg, r, budget = searched
    calls = []

    def back_to_the_measured_one(cfg, out, resume=False, progress=True, correction=None, finetune=0):
        calls.append(finetune)
        if not finetune:
            return {**r, "derived": {**r["derived"], "latency_ms": 999.0}}
        return real(cfg, out, resume=resume, progress=progress, correction=correction, finetune=finetune)
    monkeypatch.setattr(search.run, "run_search", back_to_the_measured_one)
    out = verify_search(cfg, run, r, rounds=1, log=lambda s: None, finetune=3)
    rounds = out["verify"]["rounds"]
    assert calls == [0, 3]
    f = rounds[0]["finetune"]
    assert f["steps"] == 3 and f["arch"] != rounds[0]["arch"] and f["new_network"]
    # the measured network is priced by its (over-budget) measurement: the fine-tuned derivation moves
    # elsewhere, and that network is the one measured in round 1
    assert len(rounds) == 2 and rounds[1]["arch"] == f["arch"] and out["verify"]["stopped"] is None
    assert json.loads((run / "result.json").read_text())["verify"]["rounds"][0]["finetune"] == f
    # with fine-tuning off the loop stops there, as before
    calls.clear()
    out = verify_search(cfg, run, r, rounds=1, log=lambda s: None, finetune=0)
    assert calls == [0] and out["verify"]["stopped"] == "re-derived a network measured already"


def test_cli_verify_of_a_run_searched_here_measures_here(toy_table, pristine_toy, tmp_path, capsys):
    """`hwcost verify RUN` on a run searched with --no-verify on a table profiled here: the local loop, as
    `search --verify` runs it; asked again, it says the run was verified; --results is for remote tables."""
    budget = pristine_toy.median * 1.1
    run = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--data", "synthetic", "--epochs", "2", "--steps-per-epoch", "3",
                 "--C", "4", "--layers", "3", "--table", str(toy_table), "--budget", f"latency={budget}ms",
                 "--no-verify", "--out", str(run)]) == 0
    r = json.loads((run / "result.json").read_text())
    assert "verify" not in r
    capsys.readouterr()
    assert main(["verify", str(run), "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    v = json.loads((run / "result.json").read_text())["verify"]
    assert v["backend"] == TOY and "pending" not in v and v["rounds"]
    # the first measurement is the toy device's law on the searched network (over its ops' sum)
    assert v["rounds"][0]["measured_ms"] == pytest.approx(SLOWDOWN * r["derived"]["latency_ms"] + EXTRA_MS, rel=1e-6)
    assert "round 0: predicted" in out
    assert main(["verify", str(run)]) == 0
    assert "verified already" in capsys.readouterr().out
    (tmp_path / "res.json").write_text("{}")
    assert main(["verify", str(run), "--results", str(tmp_path / "res.json")]) == 2
    assert "remote device" in capsys.readouterr().err


def test_a_share_rounded_across_an_edge_of_the_band_keeps_a_decimal():
    """84.6% of a budget is under the 85% floor: it reads 84.6%, not 85% (a demo printed "( 85%) under 85%")."""
    from hwcost.verify import share_text
    assert share_text(13.03, 15.40, 0.85 * 15.40) == "84.6%"
    assert share_text(15.42, 15.40, 0.85 * 15.40) == "100.1%"          # over the budget, not "100%"
    assert share_text(13.80, 15.40, 0.85 * 15.40) == "90%"             # well inside: a whole percent
    assert share_text(13.10, 15.40, 0.85 * 15.40) == "85%"             # 85.06%: inside, and reads so
    assert share_text(13.03, 15.40) == "85%"                           # no floor: only the budget is an edge


def test_cli_measure_beside_a_calibrated_table_reports_the_calibration_phase(toy_table, capsys):
    """`hwcost measure --beside TABLE`: the network's runs, each right after a calibration network's, in the
    calibration's phase (the host 30% slower now: the figure is the calibrated-speed time, the clock's 1.3x);
    a table without calibration, or another backend than the table's, is one error each."""
    from hwcost.calibrate import build_spec, calibrate
    arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    args = ["measure", "--space", "nb201", "--arch", arch, "--beside", str(toy_table), "--max-time", "0.05"]
    assert main(args) == 2
    assert "no calibration networks" in capsys.readouterr().err
    calibrate(load_table(toy_table), toy_table, n=4, log=lambda s: None)
    table = load_table(toy_table)
    net, shape = build_spec({"kind": "nb201", "arch": arch})
    true_ms = SLOWDOWN * predict_network(net, shape, table, incontext=None).latency_ms + EXTRA_MS
    _Toy.phase = 1.3
    try:
        assert main(args + ["--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["latency_ms"] == pytest.approx(true_ms, rel=0.01)
        assert d["clock_ms"] == pytest.approx(true_ms * 1.3, rel=0.01) and d["phase"] == pytest.approx(1.3, rel=0.02)
        assert d["backend"] == TOY and d["n"] >= 10
        assert main(args) == 0
        assert "in the calibration's phase" in capsys.readouterr().out
    finally:
        _Toy.phase = 1.0
    assert main(args + ["--backend", "torch-cpu"]) == 2
    err = capsys.readouterr().err
    assert "profiled on" in err and "Traceback" not in err


def test_calibration_networks_are_levelled_by_runs_beside_the_first():
    """Window figures off by host phases (+30%, -10% on two networks): each network timed run by run after
    the first one gives its ratio to it exactly; the level is the median of window / ratio, so the figures
    come back to the true times (a count done the other way: the toy's known per-run times)."""
    import torch.nn as nn

    from hwcost.calibrate import levelled_by_pairs
    from profilers.measure import Measurement, Settings
    true, noise = [2e-3, 3e-3, 5e-3, 4e-3], [1.0, 1.3, 0.9, 1.0]

    class Clocked(B.TorchCPU):
        def prepare(self, module, inputs):
            f = lambda: None  # noqa: E731
            f.ms = module.ms
            return f

        def block_timer(self, settings):
            return lambda fn, k: k * fn.ms

    built = []
    for t in true:
        m = nn.Identity()
        m.ms = t
        built.append((m, (1, 2)))
    windows = [Measurement([t * n] * 9) for t, n in zip(true, noise)]
    out = levelled_by_pairs(built, windows, Clocked(), Settings(max_time_s=1e-9, warmup_s=1e-9, min_samples=3))
    assert [m.median for m in out] == pytest.approx(true)
    assert [m.n for m in out[1:]] == [3, 3, 3]
