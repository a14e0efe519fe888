"""The in-context latency model and ``hwcost calibrate`` (costmodels.incontext, hwcost.calibrate)."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from costmodels.incontext import InContextModel, Sample, fit_in_context, model_of, op_group
from device_tables import DeviceTable, OpKey, TableError, load_table, save_table
from device_tables.calibration import check_calibration
from device_tables.table import now_iso
from hwcost.calibrate import network_specs
from hwcost.cli import main
from profilers.environment import device_info
from spaces.errors import HwcostError

GROUPS = ("conv", "pool", "skip", "fixed")
TRUE = {"conv": 0.8, "pool": 1.3, "skip": 0.5, "fixed": 1.0}
PER_CALL, BETA = 0.003, 0.0005


def _net(rng: np.random.Generator, noise: float, name: str = "n") -> Sample:
    """A network whose measured time is the in-context law with known factors, times noise."""
    feats = {"conv": rng.uniform(2, 12), "pool": rng.uniform(0.1, 2), "skip": rng.uniform(0, 1), "fixed": 1.5}
    n_ops = int(rng.integers(150, 320))
    truth = sum(TRUE[g] * x for g, x in feats.items()) - (n_ops - 1) * PER_CALL + BETA * n_ops
    return Sample(name, feats, n_ops, truth * (1 + rng.normal(0, noise)))


def test_fit_recovers_known_factors_without_noise():
    rng = np.random.default_rng(0)
    samples = [_net(rng, 0.0, f"n{i}") for i in range(12)]
    m = fit_in_context(samples, PER_CALL)
    for g in GROUPS:
        assert m.factor(g) == pytest.approx(TRUE[g], rel=2e-3)
    assert m.per_op_ms == pytest.approx(BETA, abs=2e-5)
    assert max(abs(r) for r in m.loo) < 1e-3


def test_intervals_cover_at_their_stated_rate_on_held_out_networks():
    """Fit on 10 networks, score 400 others from the same law: the 90 % interval holds ~90 %."""
    cover, upper = [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        m = fit_in_context([_net(rng, 0.03, f"c{i}") for i in range(10)], PER_CALL)
        held = [_net(rng, 0.03) for _ in range(400)]
        pred = [m.predict(s.features, s.n_ops) for s in held]
        cover += [lo <= s.measured_ms <= hi for s, p in zip(held, pred) for lo, hi in [m.interval(p, 0.9)]]
        upper += [s.measured_ms <= p * m.upper_factor(0.9) for s, p in zip(held, pred)]
    assert 0.84 <= np.mean(cover) <= 0.96
    assert 0.84 <= np.mean(upper) <= 0.96
    # and a narrower stated rate covers less
    rng = np.random.default_rng(99)
    m = fit_in_context([_net(rng, 0.03, f"c{i}") for i in range(10)], PER_CALL)
    lo5, hi5 = m.interval(10.0, 0.5)
    lo9, hi9 = m.interval(10.0, 0.9)
    assert lo9 < lo5 < hi5 < hi9


def _law(factors: dict, beta: float, rng, noise: float, n: int) -> list[Sample]:
    out = []
    for i in range(n):
        feats = {"conv": rng.uniform(2, 12), "pool": rng.uniform(0.1, 2), "skip": rng.uniform(0, 1)}
        n_ops = int(rng.integers(150, 320))
        t = sum(factors[g] * x for g, x in feats.items()) - (n_ops - 1) * PER_CALL + beta * n_ops
        out.append(Sample(f"n{i}", feats, n_ops, t * (1 + rng.normal(0, noise))))
    return out


@pytest.mark.parametrize("factors,beta,want", [
    ({"conv": 1.0, "pool": 1.0, "skip": 1.0}, 0.0, "sum"),      # networks are the sum of their ops
    ({"conv": 1.2, "pool": 1.2, "skip": 1.2}, 0.001, "scale"),  # one common in-context factor
    ({"conv": 0.8, "pool": 1.6, "skip": 0.4}, 0.0005, "groups"),
])
def test_the_structure_is_the_one_the_networks_follow(factors, beta, want):
    """Leave-one-out picks nothing fitted for networks that are the plain sum (1 % noise), one factor
    when every group shares it, a factor per group when they differ -- and the chosen model predicts
    held-out networks of the same law no worse than the plain sum does."""
    rng = np.random.default_rng(3)
    m = fit_in_context(_law(factors, beta, rng, 0.01, 10), PER_CALL)
    assert m.structure == want
    if want == "scale":
        assert len(set(m.factors.values())) == 1 and m.factor("conv") == pytest.approx(1.2, rel=0.03)
    held = _law(factors, beta, rng, 0.01, 200)
    plain = fit_in_context(_law(factors, beta, np.random.default_rng(3), 0.01, 10), PER_CALL, structures=("sum",))
    err = lambda model: np.mean([abs(model.predict(s.features, s.n_ops) / s.measured_ms - 1) for s in held])  # noqa: E731
    assert err(m) <= err(plain) * 1.05
    m.created, m.backend = now_iso(), "ort-cpu"
    assert InContextModel.from_json(json.loads(json.dumps(m.to_json()))).structure == want
    with pytest.raises(HwcostError, match="unknown in-context structure"):
        fit_in_context(_law(factors, beta, rng, 0.01, 4), PER_CALL, structures=("per-layer",))


def test_unseen_group_takes_the_time_weighted_mean_factor():
    rng = np.random.default_rng(1)
    samples = [_net(rng, 0.0, f"n{i}") for i in range(8)]
    m = fit_in_context(samples, PER_CALL)
    tot = {g: sum(s.features[g] for s in samples) for g in GROUPS}
    want = sum(m.factor(g) * tot[g] for g in GROUPS) / sum(tot.values())
    assert m.factor("never_seen") == pytest.approx(want)


def test_fit_needs_two_networks():
    with pytest.raises(HwcostError, match="at least 2"):
        fit_in_context([_net(np.random.default_rng(0), 0.0)])


def test_op_groups_of_model_layers():
    conv = lambda **kw: OpKey("torch", "Conv2d", 1, 32, 32, 8, 8, 1, tuple(sorted(kw.items())))  # noqa: E731
    assert op_group(conv(groups=32, kernel=3)) == "conv_dw"
    assert op_group(conv(groups=1, kernel=1)) == "conv_1x1"
    assert op_group(conv(groups=1, kernel=3)) == "conv_kxk"
    assert op_group(conv(groups=4, kernel=3)) == "conv_grouped"
    assert op_group(OpKey("torch", "Hardswish", 1, 8, 8, 4, 4, 1)) == "activation"
    assert op_group(OpKey("darts", "sep_conv_3x3", 1, 8, 8, 4, 4, 1)) == "sep_conv_3x3"


def test_op_groups_of_onnx_nodes_are_the_layer_kinds():
    """A node of ONNX Runtime's optimised graph falls in the same kinds as a PyTorch layer (so the
    in-context model of a node table has few groups), its domain stripped."""
    conv = lambda op, **kw: OpKey("onnx", op, 1, 32, 32, 8, 8, 1, tuple(sorted(kw.items())))  # noqa: E731
    assert op_group(conv("com.microsoft.nchwc.Conv", groups=32, kernel=3)) == "conv_dw"
    assert op_group(conv("com.microsoft.FusedConv", kernel=1)) == "conv_1x1"
    assert op_group(conv("Conv", kernel=3)) == "conv_kxk"
    for op, kind in (("com.microsoft.nchwc.ReorderInput", "layout"), ("Gemm", "linear"), ("HardSigmoid", "activation"),
                     ("com.microsoft.nchwc.GlobalAveragePool", "pool"), ("Mul", "elementwise"),
                     ("BatchNormalization", "norm"), ("NonMaxSuppression", "other")):
        assert op_group(OpKey("onnx", op, 1, 8, 8, 4, 4, 1)) == kind


# ---------------------------------------------------------------------------------------------
# The table field


def _calibrated_table(tmp_path) -> DeviceTable:
    t = load_table(_shipped("nb201_ort-cpu.json"))
    rng = np.random.default_rng(0)
    samples = [_net(rng, 0.01, f"n{i}") for i in range(5)]
    m = fit_in_context(samples, 0.002, backend="ort-cpu", host={"cpu": "x"}, created=now_iso())
    return dataclasses.replace(t, calibration=m.to_json())


def _shipped(name):
    from device_tables import DATA_DIR
    return DATA_DIR / name


def test_calibrated_table_round_trips_and_validates(tmp_path):
    t = _calibrated_table(tmp_path)
    save_table(t, tmp_path / "t.json")
    back = load_table(tmp_path / "t.json")
    assert back == t and back.calibration == t.calibration
    m1, m2 = model_of(t), model_of(back)
    f = {"conv": 3.0, "pool": 1.0}
    assert m1.predict(f, 200) == m2.predict(f, 200)
    assert main(["table", "validate", str(tmp_path / "t.json")]) == 0


@pytest.mark.parametrize("field,value,match", [
    ("factors", {"conv": -1.0}, "factors.conv"),
    ("networks", [], "networks"),
    ("model", "other/9", "model"),
    ("residuals", {"n": 1, "mean": 0, "std": 0, "loo": [0]}, "residuals.n"),
])
def test_malformed_calibration_is_one_clear_error(tmp_path, field, value, match, capsys):
    t = _calibrated_table(tmp_path)
    doc = json.loads(t.to_json_text())
    doc["calibration"][field] = value
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(TableError, match=match):
        load_table(tmp_path / "bad.json")
    assert main(["table", "validate", str(tmp_path / "bad.json")]) == 2
    assert "calibration" in capsys.readouterr().err


def test_calibration_json_checks_itself():
    with pytest.raises(TableError, match="missing field"):
        check_calibration({"model": "hwcost.in_context/1"})


# ---------------------------------------------------------------------------------------------
# Calibration networks, the CLI


def test_calibration_never_sees_the_scored_networks():
    t = load_table(_shipped("darts_ort-cpu.json"))
    first = network_specs(t, 6, seed=3)
    again = network_specs(t, 6, seed=3, exclude=first[:4])
    assert not {json.dumps(s, sort_keys=True) for s in again} & {json.dumps(s, sort_keys=True) for s in first[:4]}
    assert len(again) == 6 and all(s["network"] == "cifar10" for s in again)


def test_calibration_networks_of_a_layer_table_are_other_models():
    t = DeviceTable("op", ["torch"], {"name": "x"}, {"backend": "ort-cpu"},
                    provenance={"model": "torchvision:resnet18", "input": [1, 3, 64, 64]})
    specs = network_specs(t, 3, models=["torchvision:resnet18", "torchvision:alexnet", "torchvision:vgg11",
                                        "torchvision:googlenet"])
    assert [s["model"] for s in specs] == ["torchvision:alexnet", "torchvision:vgg11", "torchvision:googlenet"]
    assert all(s["input"] == [1, 3, 64, 64] for s in specs)


def _here(tmp_path, name="nb201_ort-cpu.json"):
    """The shipped nb201 table as if profiled on this host (calibration refuses another CPU)."""
    t = load_table(_shipped(name))
    t = dataclasses.replace(t, device=device_info())
    save_table(t, tmp_path / name)
    return tmp_path / name


def test_cli_calibrate_measures_fits_and_writes(tmp_path, capsys):
    path = _here(tmp_path)
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(path), "--networks", "3", "--max-time", "0.1", "--out", str(out)]) == 0
    t = load_table(out)
    m = model_of(t)
    assert len(m.samples) == 3 and all(s.measured_ms > 0 for s in m.samples)
    assert load_table(path).calibration is None           # --out leaves the input alone
    # predict now uses it and carries an interval
    capsys.readouterr()
    assert main(["predict", "--table", str(out), "--space", "nb201", "--arch", m.samples[0].name, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["calibrated"] and d["latency_ms"] == pytest.approx(m.fit_ms[0], rel=1e-9)


def test_cli_predict_reports_interval_for_calibrated_table(tmp_path, capsys):
    t = _calibrated_table(tmp_path)
    save_table(t, tmp_path / "t.json")
    arch = "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
    assert main(["predict", "--table", str(tmp_path / "t.json"), "--space", "nb201", "--arch", arch, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["calibrated"] and d["low_ms"] < d["latency_ms"] < d["high_ms"] and d["confidence"] == 0.9
    assert main(["predict", "--table", str(tmp_path / "t.json"), "--space", "nb201", "--arch", arch, "--json",
                 "--confidence", "0.5"]) == 0
    d5 = json.loads(capsys.readouterr().out)
    assert d["low_ms"] < d5["low_ms"] < d5["high_ms"] < d["high_ms"]


def test_cli_predict_confidence_needs_a_calibrated_table(capsys):
    assert main(["predict", "--table", "nb201_ort-cpu", "--space", "nb201", "--confidence", "0.9",
                 "--arch", "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"]) == 2
    assert "hwcost calibrate" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--networks", "1"], "at least 2"),
    (["--backend", "torch-cpu"], "profiled on backend ort-cpu"),
])
def test_cli_calibrate_bad_input(tmp_path, capsys, argv, match):
    path = _here(tmp_path)
    before = path.read_bytes()
    assert main(["calibrate", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_cli_calibrate_refuses_a_table_of_another_cpu(tmp_path, capsys):
    t = load_table(_shipped("nb201_ort-cpu.json"))
    t = dataclasses.replace(t, device={**t.device, "cpu": "Some Other CPU 9000"})
    save_table(t, tmp_path / "other.json")
    assert main(["calibrate", str(tmp_path / "other.json")]) == 2
    assert "Some Other CPU 9000" in capsys.readouterr().err


def test_search_cost_tensor_uses_the_calibration_as_predict_does(tmp_path):
    from costmodels.predict import predict_nb201
    from search.costs import derived_latency, search_cost_tensor
    from spaces import NB201_OPS
    t = _calibrated_table(tmp_path)
    # a model fitted on real nb201 groups, so every factor matters
    groups = ["nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "stem", "resblock",
              "classifier", "node_sum"]
    rng = random.Random(0)
    samples = [Sample(f"n{i}", {g: rng.uniform(0.01, 1.0) for g in groups}, 60, rng.uniform(2, 4)) for i in range(6)]
    m = fit_in_context(samples, 0.002, backend="ort-cpu", host={"cpu": "x"}, created=now_iso())
    t = dataclasses.replace(t, calibration=m.to_json())
    save_table(t, tmp_path / "t.json")
    ct, notes = search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), str(tmp_path / "t.json"))
    assert notes["calibration"]["networks"] == 6
    for arch in ("|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|",
                 "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"):
        got = derived_latency("nb201", arch, ct, str(tmp_path / "t.json"))["latency_ms"]
        want = predict_nb201(arch, t)
        assert want.calibrated
        assert got == pytest.approx(want.latency_ms, rel=1e-9)


def test_a_prediction_names_the_op_types_its_calibration_never_measured(tmp_path, capsys):
    """A calibration records each network's op types; a network with types none of them had gets their
    share of its isolated time -- the same share counted from its own per-key rows -- and a warning
    naming them (predict prints it). A calibration from before op types were recorded says nothing."""
    from costmodels.incontext import op_type_times
    from costmodels.predict import predict_network
    from hwcost.api import resolve_target
    t = load_table(_shipped("nb201_ort-cpu.json"))

    def types_of(arch):
        tg = resolve_target("nb201", None, arch, "cifar10")
        return op_type_times(predict_network(tg.model, tg.input_shape, t, incontext=None).per_key)
    seen = types_of("|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|")
    rng = np.random.default_rng(0)
    samples = [dataclasses.replace(_net(rng, 0.01, f"n{i}"), op_types=dict(seen)) for i in range(5)]
    m = fit_in_context(samples, 0.002, backend="ort-cpu", host={"cpu": "x"}, created=now_iso())
    save_table(dataclasses.replace(t, calibration=m.to_json()), tmp_path / "t.json")
    assert model_of(load_table(tmp_path / "t.json")).samples[0].op_types == seen      # round trip
    pools = "|avg_pool_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    mine = types_of(pools)
    assert main(["predict", "--table", str(tmp_path / "t.json"), "--space", "nb201", "--arch", pools, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["unseen_op_types"] == ["avg_pool_3x3"] and "nor_conv_3x3" not in mine
    assert d["unseen_share"] == pytest.approx(mine["avg_pool_3x3"] / sum(mine.values()), rel=1e-9)
    assert d["unseen_share"] > 0.05 and "avg_pool_3x3" in d["calibration_warning"]
    assert main(["predict", "--table", str(tmp_path / "t.json"), "--space", "nb201", "--arch", pools]) == 0
    assert "op types no calibration network had (avg_pool_3x3)" in capsys.readouterr().out
    # a network of seen types only: no types named, no warning
    assert main(["predict", "--table", str(tmp_path / "t.json"), "--space", "nb201", "--arch",
                 "|nor_conv_1x1~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|nor_conv_3x3~1|skip_connect~2|",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["unseen_op_types"] == [] and d["unseen_share"] == 0 and "calibration_warning" not in d
    # one network without a record (a verify round added to an old calibration): silent, not a false alarm
    mixed = fit_in_context(samples[:4] + [dataclasses.replace(samples[4], op_types=None)], 0.002,
                           backend="ort-cpu", host={"cpu": "x"}, created=now_iso())
    assert mixed.unseen(mine) is None
    # recorded before op types were: silent
    save_table(_calibrated_table(tmp_path), tmp_path / "old.json")
    assert main(["predict", "--table", str(tmp_path / "old.json"), "--space", "nb201", "--arch", pools, "--json"]) == 0
    assert "unseen_op_types" not in json.loads(capsys.readouterr().out)
    # a malformed record is one clear error
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["calibration"]["networks"][0]["op_types"] = {"avg_pool_3x3": -1}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(TableError, match=r"networks\[0\]\.op_types"):
        load_table(tmp_path / "bad.json")


def _cold_rows(rng, n_keys=12):
    keys = [OpKey("torch", op, 1, c, c, h, h, 1, {"kernel": 1} if op == "Conv2d" else {})
            for op, c, h in [("Conv2d", 8 * (i + 1), 8 + i) for i in range(n_keys // 2)]
            + [("BatchNorm2d", 8 * (i + 1), 8 + i) for i in range(n_keys - n_keys // 2)]]
    return [(k, int(rng.integers(1, 4)), 0, float(rng.uniform(0.005, 3.0)), "table") for k in keys]


def test_the_cold_group_is_each_calls_time_to_the_power_and_is_fitted_unshrunk():
    from costmodels.incontext import COLD, COLD_POWER, group_features
    rng = np.random.default_rng(5)
    rows = _cold_rows(rng)
    feats, n_ops = group_features(rows)
    assert feats[COLD] == pytest.approx(sum(n * ms ** COLD_POWER for _, n, _, ms, _ in rows))
    assert n_ops == sum(n for _, n, _, _, _ in rows)
    # networks whose time is 1.1 x their ops plus 0.3 x their cold feature: "on" finds both, even when the
    # op factors are shrunk hard towards their mean (the cold factor is not one of them)
    cal = []
    for i in range(10):
        r = [(k, n, a, ms * rng.uniform(0.3, 3), s) for k, n, a, ms, s in rows]
        f, n = group_features(r)
        ops = sum(x for g, x in f.items() if g != COLD)
        cal.append(Sample(f"n{i}", f, n, 1.1 * ops + 0.3 * f[COLD]))
    m = fit_in_context(cal, 0.0, structures=("groups",), lambdas=(10.0,), cold="on")
    assert m.factor(COLD) == pytest.approx(0.3, rel=0.02)
    assert all(m.factor(g) == pytest.approx(1.1, rel=0.02) for g in m.factors if g != COLD)
    assert max(abs(v) for v in m.loo) < 1e-3
    scale = fit_in_context(cal, 0.0, structures=("scale",), cold="on")
    assert scale.factor(COLD) == pytest.approx(0.3, rel=0.02)
    # off (the default): not fitted, priced 0; a sample without the feature (a calibration from before it)
    # keeps it out even when asked for
    assert COLD not in fit_in_context(cal, 0.0).factors and fit_in_context(cal, 0.0).factor(COLD) == 0.0
    old = [Sample(s.name, {g: x for g, x in s.features.items() if g != COLD}, s.n_ops, s.measured_ms)
           for s in cal[:3]]
    assert COLD not in fit_in_context(old + cal[3:], 0.0, cold="on").factors
    with pytest.raises(HwcostError, match="cold must be one of"):
        fit_in_context(cal, 0.0, cold="yes")


def test_a_search_prices_each_call_as_the_calibrated_prediction_does():
    # search.costs prices every op call by InContextModel.key_ms; summed over a network's calls (plus the
    # per-op and per-call terms) it must be the network's calibrated prediction, cold group included
    from costmodels.incontext import COLD, group_features
    rng = np.random.default_rng(6)
    rows = _cold_rows(rng)
    cal = []
    for i in range(8):
        r = [(k, n, a, ms * rng.uniform(0.3, 3), s) for k, n, a, ms, s in rows]
        f, n = group_features(r)
        cal.append(Sample(f"n{i}", f, n, sum(x for g, x in f.items() if g != COLD) * rng.uniform(1.0, 1.3)
                          + 0.2 * f[COLD]))
    m = fit_in_context(cal, 0.01, cold="on")
    assert m.factor(COLD) > 0
    feats, n_ops = group_features(rows)
    by_calls = sum(n * m.key_ms(k, ms) for k, n, _, ms, _ in rows)
    assert by_calls - (n_ops - 1) * m.per_call_ms + m.per_op_ms * n_ops == pytest.approx(m.predict(feats, n_ops))
