"""Op-level surrogates: exact on a table whose latency is a known function of MACs
(counted here in closed form, not by the code under test), persisted as data,
refusing files fitted elsewhere, and never skipping an op type they do not know."""
import json
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from costmodels.costmodel import CostModel
from costmodels.surrogate import (FAMILIES, LatencyRegressor, OpLatencySurrogate, SurrogateVersionWarning,
                                  fit_op_table, load_surrogate)
from device_tables import DeviceTable, Entry, MissingKeyError, OpKey, TableError
from spaces.errors import HwcostError

RUNTIME = {"backend": "ort-cpu", "execution_provider": "CPUExecutionProvider", "threads": 1, "batch": 1,
           "dtype": "float32"}
SHAPES = [(C, H, s) for C in (8, 16, 24, 40) for H in (8, 16) for s in (1, 2)] + [(32, 32, 1), (12, 32, 2)]


def sep_conv_macs(C: int, H: int, stride: int) -> int:
    """Two (dw 3x3, pw 1x1) blocks; only the first dw conv carries the stride (REFERENCE.md)."""
    Ho = -(-H // stride)
    return 2 * (C * 9 * Ho * Ho + C * C * Ho * Ho)


def true_latency(key: OpKey) -> float:
    if key.op == "sep_conv_3x3":
        return 0.004 + 3e-6 * sep_conv_macs(key.c_in, key.h, key.stride)
    return 0.002 + 5e-7 * key.c_in * key.h * key.w          # max_pool: proportional to the input


def synthetic_table(space="darts", runtime=RUNTIME, device="box") -> DeviceTable:
    keys = [OpKey(space, op, 1, C, C, H, H, s) for op in ("sep_conv_3x3", "max_pool_3x3") for C, H, s in SHAPES]
    entries = [Entry(k, true_latency(k), true_latency(k), true_latency(k), 9) for k in keys]
    return DeviceTable(kind="op", spaces=[space], device={"name": device}, runtime=dict(runtime),
                       entries=tuple(entries), measurement={"call_overhead_ms": 0.003}, created="2025-01-01")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    table = synthetic_table()
    path = tmp_path_factory.mktemp("sur") / "s.json"
    report = fit_op_table(table, path, seed=0)
    return table, path, report


def test_report_has_the_heldout_fields_and_is_near_exact(fitted):
    table, path, report = fitted
    for field in ("heldout_mape", "heldout_rmse_ms", "heldout_within_5", "heldout_within_10", "n_train",
                  "n_test", "per_op"):
        assert field in report
    assert report["n_test"] == 2 * 4 and report["n_train"] == len(table) - 8   # 20 % of each op type
    assert report["heldout_mape"] < 1e-6 and report["heldout_within_5"] == 1.0
    for op in ("darts/sep_conv_3x3", "darts/max_pool_3x3"):
        assert report["per_op"][op]["n_test"] == 4 and report["per_op"][op]["within_10"] == 1.0
        # latency is linear in MACs / bytes: cross-validation must pick the linear family
        assert report["per_op"][op]["family"] == "linear"


def test_cv_picks_a_family_per_op_type_from_the_training_rows():
    table = synthetic_table()
    est = OpLatencySurrogate().fit(table.keys(), [e.median_ms for e in table.entries])
    assert set(est.selected_) == {"darts/sep_conv_3x3", "darts/max_pool_3x3"}
    for t, scores in est.cv_mape_.items():
        assert set(scores) == set(FAMILIES) and est.selected_[t] == min(scores, key=scores.get)
    unseen = OpKey("darts", "sep_conv_3x3", 1, 64, 64, 8, 8, 1)   # wider than any training row
    assert est.predict_key(unseen) == pytest.approx(true_latency(unseen), rel=1e-6)


def test_json_round_trip_predicts_identically_and_holds_no_pickle(fitted):
    table, path, _ = fitted
    doc = json.loads(path.read_text())    # plain JSON: rows, families, versions
    assert doc["format"] == "hwcost-op-surrogate" and len(doc["train"]) == len(table)
    assert {"numpy", "scikit-learn", "scipy"} <= set(doc["versions"])
    a, b = load_surrogate(path, table=table), load_surrogate(path)
    keys = table.keys() + [OpKey("darts", "max_pool_3x3", 1, 48, 48, 16, 16, 1)]
    assert np.array_equal(a.predict(keys), b.predict(keys))
    assert np.allclose(a.predict(table.keys()), doc["fitted"]["train_predictions_ms"], rtol=0, atol=0)


def test_refuses_a_file_fitted_on_another_table_or_space(fitted, tmp_path):
    table, path, _ = fitted
    with pytest.raises(TableError, match="backend 'ort-cpu' vs 'torch-cpu'"):
        load_surrogate(path, table=synthetic_table(runtime={**RUNTIME, "backend": "torch-cpu"}))
    with pytest.raises(TableError, match="device 'box' vs 'pi'"):
        load_surrogate(path, table=synthetic_table(device="pi"))
    with pytest.raises(TableError, match="space"):
        load_surrogate(path, table=synthetic_table(space="sharpdarts"))
    with pytest.raises(HwcostError, match="not 'nb201'"):
        load_surrogate(path, space="nb201")


def test_refuses_other_formats_and_versions_warns_on_minor_drift(fitted, tmp_path):
    _, path, _ = fitted
    doc = json.loads(path.read_text())
    cases = [({"format": "hwcost-arch-surrogate"}, "architecture surrogate"),
             ({"schema_version": 99}, "schema_version 99"),
             ({"versions": {**doc["versions"], "scikit-learn": "0.1"}}, "another major version")]
    for change, match in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**doc, **change}))
        with pytest.raises(HwcostError, match=match):
            load_surrogate(bad)
    major = doc["versions"]["numpy"].split(".")[0]
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({**doc, "versions": {**doc["versions"], "numpy": f"{major}.9999"}}))
    with pytest.warns(SurrogateVersionWarning, match="numpy"):
        load_surrogate(drift)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(HwcostError, match="not a JSON surrogate"):
        load_surrogate(garbage)


def test_unknown_op_type_is_a_key_error_and_the_cost_model_names_the_key(fitted):
    table, path, _ = fitted
    sur = load_surrogate(path, table=table)
    key = OpKey("darts", "dil_conv_3x3", 1, 16, 16, 8, 8, 1)
    with pytest.raises(KeyError):
        sur.predict_key(key)
    with pytest.raises(MissingKeyError, match=r"darts/dil_conv_3x3\|b1\|cin16"):
        CostModel(table, sur).latency_ms(key)
    other_space = OpKey("nb201", "sep_conv_3x3", 1, 16, 16, 8, 8, 1)
    with pytest.raises(KeyError):
        sur.predict_key(other_space)
    cm = CostModel(table, sur)   # a known op type at a new shape: answered, and counted as modelled
    cm.latency_ms(OpKey("darts", "sep_conv_3x3", 1, 64, 64, 8, 8, 1))
    assert cm.sources == {"surrogate": 1}


def test_estimator_conventions():
    est = OpLatencySurrogate(family="forest", cv=3)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(HwcostError, match="not fitted"):
        est.predict_key(OpKey("darts", "none", 1, 8, 8, 8, 8, 1))
    with pytest.raises(HwcostError, match="unknown surrogate family 'trees'"):
        OpLatencySurrogate(family="trees").fit(synthetic_table().keys(), np.ones(len(synthetic_table())))
    X, y = np.arange(1, 21, dtype=float).reshape(10, 2), np.arange(1, 11, dtype=float)
    for family in FAMILIES:
        reg = LatencyRegressor(family)
        assert reg.fit(X, y) is reg and reg.predict(X).shape == (10,)
    with pytest.raises(HwcostError, match="latencies positive"):
        LatencyRegressor().fit(X, -y)


@pytest.mark.parametrize("k,n", [(15, 16), (16, 16), (0, 10), (89, 100), (23, 23), (1, 3)])
def test_share_interval_is_scipys_wilson_interval(k, n):
    """The share-within-10% interval the benchmarks print: the Wilson score interval, as scipy computes it."""
    from scipy.stats import binomtest
    from costmodels.surrogate import share_interval, within_text
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = share_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert within_text(k / n, n).startswith(f"{k / n:.0%} ({k}/{n}; 95% CI ")


def test_share_interval_refuses_impossible_counts():
    from costmodels.surrogate import share_interval
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(HwcostError, match="0 <= hits <= n"):
            share_interval(k, n)
    for c in (0.0, 1.0, 95):
        with pytest.raises(HwcostError, match=r"confidence must lie in \(0, 1\)"):
            share_interval(3, 4, c)
