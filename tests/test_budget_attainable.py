"""A budget below the cheapest network the space can derive stops the search before training,
with the attainable range; a budget just above it is searched (issue 14.3)."""
import itertools
import json
import re

import pytest
import torch

from costmodels.expected_cost import ExpectedCost, arch_weights
from hwcost.cli import main
from search.costs import cached_search_cost_tensor, enumerate_nb201_costs
from search.derive import derived_costs
from search.objective import attainable_range, check_attainable, parse_term
from search.run import SearchConfig, SearchRun, run_search
from spaces import Genotype, HwcostError, Nb201NetConfig, build_network, get_space

TINY = dict(space="nb201", data="synthetic", epochs=1, steps_per_epoch=2, batch_size=16, C=4, layers=3, threads=1)
CLI = ["--space", "nb201", "--data", "synthetic", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
       "--C", "4", "--layers", "3", "--threads", "1"]


def nb201_params(op: str) -> int:
    from costmodels.analytical import count_params
    return count_params(build_network(Nb201NetConfig(f"|{op}~0|+|{op}~0|{op}~1|+|{op}~0|{op}~1|{op}~2|")))


def nb201_tensor(table=None):
    ops = tuple(get_space("nb201").primitives)
    return cached_search_cost_tensor("nb201", "cifar10", ops, table, None)[0]


def test_nb201_params_range_is_that_of_the_emptiest_and_fullest_cells():
    ct = nb201_tensor()
    lo, hi = attainable_range(ExpectedCost(ct))["params"]
    assert lo == pytest.approx(nb201_params("none"), rel=1e-12)
    assert hi == pytest.approx(nb201_params("nor_conv_3x3"), rel=1e-12)
    exact = attainable_range(ExpectedCost(ct), enumerate_nb201_costs(None, ct))   # every cell, enumerated
    for m, (a, b) in exact.items():
        assert (a, b) == pytest.approx(attainable_range(ExpectedCost(ct))[m], rel=1e-12), m


def test_unattainable_budget_stops_before_training_with_the_range(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["search", *CLI, "--budget", "params=1000", "--budget", "macs=1G", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hwcost: error: budget params=1k is below the cheapest network")
    assert err.count("\n") == 1 and "Traceback" not in err
    # the range of every budgeted metric, as budgets are written
    assert re.search(r"attainable: params \d[\d.]*k … \d[\d.]*M; macs \d[\d.]*M … \d[\d.]*M", err), err
    assert not out.exists()                      # nothing half-made, no training


def test_the_minimum_shown_is_attainable_and_a_budget_just_below_is_not(tmp_path, capsys):
    lo = attainable_range(ExpectedCost(nb201_tensor()))["params"][0]
    with pytest.raises(HwcostError, match="below the cheapest"):
        SearchRun(SearchConfig(budgets=[f"params={lo * (1 - 1e-6)}"], **TINY), tmp_path / "below")
    # the error's own minimum, copied into the budget, is searched and met
    assert main(["search", *CLI, "--budget", "params=1000", "--out", str(tmp_path / "x")]) == 2
    shown = re.search(r"attainable: params (\S+) …", capsys.readouterr().err).group(1)
    assert lo <= parse_term(f"params={shown}", "hard").value <= lo * 1.001
    r = run_search(SearchConfig(budgets=[f"params={shown}"], **TINY), tmp_path / "shown", progress=False)
    assert r["within_budget"] == {"params": True} and r["derived"]["params"] == pytest.approx(lo, rel=1e-12)
    assert r["attainable"]["params"][0] == pytest.approx(lo, rel=1e-12)


def test_attainable_but_missed_budget_still_reports_not_met(tmp_path, capsys, monkeypatch):
    # A search that ends over an attainable budget (here: derivation without its budget repair, on
    # one epoch's alphas) runs to the end and says so; it is not refused.
    monkeypatch.setattr("search.run.constrained_derive", lambda view, expected, objective, ops, **kw: {
        "arch": expected.derive(view.alphas, view.betas), "repaired": 0, "violation": 1.0})
    lo = attainable_range(ExpectedCost(nb201_tensor()))["params"][0]
    code = main(["search", *CLI, "--budget", f"params={lo * 1.01:.0f}", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "params:" in out and "NOT met" in out
    assert json.loads((tmp_path / "r" / "result.json").read_text())["within_budget"] == {"params": False}


def test_arch_level_table_range_is_its_measured_extremes(tmp_path):
    ct = nb201_tensor("nb201_raspi4")
    _, costs = enumerate_nb201_costs("nb201_raspi4", ct)
    lat = costs[:, ct.index("latency_ms")]
    lo, hi = attainable_range(ExpectedCost(ct), enumerate_nb201_costs("nb201_raspi4", ct))["latency_ms"]
    assert (lo, hi) == (float(lat[torch.isfinite(lat)].min()), float(lat[torch.isfinite(lat)].max()))
    with pytest.raises(HwcostError, match=r"latency=.*below the cheapest.*attainable: latency"):
        SearchRun(SearchConfig(table="nb201_raspi4", budgets=[f"latency={lo * 0.99}ms"], **TINY), tmp_path / "r")


def cheapest_genotype(ct, metric: str) -> Genotype:
    """By brute force: per cell type and node, every pair of incoming edges with each edge's cheapest
    non-none op (costs add up over the chosen edges)."""
    i, ops = ct.index(metric), ct.ops
    cells = []
    for k in range(len(ct.cell_types)):
        cell = []
        for node in sorted({to for to, _ in ct.edges}):
            edges = [e for e, (to, _) in enumerate(ct.edges) if to == node]
            best = {e: min((float(ct.c[k, e, o, i]), o) for o, name in enumerate(ops) if name != "none")
                    for e in edges}
            pair = min(itertools.combinations(edges, 2), key=lambda p: best[p[0]][0] + best[p[1]][0])
            cell += [(ops[best[e][1]], ct.edges[e][1]) for e in pair]
        cells.append(tuple(cell))
    return Genotype(cells[0], (2, 3, 4, 5), cells[1], (2, 3, 4, 5))


@pytest.mark.parametrize("table", ["darts_torch-cpu", "darts_ort-cpu"])
def test_darts_range_with_a_latency_table_is_the_derived_networks_cost(tmp_path, table):
    """The darts tensor with an op-level table carries the search's overhead handling in its fixed
    part: the minimum is the derived cheapest network's cost, as the search reports it, and random
    derived networks (the demo's budgets are their quantiles) lie inside the range. On ONNX Runtime a
    repeated parameter-free op runs once: the latency minimum is at most the additive cheapest network's
    (tests/test_cse_merges.py checks it exactly against every network of a smaller space)."""
    from hwcost.pipeline import random_derived_costs
    from shared_tensors import darts_table_tensor
    ops = tuple(get_space("darts").primitives)
    ct, notes = darts_table_tensor(table)       # built once per process (tests/test_search_costs.py reads it too)
    ec = ExpectedCost(ct, mode="derived")
    rng = attainable_range(ec)
    for metric in ("latency_ms", "params"):
        g = cheapest_genotype(ct, metric)
        got = derived_costs("darts", "cifar10", g, ct, ec, None, table)[metric]   # built network, exact counts
        assert float(ec(weights=arch_weights(g, ops))[ct.index(metric)]) == pytest.approx(got, rel=1e-9)
        if metric == "latency_ms" and ct.merge is not None:
            assert rng[metric][0] < got
        else:
            assert got == pytest.approx(rng[metric][0], rel=1e-9), metric
    rand = random_derived_costs(ct, n=200, seed=0)
    for i, m in enumerate(ct.metrics):
        assert rng[m][0] - 1e-9 * abs(rng[m][0]) <= float(rand[:, i].min())
        assert float(rand[:, i].max()) <= rng[m][1] + 1e-9 * abs(rng[m][1])
    lo = rng["latency_ms"][0]
    terms = [parse_term(f"latency={lo * (1 + 1e-6)}ms", "hard")]
    check_attainable(terms, rng)                                  # just above the minimum: searched
    with pytest.raises(HwcostError, match="below the cheapest"):
        check_attainable([parse_term(f"latency={lo * (1 - 1e-6)}ms", "hard")], rng)
