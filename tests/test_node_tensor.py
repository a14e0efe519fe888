"""A search space priced by ONNX Runtime nodes: the op-cost fit of a space node table, its cost
tensor, and the search that prices its derived network by its own nodes."""
from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import numpy as np
import pytest

from costmodels.node_tensor import RECORD, fit_op_costs, record_networks, recorded_networks
from device_tables import DeviceTable, Entry, OpKey, save_table
from device_tables.errors import HwcostError
from hwcost.cli import main
from spaces import get_space, random_genotype

OPS = tuple(get_space("darts").primitives)          # none first, as the search lists them
REAL = [o for o in OPS if o != "none"]
TRUE_FIXED = 1.0


def true_cost(k: int, op: str) -> float:
    """A hand-made additive truth: each op of each cell type costs this per occurrence."""
    return 0.05 + 0.01 * (7 * k + REAL.index(op)) ** 1.5


def _key(name: str) -> OpKey:
    return OpKey("onnx", name, 1, 8, 8, 4, 4, 1)


def _counts(genotype) -> Counter:
    c = Counter({_key("Fixed"): 1})
    for k, cell in enumerate((genotype.normal, genotype.reduce)):
        for op, _ in cell:
            c[_key(f"Op{k}_{op}")] += 1
    return c


def _truth(genotype) -> float:
    return TRUE_FIXED + sum(true_cost(k, op) for k, cell in enumerate((genotype.normal, genotype.reduce))
                            for op, _ in cell)


def synthetic_table(n: int, seed: int = 0, record=None) -> DeviceTable:
    """A darts node table whose networks' node sums are exactly additive over (cell type, op)."""
    rng = random.Random(seed)
    genotypes = [random_genotype(rng, "darts") for _ in range(n)]
    keys = [(_key("Fixed"), TRUE_FIXED)] + [(_key(f"Op{k}_{o}"), true_cost(k, o)) for k in (0, 1) for o in REAL]
    entries = tuple(Entry(key, ms, ms, ms, 10) for key, ms in keys)
    rec = record if record is not None else record_networks([g.to_dict() for g in genotypes],
                                                            [_counts(g) for g in genotypes])
    return DeviceTable(kind="op", spaces=["onnx"], device={"name": "box"},
                       runtime={"backend": "ort-cpu", "threads": 1, "dtype": "float32", "batch": 1},
                       entries=entries, measurement={"per_call_overhead_ms": 0.0},
                       provenance={"space": "darts", "network": "cifar10", RECORD: rec})


def test_the_op_costs_fitted_on_node_priced_networks_recover_an_additive_truth():
    table = synthetic_table(40)
    theta, fixed, report = fit_op_costs(table, "darts", ("normal", "reduce"), OPS)
    rng = random.Random(99)
    for g in (random_genotype(rng, "darts") for _ in range(20)):        # networks the fit never saw
        pred = fixed + sum(theta[k, OPS.index(op)] for k, cell in enumerate((g.normal, g.reduce)) for op, _ in cell)
        assert pred == pytest.approx(_truth(g), rel=1e-4)
    for k in (0, 1):
        # every cell has 8 edges: the costs are fixed up to a common shift, taken so the cheapest costs 0
        diffs = [theta[k, OPS.index(o)] - theta[k, OPS.index(REAL[0])] for o in REAL]
        assert diffs == pytest.approx([true_cost(k, o) - true_cost(k, REAL[0]) for o in REAL], abs=1e-4)
        assert min(theta[k, OPS.index(o)] for o in REAL) == pytest.approx(0.0, abs=1e-6)
        assert theta[k, OPS.index("none")] == 0.0           # absent from a derived darts network
    assert report["networks"] == 40 and report["heldout_mape"] < 1e-3


def test_the_cost_tensor_of_a_node_table_prices_a_derived_network_as_the_truth(tmp_path):
    from costmodels.expected_cost import ExpectedCost, arch_weights
    from search.costs import search_cost_tensor
    path = tmp_path / "nodes.json"
    save_table(synthetic_table(40), path)
    ct, notes = search_cost_tensor("darts", "cifar10", OPS, str(path))
    assert ct.metrics[0] == "latency_ms" and notes["latency_decomposition"]["networks"] == 40
    i = ct.index("latency_ms")
    assert bool((ct.c[:, :, :, i] == ct.c[:, :1, :, i]).all())      # per (cell type, op), on every edge
    g = random_genotype(random.Random(5), "darts")
    derived = float(ExpectedCost(ct, mode="derived")(weights=arch_weights(g, OPS))[i])
    assert derived == pytest.approx(_truth(g), rel=1e-4)
    # the analytical metrics are the op table's: the same network's parameter count either way (the plain
    # tensor through search.costs' cache: a darts search earlier in this process may have built it)
    from search.costs import cached_search_cost_tensor
    ct_plain, _ = cached_search_cost_tensor("darts", "cifar10", OPS, None)
    assert torch_equal(ct.c[..., ct.index("params")], ct_plain.c[..., ct_plain.index("params")])
    with pytest.raises(HwcostError, match="keys the nodes of darts cifar10 networks"):
        search_cost_tensor("darts", "imagenet", OPS, str(path))


def torch_equal(a, b) -> bool:
    import torch
    return bool(torch.equal(a, b))


def test_a_bad_record_of_keyed_networks_is_one_clear_error():
    with pytest.raises(HwcostError, match="records no keyed networks"):
        recorded_networks(dataclasses.replace(synthetic_table(3), provenance={"space": "darts"}))
    bad = {"keys": ["onnx/Fixed|b1|cin8|cout8|h4|w4|s1"], "networks": [{"arch": {}, "nodes": [[7, 1]]}]}
    with pytest.raises(HwcostError, match="malformed provenance"):
        recorded_networks(synthetic_table(3, record=bad))
    with pytest.raises(HwcostError, match="needs at least"):
        fit_op_costs(synthetic_table(5), "darts", ("normal", "reduce"), OPS)
    with pytest.raises(HwcostError, match="not nb201"):
        fit_op_costs(synthetic_table(40), "nb201", ("cell",), OPS)


@pytest.mark.slow   # ~115 s on a 2-vCPU VM; the node cost tensor and node keys have their own default tests
def test_a_search_on_a_space_node_table_prices_its_network_by_its_nodes(tmp_path, capsys):
    """profile --space nb201 --keys nodes, calibrate, search under a budget: the derived network's
    latency is its own node price -- what predict --arch says of it from the same table -- and verify
    measures it beside that price."""
    table = tmp_path / "nodes.json"
    assert main(["profile", "--space", "nb201", "--keys", "nodes", "--random", "16", "--max-time", "0.05",
                 "--passes", "2", "--no-progress", "--out", str(table)]) == 0
    assert main(["calibrate", str(table), "--networks", "3", "--max-time", "0.3"]) == 0
    from hwcost.pipeline import random_derived_costs
    from search.costs import search_cost_tensor
    from search.supernet import SupernetConfig
    ct, _ = search_cost_tensor("nb201", "cifar10", SupernetConfig(space="nb201").ops(), str(table))
    lat = random_derived_costs(ct, 200)[:, ct.index("latency_ms")].numpy()
    budget = round(float(np.quantile(lat, 0.6)), 3)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["search", "--space", "nb201", "--table", str(table), "--budget", f"latency={budget}ms",
                 "--epochs", "1", "--verify-rounds", "0", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rounds = r["nodes"]["rounds"]
    # the network kept is the last round's when it landed in the band, else the one closest to it
    # (price_by_nodes): either way its figures are that round's, and its arch is the one reported
    kept = r["nodes"]["kept"]
    assert rounds and kept is not None and 0 <= kept < len(rounds)
    if r["nodes"]["met"]:
        assert kept == len(rounds) - 1
    assert r["derived"]["latency_ms"] == rounds[kept]["nodes_ms"]
    assert r["derived"]["latency_ms_model"] == rounds[kept]["model_ms"]
    assert rounds[kept]["arch"] == (r["arch"] if isinstance(r["arch"], str) else json.dumps(r["arch"], sort_keys=True))
    assert main(["predict", "--table", str(table), "--space", "nb201", "--arch", r["arch"], "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["keys"] == "nodes" and p["latency_ms"] == pytest.approx(r["derived"]["latency_ms"], rel=1e-9)
    assert r["within_budget"]["latency_ms"] == (r["derived"]["latency_ms"] <= budget)
    v = r["verify"]["rounds"][0]
    assert v["predicted_ms"] == r["derived"]["latency_ms"] and v["measured_ms"] > 0
    assert np.isfinite(v["table_predicted_ms"])
    # a budget sweep on the same table: every search's row carries its network's node price (nothing
    # profiled by the sweep's searches: a node the table lacks leaves the cost model's figure, said so)
    sweep = tmp_path / "sweep"
    assert main(["sweep", "budgets", "--space", "nb201", "--table", str(table), "--budget", f"latency={budget}ms",
                 "--budget", f"latency={budget * 1.3:.3f}ms", "--epochs", "1", "--backend", "serial",
                 "--out", str(sweep), "--json"]) == 0
    capsys.readouterr()
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        res = json.loads((sweep / "runs" / row["name"] / "result.json").read_text())
        assert row["cost"] == res["derived"]["latency_ms"]
        assert not (sweep / "runs" / row["name"] / "result.pending").exists()     # the rounds finished
        if res["nodes"]["stopped"] and res["nodes"]["stopped"].startswith("not priced"):
            assert "no entry" in res["nodes"]["stopped"] or "lacks" in res["nodes"]["stopped"]
            continue
        assert res["derived"]["latency_source"].startswith("the derived network's own")
        assert main(["predict", "--table", str(table), "--space", "nb201", "--arch", res["arch"], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["latency_ms"] == pytest.approx(row["cost"], rel=1e-9)


def test_skewed_random_networks_have_cells_of_few_ops(capsys):
    """--skew draws each cell's ops from its own Dirichlet mix: cells of mostly one or two ops (a
    search's kind of network), where uniform draws use most of the 7 ops; the calibration specs of a
    space table follow it, and the CLI refuses a skew that is no concentration."""
    from device_tables import bundled_table_path, load_table
    from hwcost.calibrate import network_specs

    def distinct(g):
        return [len({op for op, _ in cell}) for cell in (g.normal, g.reduce)]
    rng_u, rng_s = random.Random(1), random.Random(1)
    uniform = [d for _ in range(300) for d in distinct(random_genotype(rng_u, "darts"))]
    skewed = [d for _ in range(300) for d in distinct(random_genotype(rng_s, "darts", skew=0.2))]
    # 8 edges over 7 equally likely ops: 7 * (1 - (6/7)^8) = 4.95 distinct ops expected per cell
    assert np.mean(uniform) == pytest.approx(7 * (1 - (6 / 7) ** 8), abs=0.15)
    assert np.mean(skewed) < np.mean(uniform) - 1.5
    table = load_table(bundled_table_path("darts_ort-cpu"))
    from spaces.genotypes import genotype_from_dict
    specs = network_specs(table, 40, seed=3, skew=0.2)
    assert np.mean([d for s in specs for d in distinct(genotype_from_dict(s["genotype"]))]) < np.mean(uniform) - 1.5
    assert main(["calibrate", str(bundled_table_path("darts_ort-cpu")), "--skew", "0", "--out", "/dev/null"]) == 2
    assert "--skew must be a positive" in capsys.readouterr().err


def test_the_node_price_rounds_scale_the_fit_cumulatively_and_keep_the_closest_network(tmp_path, monkeypatch):
    """price_by_nodes with a stand-in search and node prices: each re-derivation gets the product of the
    price / model ratios so far (the table's own fit scaled afresh), and when no round lands in the band
    the network kept is the priciest one under the aimed budget."""
    from types import SimpleNamespace

    import hwcost.verify as hv
    import search.run as sr
    path = tmp_path / "nodes.json"
    save_table(synthetic_table(40), path)
    # budget 10 ms at u = 1.25: aimed at 8 ms, floor 0.85 x 10 = 8.5 ms -- an empty band, so no round lands
    # in it and the loop runs out of rounds
    prices = {"a": 6.0, "b": 7.5, "c": 9.0, "d": 7.0}
    models = {"a": 8.0, "b": 8.0, "c": 8.0, "d": 8.0}
    order = iter(["b", "c", "d"])
    scales = []

    def result_of(name):
        return {"arch": name, "derived": {"latency_ms": models[name]}, "budgets_given": {"latency_ms": 10.0},
                "confidence": {"upper_factor": 1.25, "confidence": 0.9}, "within_budget": {}}

    def fake_search(cfg, out, resume, progress, correction):
        scales.append(correction["scale"])
        return result_of(next(order))
    monkeypatch.setattr(sr, "run_search", fake_search)
    monkeypatch.setattr(hv, "_build", lambda space, network, arch, table=None: ({}, arch, (1,)))
    monkeypatch.setattr(hv, "_priced", lambda table, path, graph, shape, confidence, log, *rest: (table, SimpleNamespace(
        latency_ms=prices[graph], low_ms=None, high_ms=None, n_calls=1)))
    cfg = SimpleNamespace(table=str(path), devices=None, space="darts", network="cifar10", budget_floor=0.85)
    logs = []
    r = hv.price_by_nodes(cfg, tmp_path, result_of("a"), log=logs.append)
    assert scales == pytest.approx([6 / 8, 6 / 8 * 7.5 / 8, 6 / 8 * 7.5 / 8 * 9 / 8])
    assert [h["nodes_ms"] for h in r["nodes"]["rounds"]] == [6.0, 7.5, 9.0, 7.0]
    assert r["arch"] == "b" and r["derived"]["latency_ms"] == 7.5 and r["nodes"]["kept"] == 1
    assert r["nodes"]["met"] is False and r["within_budget"]["latency_ms"] is True
    assert json.loads((tmp_path / "result.json").read_text())["arch"] == "b"


def test_a_derived_network_with_nodes_that_cannot_be_priced_keeps_the_cost_models_figure(tmp_path, monkeypatch):
    """When the derived network has nodes the table lacks and this machine cannot profile them (a table
    of another device), the search's result stands on the cost model's figure, says why, and is written --
    at the first round and after a re-derivation alike -- instead of ending in the missing-key error."""
    from types import SimpleNamespace

    import hwcost.verify as hv
    import search.run as sr
    from device_tables import MissingKeyError
    path = tmp_path / "nodes.json"
    save_table(synthetic_table(40), path)
    prices = {"a": 6.0}                      # "b" has a node the table lacks

    def result_of(name):
        return {"arch": name, "derived": {"latency_ms": 8.0}, "budgets_given": {"latency_ms": 10.0},
                "confidence": {"upper_factor": 1.1, "confidence": 0.9}, "within_budget": {}}

    def priced(table, path, graph, shape, confidence, log, profile_missing=True):
        if graph not in prices:
            raise MissingKeyError("no entry for onnx/Conv|b1|... (profiled on another machine)")
        return table, SimpleNamespace(latency_ms=prices[graph], low_ms=None, high_ms=None, n_calls=1)
    monkeypatch.setattr(sr, "run_search", lambda cfg, out, resume, progress, correction: result_of("b"))
    monkeypatch.setattr(hv, "_build", lambda space, network, arch, table=None: ({}, arch, (1,)))
    monkeypatch.setattr(hv, "_priced", priced)
    cfg = SimpleNamespace(table=str(path), devices=None, space="darts", network="cifar10", budget_floor=0.85)
    for first, rounds in (("b", 0), ("a", 1)):
        logs = []
        r = hv.price_by_nodes(cfg, tmp_path, result_of(first), log=logs.append)
        assert r["arch"] == "b" and r["derived"]["latency_ms"] == 8.0       # the cost model's figure
        assert "latency_ms_model" not in r["derived"]
        assert len(r["nodes"]["rounds"]) == rounds and r["nodes"]["kept"] is None
        assert "not priced by its nodes" in r["nodes"]["stopped"] and "another machine" in r["nodes"]["stopped"]
        assert any("the cost model's figure stands" in line for line in logs)
        assert json.loads((tmp_path / "result.json").read_text())["arch"] == "b"
