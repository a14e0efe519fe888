"""Sweeps: lambda narrowing, Pareto front, look-up graph, gathering, failures, resume, backends."""
import csv
import itertools
import json
import math
import random
from pathlib import Path

import pytest

from search.objective import parse_term
from search.run import SearchConfig
from search.sweep import (LookupGraph, SweepOptions, budget_sweep, lambda_sweep, lookup_sweep,
                          narrow_lambda_range, pareto_front, spread)
from spaces import HwcostError

CALLS: list[str] = []


def fake_cost(cfg: SearchConfig) -> float:
    """A known search outcome: params fall with the penalty lambda; a hard budget lands at 0.9 B,
    or (cost_mode "expected", DCA-NAS's search-size cost) at 1.3 B + 0.1M."""
    for p in cfg.penalties:
        lam = parse_term(p, "soft").value
        return 4e6 / (1 + lam * 1e7)
    b = parse_term(cfg.budgets[0], "hard").value
    return 1.3 * b + 1e5 if cfg.cost_mode == "expected" else 0.9 * b


def fake_search(cfg: SearchConfig, out, resume=False, progress=False) -> dict:
    CALLS.append(Path(out).name)
    if cfg.seed == 13 or any(abs(parse_term(b, "hard").value - 1.3e6) < 1 for b in cfg.budgets):
        raise HwcostError("boom: this search was made to fail")
    cost = fake_cost(cfg)
    budgets = {t.metric: t.value for t in map(lambda b: parse_term(b, "hard"), cfg.budgets)}
    result = {"derived": {"params": cost, "macs": 100 * cost}, "budgets": budgets,
              "within_budget": {m: cost <= b for m, b in budgets.items()},
              "supernet_val_accuracy": 0.5 + 0.1 * math.sin(cost / 3e5), "search_seconds": 0.01}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


def opts(tmp_path, **kw) -> SweepOptions:
    return SweepOptions(out=str(tmp_path / "sweep"), backend="serial", progress=False, **kw)


# --- pure logic ---------------------------------------------------------------


def test_lambda_range_narrows_around_the_budget_crossing():
    cost = lambda lam: 4e6 / (1 + lam * 1e7)       # decreasing; crosses 3e6 at lambda = 1e-7 / 3
    budget, crossing = 3e6, 1e-7 / 3
    lo, hi = 1e-11, 1e-6
    rng = random.Random(0)
    for _ in range(4):
        lams = [10 ** rng.uniform(math.log10(lo), math.log10(hi)) for _ in range(5)]
        new = narrow_lambda_range([(l, cost(l)) for l in lams], budget, lo, hi)
        assert new[0] <= crossing <= new[1]
        over, under = [l for l in lams if cost(l) > budget], [l for l in lams if cost(l) <= budget]
        if over and under:   # the bracket: the largest lambda over the budget, the smallest under it
            assert new == (max(over), min(under))
            assert math.log10(new[1] / new[0]) < math.log10(hi / lo)
        lo, hi = new
    assert math.log10(hi / lo) < 1.0   # from 5 decades to under one


def test_lambda_range_moves_when_no_point_crosses():
    # every search over the budget: look at larger lambda, one decade-width further
    assert narrow_lambda_range([(1e-9, 5e6), (1e-8, 4e6)], 3e6, 1e-9, 1e-8) == pytest.approx((1e-8, 1e-7))
    # every search under: smaller lambda
    assert narrow_lambda_range([(1e-9, 1e6), (1e-8, 5e5)], 3e6, 1e-9, 1e-8) == pytest.approx((1e-10, 1e-9))
    # noise: one search under the budget among larger-lambda ones over it does not flip the bracket
    pts = [(1e-9, 5e6), (2e-9, 2e6), (4e-9, 4e6), (8e-9, 3.5e6), (1.6e-8, 2e6), (3.2e-8, 1e6)]
    assert narrow_lambda_range(pts, 3e6, 1e-9, 1e-7) == (8e-9, 1.6e-8)


def test_pareto_front_matches_brute_force():
    rng = random.Random(1)
    for _ in range(50):
        n = rng.randint(1, 12)
        costs = [rng.choice([1, 2, 3, 4, 5]) * 1e6 for _ in range(n)]     # ties on purpose
        accs = [rng.choice([0.5, 0.6, 0.7, 0.8]) for _ in range(n)]
        dominated = {i for i, j in itertools.permutations(range(n), 2)
                     if costs[j] <= costs[i] and accs[j] >= accs[i] and (costs[j] < costs[i] or accs[j] > accs[i])}
        brute = [i for i in range(n) if i not in dominated]
        front = pareto_front(costs, accs)
        # exact duplicates: the brute force keeps both, the front one of them -- compare as point sets
        assert {(costs[i], accs[i]) for i in front} == {(costs[i], accs[i]) for i in brute}
        assert len(front) == len({(costs[i], accs[i]) for i in brute})


def test_lookup_graph_is_exact_at_monotone_points_and_inverts():
    pts = [(1e6, 1.4e6), (2e6, 2.7e6), (3e6, 3.5e6), (4e6, 5.0e6)]
    g = LookupGraph("params", pts)
    for x, y in pts:
        assert g.predict(x) == pytest.approx(y)
        assert g.constraint_for(y) == pytest.approx(x)
    # between points: linear; inverse of the midpoint is the midpoint
    assert g.predict(1.5e6) == pytest.approx((1.4e6 + 2.7e6) / 2)
    assert g.constraint_for(2.05e6) == pytest.approx(1.5e6)
    # outside the measured range: refused, never a number
    with pytest.raises(HwcostError, match="outside the measured range"):
        g.predict(5e6)
    with pytest.raises(HwcostError, match="outside the measured range"):
        g.constraint_for(0.7e6)
    with pytest.raises(HwcostError, match="outside the measured range"):
        g.constraint_for(5.1e6)


@pytest.mark.parametrize("points,match", [
    ([(1e5, 1370134.0), (2e5, 1370134.0)], "flat"),                  # both searches derived one network
    ([(1e5, 2.0e6), (2e5, 1.5e6), (3e5, 1.2e6)], "does not increase"),  # the cost falls with the constraint
    ([(1e5, 2.0e6), (1e5, 2.2e6)], "2 different search constraints"),  # one constraint searched twice
])
def test_lookup_graph_refuses_a_curve_it_cannot_invert(points, match):
    g = LookupGraph("params", points)
    for target in (1.2e6, 1370134.0, 2.0e6, 2.5e6):
        with pytest.raises(HwcostError, match=match):
            g.constraint_for(target)


def test_lookup_graph_fit_is_monotone_on_noisy_points():
    rng = random.Random(2)
    xs = sorted(rng.uniform(1e6, 5e6) for _ in range(15))
    pts = [(x, 1.2 * x + rng.gauss(0, 6e5)) for x in xs] + [(xs[3], 2e6)]   # noise and a repeated constraint
    g = LookupGraph("params", pts)
    grid = [x for x in (1e5 * i for i in range(5, 60)) if g.xs[0] <= x <= g.xs[-1]]   # inside what was searched
    assert len(grid) > 20
    pred = [g.predict(x) for x in grid]
    assert all(a <= b for a, b in zip(pred, pred[1:]))
    assert all(a <= b for a, b in zip(g.ys, g.ys[1:]))
    for t in (2e6, 3e6, 4e6):   # a picked constraint predicts its target back
        k = g.constraint_for(t)
        assert g.predict(k) == pytest.approx(t)


def test_spread_and_bad_specs():
    assert [parse_term(b, "hard").value for b in spread("params=1M:4M", 4)] == [1e6, 2e6, 3e6, 4e6]
    assert [parse_term(b, "hard").value for b in spread("latency=1ms:100ms", 3, log=True)] == \
        pytest.approx([1.0, 10.0, 100.0])
    for bad in ("params=4M:1M", "params=1M", "speed=1:2", "params"):
        with pytest.raises(HwcostError):
            spread(bad, 3)


# --- sweeps on a fake search (no training) --------------------------------------


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_lambda_sweep_narrows_and_reports_the_best_under_budget(tmp_path):
    doc = lambda_sweep(SearchConfig(), opts(tmp_path), "params=3M", (1e-10, 1e-6), per_round=4, rounds=3,
                       search_fn=fake_search)
    s = doc["summary"]
    crossing = 1e-7 / 3
    widths = [math.log10(h["range"][1] / h["range"][0]) for h in s["rounds"]]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]
    last = s["rounds"][-1]["next_range"]
    assert last[0] <= crossing <= last[1]
    under = [r for r in doc["rows"] if r["cost"] <= 3e6]
    assert s["under_budget"] == len(under) > 0
    best = max(under, key=lambda r: (r["supernet_val_accuracy"], r["cost"]))
    assert s["best"]["name"] == best["name"]
    assert len(_csv(tmp_path / "sweep" / "sweep.csv")) == 12
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 0


def test_failed_search_is_recorded_and_the_sweep_goes_on(tmp_path):
    doc = budget_sweep(SearchConfig(), opts(tmp_path), ["params=1M", "params=1.3M", "params=2M"],
                       search_fn=fake_search)
    a, failed, b = doc["rows"]
    assert failed["status"] == "failed" and "boom" in failed["error"] and failed["cost"] is None
    assert a["status"] == b["status"] == "ok"
    assert b["cost"] == pytest.approx(1.8e6)
    assert doc["failed"] == 1
    table = {r["name"]: r for r in _csv(tmp_path / "sweep" / "sweep.csv")}
    assert table[failed["name"]]["status"] == "failed" and "boom" in table[failed["name"]]["error"]


def test_resume_skips_finished_runs(tmp_path):
    budgets = ["params=1M", "params=2M", "params=3M"]
    CALLS.clear()
    first = budget_sweep(SearchConfig(), opts(tmp_path), budgets, search_fn=fake_search)
    assert len(CALLS) == 3
    with pytest.raises(HwcostError, match="--resume"):
        budget_sweep(SearchConfig(), opts(tmp_path), budgets, search_fn=fake_search)
    unfinished = first["rows"][1]["name"]
    (tmp_path / "sweep" / "runs" / unfinished / "result.json").unlink()
    CALLS.clear()
    again = budget_sweep(SearchConfig(), opts(tmp_path, resume=True), budgets, search_fn=fake_search)
    assert CALLS == [unfinished]
    assert [r["cost"] for r in again["rows"]] == [r["cost"] for r in first["rows"]]
    assert [bool(r.get("resumed")) for r in again["rows"]] == [True, False, True]
    # a search function that was stopped after result.json but before it finished (its pending mark is
    # still there, e.g. hwcost's node-price rounds) runs again
    from search.sweep import PENDING
    (tmp_path / "sweep" / "runs" / unfinished / PENDING).touch()
    CALLS.clear()
    budget_sweep(SearchConfig(), opts(tmp_path, resume=True), budgets, search_fn=fake_search)
    assert CALLS == [unfinished]


def test_lookup_sweep_picks_the_constraint_for_a_target(tmp_path):
    # fake DCA-NAS gap: eval cost = 1.3 K' + 0.1M, so for a 3M target the search constraint is (3M - 0.1M) / 1.3
    doc = lookup_sweep(SearchConfig(cost_mode="expected"), opts(tmp_path), spread("params=1M:3M", 3),
                       ["params=3M"], verify=True, search_fn=fake_search)
    pick = doc["summary"]["lookup"]["picks"][0]
    assert pick["constraint"] == pytest.approx(2.9e6 / 1.3)
    assert pick["actual"] == pytest.approx(3e6) and "refused" not in pick
    saved = json.loads((tmp_path / "sweep" / "lookup.json").read_text())
    assert saved["points"] == [[1e6, 1.4e6], [2e6, 2.7e6], [3e6, 4e6]]


def flat_search(cfg: SearchConfig, out, resume=False, progress=False) -> dict:
    """Issue 14: whatever the constraint, the search derives the same 1,370,134-parameter network."""
    result = {"derived": {"params": 1370134.0}, "budgets": {}, "within_budget": {},
              "supernet_val_accuracy": 0.5, "search_seconds": 0.01}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


def test_lookup_sweep_on_a_flat_curve_refuses_the_pick_and_keeps_the_searches(tmp_path):
    CALLS.clear()
    doc = lookup_sweep(SearchConfig(cost_mode="expected"), opts(tmp_path), ["params=0.1M", "params=0.2M"],
                       ["params=2.5M", "params=1.370134M"], verify=True, search_fn=flat_search)
    picks = doc["summary"]["lookup"]["picks"]
    for p in picks:   # no invented constraint, no invented prediction
        assert p["constraint"] is None and p["predicted"] is None and "flat" in p["refused"]
        assert "actual" not in p
    assert len(doc["rows"]) == 2 and doc["summary"]["lookup"]["refused"] == 2   # no verify search ran
    saved = json.loads((tmp_path / "sweep" / "lookup.json").read_text())
    assert saved["picks"] == picks and len(saved["points"]) == 2
    assert len(_csv(tmp_path / "sweep" / "sweep.csv")) == 2


def test_lookup_sweep_refuses_a_target_outside_the_measured_range(tmp_path):
    doc = lookup_sweep(SearchConfig(cost_mode="expected"), opts(tmp_path), spread("params=1M:3M", 3),
                       ["params=3M", "params=9M"], verify=True, search_fn=fake_search)
    ok, far = doc["summary"]["lookup"]["picks"]
    assert ok["constraint"] == pytest.approx(2.9e6 / 1.3) and ok["actual"] == pytest.approx(3e6)
    assert far["constraint"] is None and far["predicted"] is None
    assert "outside the measured range" in far["refused"] and "actual" not in far


def test_cli_lookup_on_a_flat_curve_is_one_line_exit_2_and_keeps_the_sweep(tmp_path, capsys, monkeypatch):
    import search.run
    monkeypatch.setattr(search.run, "run_search", flat_search)
    out = tmp_path / "s"
    rc = _main(["sweep", "lookup", "--constraint", "params=0.1M", "--constraint", "params=0.2M",
                "--target", "params=2.5M", "--out", str(out), "--backend", "serial"])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwcost: error:") and "flat" in err[0], captured.err
    assert "Traceback" not in captured.err and "extrapolated" not in captured.out
    doc = json.loads((out / "sweep.json").read_text())
    assert '"predicted": 2500000' not in (out / "sweep.json").read_text()
    assert doc["searches"] == 2 and doc["summary"]["lookup"]["picks"][0]["constraint"] is None
    assert (out / "lookup.json").exists() and (out / "sweep.csv").exists()


# --- real searches ------------------------------------------------------------------


TINY = dict(space="nb201", data="synthetic", epochs=1, steps_per_epoch=2, batch_size=16, C=4, layers=3)


def test_budget_sweep_of_real_searches_gathers_their_results(tmp_path):
    doc = budget_sweep(SearchConfig(**TINY), opts(tmp_path), ["params=0.3M", "params=0.6M"])
    assert doc["failed"] == 0
    table = _csv(tmp_path / "sweep" / "sweep.csv")
    assert len(table) == len(doc["rows"]) == 2
    for row, rec in zip(table, doc["rows"]):
        result = json.loads((tmp_path / "sweep" / "runs" / row["name"] / "result.json").read_text())
        assert float(row["cost"]) == result["derived"]["params"] == rec["cost"]
        assert float(row["derived_macs"]) == result["derived"]["macs"]
        assert float(row["supernet_val_accuracy"]) == result["supernet_val_accuracy"]
        assert float(row["search_seconds"]) == result["search_seconds"]
        assert row["within_budget"] == str(result["within_budget"]["params"])
        assert float(row["budget"]) == result["budgets"]["params"]
    front = {r["name"] for r in table if r["pareto"] == "True"}
    assert front and front == set(doc["pareto"])


@pytest.mark.slow
def test_ray_backend_runs_a_sweep(tmp_path):
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    import sys
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray workers cannot import this test file
    o = SweepOptions(out=str(tmp_path / "sweep"), backend="ray", workers=2, progress=False)
    doc = budget_sweep(SearchConfig(), o, ["params=1M", "params=1.3M", "params=2M"], search_fn=fake_search)
    assert doc["backend"] == "ray"
    assert [r["status"] for r in doc["rows"]] == ["ok", "failed", "ok"]
    assert [r["cost"] for r in doc["rows"]] == [pytest.approx(0.9e6), None, pytest.approx(1.8e6)]


def test_process_backend_runs_a_sweep(tmp_path):
    o = SweepOptions(out=str(tmp_path / "sweep"), backend="process", workers=2, progress=False)
    doc = budget_sweep(SearchConfig(), o, ["params=1M", "params=1.3M"], search_fn=fake_search)
    assert [r["status"] for r in doc["rows"]] == ["ok", "failed"]
    assert doc["rows"][0]["cost"] == pytest.approx(0.9e6)


# --- CLI ----------------------------------------------------------------------------


def _main(argv):
    from hwcost import cli
    return cli.main(argv)


@pytest.mark.parametrize("argv,match", [
    (["budgets", "--budget", "params=1M", "--budget", "latency=3ms"], "a budget on latency needs its device table"),
    (["budgets", "--table", "pi=raspi4", "--range", "latency@gpu=1ms:2ms"], "--table gpu=TABLE"),
    (["budgets", "--range", "params=3M:1M"], "LOW must be below HIGH"),
    (["budgets", "--range", "params=1M:3M", "--budget", "params=2M"], "either --range or --budget for params"),
    (["lookup", "--range", "params=1M:3M", "--range", "macs=1M:3M"], "varies one search constraint"),
    (["budgets"], "give budgets"),
    (["lookup", "--constraint", "params=1M"], "at least 2"),
    (["lambda", "--budget", "params=-3M"], "NAME=VALUE"),
    (["lambda", "--budget", "params=3M", "--lambda-range", "1e-6"], "lambda-range"),
    (["budgets", "--budget", "params=1M", "--workers", "0"], "at least 1"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, match, tmp_path, capsys):
    assert _main(["sweep", *argv, "--out", str(tmp_path / "s"), "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_without_ray_the_default_backend_is_a_process_pool(tmp_path, monkeypatch):
    import search.sweep as sweep
    monkeypatch.setattr(sweep, "ray_available", lambda: False)
    s = sweep.Sweep("budgets", SearchConfig(), SweepOptions(out=str(tmp_path / "s")))
    assert s.backend_name == "process"
    with pytest.raises(HwcostError, match="Ray is not installed"):
        sweep.Sweep("budgets", SearchConfig(), SweepOptions(out=str(tmp_path / "t"), backend="ray"))


# --- budgets on two devices: a grid and a 2-D front ------------------------------


def fake_two_device_search(cfg: SearchConfig, out, resume=False, progress=False) -> dict:
    """Lands at 0.9 of the pi budget and 0.8 of the gpu budget; the accuracy depends on the pi budget only,
    so among searches with one pi budget the one with the smallest gpu budget beats the others."""
    b = {t.metric: t.value for t in (parse_term(x, "hard") for x in cfg.budgets)}
    derived = {"latency_ms@pi": 0.9 * b["latency_ms@pi"], "latency_ms@gpu": 0.8 * b["latency_ms@gpu"],
               "params": 1e6}
    result = {"derived": derived, "budgets": b, "within_budget": {m: derived[m] <= v for m, v in b.items()},
              "supernet_val_accuracy": 0.5 + 0.01 * b["latency_ms@pi"], "search_seconds": 0.01}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result))
    return result


def test_budget_sweep_over_two_devices_is_a_grid_with_a_2d_front(tmp_path):
    budgets = spread("latency@pi=10ms:30ms", 3) + ["latency@gpu=1ms", "latency@gpu=2ms"]
    doc = budget_sweep(SearchConfig(devices=["pi=raspi4", "gpu=titan_rtx_1"]), opts(tmp_path), budgets,
                       search_fn=fake_two_device_search)
    rows = doc["rows"]
    assert len(rows) == 6 and doc["summary"]["metrics"] == ["latency_ms@pi", "latency_ms@gpu"]
    grid = sorted((r["budget@latency_ms@pi"], r["budget@latency_ms@gpu"]) for r in rows)
    assert grid == sorted(itertools.product([10.0, 20.0, 30.0], [1.0, 2.0]))
    for r in rows:
        assert r["cost@latency_ms@pi"] == pytest.approx(0.9 * r["budget@latency_ms@pi"])
        assert r["cost@latency_ms@gpu"] == pytest.approx(0.8 * r["budget@latency_ms@gpu"])
        assert r["within_budget"] is True and "latency@gpu=" in r["budgets"] and "latency@pi=" in r["budgets"]
    # the front (by construction): for every pi budget, the search with the 1 ms gpu budget
    assert {(r["budget@latency_ms@pi"], r["budget@latency_ms@gpu"]) for r in rows if r["pareto"]} == {
        (10.0, 1.0), (20.0, 1.0), (30.0, 1.0)}
    table = _csv(tmp_path / "sweep" / "sweep.csv")
    assert {"cost@latency_ms@pi", "cost@latency_ms@gpu", "budget@latency_ms@pi"} <= set(table[0])
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 0
    with pytest.raises(HwcostError, match="sets the latency_ms@pi budget itself"):
        budget_sweep(SearchConfig(devices=["pi=raspi4", "gpu=titan_rtx_1"], budgets=["latency@pi=5ms"]),
                     opts(tmp_path / "again"), budgets, search_fn=fake_two_device_search)


def test_pareto_front_over_several_costs():
    costs = [(1, 5), (2, 2), (5, 1), (3, 3), (2, 2)]
    acc = [0.5, 0.5, 0.5, 0.4, 0.6]
    # (3, 3) at 0.4 is beaten by (2, 2) at 0.5; (2, 2) at 0.5 by its twin at 0.6
    assert pareto_front(costs, acc) == [0, 2, 4]
    assert pareto_front([1.0, 2.0, 3.0], [0.5, 0.4, 0.7]) == [0, 2]


@pytest.mark.slow   # ~15 s; the budget sweep of real searches runs by default
def test_cli_sweep_budgets_on_two_bundled_devices(tmp_path, capsys):
    from hwcost.cli import main
    rc = main(["sweep", "budgets", "--space", "nb201", "--data", "synthetic", "--epochs", "1",
               "--steps-per-epoch", "2", "--batch-size", "16", "--table", "pi=raspi4", "--table", "eye=eyeriss",
               "--range", "latency@pi=15ms:25ms", "--count", "2", "--budget", "latency@eye=5ms",
               "--budget", "latency@eye=7ms", "--backend", "serial", "--out", str(tmp_path / "sw")])
    out = capsys.readouterr().out
    assert rc == 0 and "4 searches (0 failed)" in out and "budget latency@eye" in out
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    from device_tables import ArchKey, bundled_table_path, load_table
    pi, eye = (load_table(bundled_table_path(n)) for n in ("raspi4", "eyeriss"))
    for r in doc["rows"]:
        arch = json.loads((tmp_path / "sw" / "runs" / r["name"] / "result.json").read_text())["arch"]
        # each search's costs are the devices' own measured latencies of its architecture
        assert r["cost@latency_ms@pi"] == pi.latency_ms(ArchKey("nb201", arch, "cifar10"))
        assert r["cost@latency_ms@eye"] == eye.latency_ms(ArchKey("nb201", arch, "cifar10"))
        assert r["within_budget"] == (r["cost@latency_ms@pi"] <= r["budget@latency_ms@pi"]
                                      and r["cost@latency_ms@eye"] <= r["budget@latency_ms@eye"])
    assert doc["pareto"]
