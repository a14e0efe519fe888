"""NB201 architecture features and surrogates, checked against hand-worked cells,
the NAS-Bench-201 paper's published MAC/param range, synthetic devices with a
known cost model, and the real raspi4 table (rank quality, fixed seed)."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from costmodels.arch_features import (featurize, feature_names, longest_live_path, n_adds,
                                      network_macs, network_params, op_counts, table_cost)
from costmodels.arch_surrogate import (ArchLatencySurrogate, SurrogateVersionWarning,
                                       evaluate_holdout, fit_holdout)
from spaces.errors import HwcostError
from spaces.nb201_arch import NB201_OPS, Nb201Arch, all_archs


ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ONE_CONV3 = "|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"
# node 1 = conv3(x), node 2 = conv1(x): both dead (nothing leaves them); output = skip(x)
DEAD_CONVS = "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|none~2|"
# node 1 has no input (a zero tensor); the conv3 reading it feeds the output but is not live
ZERO_SOURCE = "|none~0|+|skip_connect~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def counts(**kw):
    return np.array([kw.get(op, 0) for op in ("none", "skip", "conv1", "conv3", "pool")], float)


def arch(s):
    return Nb201Arch.parse(s)


# ------------------------------------------------------------------ features

def test_all_none_cell_has_no_live_or_feeding_ops():
    a = arch(ALL_NONE)
    assert op_counts(a, "live").sum() == 0
    assert op_counts(a, "feeding")[1:].sum() == 0
    assert longest_live_path(a) == 0
    pruned = featurize([ALL_NONE], "pruned")[0]
    assert dict(zip(feature_names("pruned"), pruned))["disconnected"] == 1
    assert pruned[:-1].sum() == 0  # a cell that folds to a constant executes nothing


def test_one_conv_cell():
    a = arch(ONE_CONV3)
    np.testing.assert_array_equal(op_counts(a, "live"), counts(conv3=1))
    # nodes 1 and 2 reach the output through nothing: only node 3's three inputs feed it
    np.testing.assert_array_equal(op_counts(a, "feeding"), counts(none=2, conv3=1))
    np.testing.assert_array_equal(op_counts(a, "all"), counts(none=5, conv3=1))
    assert longest_live_path(a) == 1


def test_dead_edges_count_only_for_the_eager_edge_set():
    a = arch(DEAD_CONVS)
    np.testing.assert_array_equal(op_counts(a, "live"), counts(skip=1))
    np.testing.assert_array_equal(op_counts(a, "feeding"), counts(none=2, skip=1))
    np.testing.assert_array_equal(op_counts(a, "all"), counts(none=3, skip=1, conv1=1, conv3=1))
    # 15 cells, C^2 H^2 = 16^2 32^2 = 32^2 16^2 = 64^2 8^2 = 262,144 per stage; conv3 9x that
    base = 7_783_040
    assert network_macs(a, "all") == base + 5 * 3 * (9 + 1) * 262_144
    assert network_macs(a, "live") == base


def test_zero_source_edge_feeds_the_output_but_is_not_live():
    a = arch(ZERO_SOURCE)
    assert op_counts(a, "live")[NB201_OPS.index("nor_conv_3x3")] == 0
    np.testing.assert_array_equal(op_counts(a, "feeding"), counts(none=2, skip=3, conv3=1))
    assert n_adds(a, "all") == 2 and n_adds(a, "live") == 1  # node 3 sums 3 inputs, 2 of them live


def test_graph_statistics_of_the_full_conv_cell():
    a = arch(ALL_CONV3)
    assert n_adds(a) == 1 + 2
    assert longest_live_path(a) == 3
    assert longest_live_path(arch(DEAD_CONVS), ("nor_conv_3x3", "nor_conv_1x1")) == 0


def test_network_macs_and_params_match_the_nas_bench_201_range():
    # NAS-Bench-201 (Dong & Yang 2020), CIFAR-10: 7.78-220.11 MFLOPs, 0.073-1.532 M params
    assert network_macs(arch(ALL_NONE)) == 7_783_040
    assert network_params(arch(ALL_NONE)) == 73_306
    assert network_macs(arch(ALL_CONV3)) == 220_119_680
    assert network_params(arch(ALL_CONV3)) == 1_531_546
    # conv3 params per edge: 9C^2 + 2C (BN) at C = 16, 32, 64; 5 cells per stage
    assert network_params(arch(ONE_CONV3)) == 73_306 + 5 * (2336 + 9280 + 36992)


def test_prior_feature_is_the_table_summed_over_executed_edges():
    table = {(op, c, hw): (1.0 if op == "nor_conv_3x3" else 0.25 if op == "avg_pool_3x3" else 0.0)
             for c, hw in ((16, 32), (32, 16), (64, 8)) for op in NB201_OPS}
    # nodes 1 (pool) and 2 (conv) are dead: only none edges leave them
    s = "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"
    cost_all, cost_feeding, disconnected = featurize([s], "prior", op_cost=table)[0]
    assert cost_all == pytest.approx(15 * (2 * 1.0 + 0.25))      # 15 cells, every edge
    assert cost_feeding == pytest.approx(15 * 1.0)               # only the conv into node 3
    assert disconnected == 0
    assert table_cost(arch(s), table, "all") == pytest.approx(cost_all)
    with pytest.raises(HwcostError, match="no entry"):
        featurize([s], "prior", op_cost={("nor_conv_3x3", 16, 32): 1.0})


# ----------------------------------------------------- surrogate: known optimum

ARCHS = [a.to_str() for a in all_archs()]


def synthetic(costs, edges, n=60, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ARCHS), n, replace=False)
    archs = [ARCHS[i] for i in idx]
    feats = featurize(archs, edges)[:, :5]
    return archs, 2.0 + feats @ costs


@pytest.mark.parametrize("edges", ["present", "pruned"])
def test_auto_finds_which_edges_the_synthetic_device_executes(edges):
    costs = np.array([0.1, 0.0, 1.0, 5.0, 0.7])  # none, skip, conv1, conv3, pool (ms)
    archs, y = synthetic(costs, edges)
    m = ArchLatencySurrogate().fit(archs, y)
    assert m.selected_ == {"features": edges, "model": "nnls"}
    test, y_test = synthetic(costs, edges, n=300, seed=1)
    np.testing.assert_allclose(m.predict(test), y_test, rtol=1e-6, atol=1e-6)


def test_an_exact_op_table_fits_from_ten_rows():
    table = {(op, c, hw): {"nor_conv_3x3": 0.3, "nor_conv_1x1": 0.05, "avg_pool_3x3": 0.04}.get(op, 0.0)
             * (1 + hw / 32) for c, hw in ((16, 32), (32, 16), (64, 8)) for op in NB201_OPS}
    rng = np.random.default_rng(3)
    # ten rows, three of which tell an eager device from one that drops dead edges
    archs = [DEAD_CONVS, ONE_CONV3, ZERO_SOURCE] + [ARCHS[i] for i in rng.choice(len(ARCHS), 207, replace=False)]
    y = 1.5 + featurize(archs, "prior_pruned", op_cost=table)[:, 0]   # a device that drops dead edges
    m = ArchLatencySurrogate(op_cost=lambda op, c, hw: table[(op, c, hw)]).fit(archs[:10], y[:10])
    assert m.selected_ == {"features": "prior_pruned", "model": "nnls"}
    np.testing.assert_allclose(m.predict(archs[10:]), y[10:], rtol=1e-6)


# ---------------------------------------------------------------- save / load

@pytest.fixture(scope="module")
def fitted():
    archs, y = synthetic(np.array([0.1, 0.0, 1.0, 5.0, 0.7]), "pruned", n=40)
    y = y + np.random.default_rng(0).normal(0, 0.3, len(y))
    return ArchLatencySurrogate().fit(archs, y, table={"name": "synthetic", "device": "toy"})


def test_json_round_trip_predicts_identically(fitted, tmp_path):
    path = tmp_path / "s.json"
    fitted.save(path)
    doc = json.loads(path.read_text())
    assert doc["table"] == {"name": "synthetic", "device": "toy"}
    assert len(doc["train"]["archs"]) == len(doc["train"]["latency_ms"]) == 40
    assert {"numpy", "scikit-learn", "scipy"} <= set(doc["versions"])
    loaded = ArchLatencySurrogate.load(path)
    assert loaded.get_params() == fitted.get_params() and loaded.selected_ == fitted.selected_
    np.testing.assert_array_equal(loaded.predict(ARCHS[:2000]), fitted.predict(ARCHS[:2000]))


def test_op_cost_callable_is_saved_as_its_values():
    archs, y = synthetic(np.array([0.1, 0.0, 1.0, 5.0, 0.7]), "present", n=30)
    m = ArchLatencySurrogate(features="prior", model="nnls",
                             op_cost=lambda op, c, hw: float(len(op) * c) / hw).fit(archs, y)
    again = ArchLatencySurrogate.from_json(m.to_json())
    np.testing.assert_array_equal(again.predict(ARCHS[:500]), m.predict(ARCHS[:500]))


def test_other_library_versions_warn(fitted):
    # one version policy for every surrogate (costmodels.persistence): another minor version warns,
    # another major one (scikit-learn 0.24.2 against 1.x) is refused -- refit the file
    doc = json.loads(fitted.to_json())
    other_minor = doc["versions"]["scikit-learn"].split(".")[0] + ".9999.1"
    doc["versions"]["scikit-learn"] = other_minor
    with pytest.warns(SurrogateVersionWarning, match=f"scikit-learn {other_minor}"):
        ArchLatencySurrogate.from_json(json.dumps(doc))
    doc["versions"]["scikit-learn"] = "0.24.2"
    with pytest.raises(HwcostError, match="scikit-learn 0.24.2.*another major version"):
        ArchLatencySurrogate.from_json(json.dumps(doc))


def test_same_versions_load_silently(fitted):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ArchLatencySurrogate.from_json(fitted.to_json())


def test_is_a_scikit_learn_estimator(fitted):
    c = clone(fitted)
    assert c.get_params() == {"features": "structural", "model": "auto", "op_cost": None}
    assert not hasattr(c, "estimator_")


# ------------------------------------------------------------------ bad input

def test_bad_input_raises_clear_errors(fitted, tmp_path):
    with pytest.raises(HwcostError, match="unknown NB201 op 'conv_5x5'"):
        fitted.predict(["|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|"])
    with pytest.raises(ValueError, match="3 architectures but 2 latencies"):
        ArchLatencySurrogate().fit(ARCHS[:3], [1.0, 2.0])
    with pytest.raises(HwcostError, match="non-negative"):
        ArchLatencySurrogate().fit(ARCHS[:5], [1.0, 2.0, -1.0, 3.0, 4.0])
    with pytest.raises(HwcostError, match="unknown feature set 'graphy'"):
        ArchLatencySurrogate(features="graphy").fit(ARCHS[:5], np.ones(5))
    with pytest.raises(HwcostError, match="unknown model 'svm'"):
        ArchLatencySurrogate(model="svm").fit(ARCHS[:5], np.ones(5))
    with pytest.raises(HwcostError, match="not fitted"):
        ArchLatencySurrogate().predict(ARCHS[:1])
    with pytest.raises(HwcostError, match="single string"):
        ArchLatencySurrogate().fit(ARCHS[0], [1.0])
    with pytest.raises(HwcostError, match="--samples"):
        evaluate_holdout(ARCHS[:100], np.ones(100), 99, seed=0)
    doc = json.loads(fitted.to_json())
    del doc["train"]["latency_ms"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(HwcostError, match=r"bad.json: missing field train.'latency_ms'"):
        ArchLatencySurrogate.load(bad)
    bad.write_text("\x80not json")
    with pytest.raises(HwcostError, match="not a JSON surrogate"):
        ArchLatencySurrogate.load(bad)


# ------------------------------------------------------------ the real table

@pytest.fixture(scope="module")
def raspi4():
    """The bundled Raspberry Pi 4 table (HW-NAS-Bench via HELP), always in the repository."""
    from device_tables import load_bundled
    table = load_bundled("nb201_raspi4")
    keys = table.keys()
    return [k.arch for k in keys], np.array([table.get(k).median_ms for k in keys])


def test_beats_one_hot_baseline_on_raspi4_from_50_rows(raspi4):
    archs, y = raspi4
    base = evaluate_holdout(archs, y, 50, seed=0, features="onehot", model="ridge")
    est, ours = fit_holdout(archs, y, 50, seed=0)
    assert ours["n_train"] == 50 and ours["n_test"] == len(archs) - 50
    assert ours["spearman"] > base["spearman"] + 0.03
    assert ours["spearman"] >= 0.95 and ours["kendall"] > base["kendall"]
    # the Pi's compiler drops edges that cannot reach the output; the rows say so
    assert est.selected_["features"] in ("pruned", "counts", "structural")
