"""Weights streamed from memory (profilers.stream, the in-context model's ``streamed`` group)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from costmodels.incontext import STREAMED, Sample, fit_in_context, group_features, stream_bandwidth, streaming_ms
from costmodels.predict import predict_network
from device_tables import DeviceTable, OpKey, load_table
from device_tables.table import Entry, now_iso
from hwcost.cli import main
from profilers.backends import get_backend
from profilers.environment import device_info
from profilers.export import export_graph
from profilers.measure import Settings
from profilers.profile import jobs_for, profile
from costmodels.analytical import weight_bytes
from profilers.stream import STREAM_ROWS, stream_probe
from spaces.errors import HwcostError
from spaces.onnx_graph import graph_nodes, node_graph

QUICK = Settings(max_time_s=0.3, passes=2, min_samples=3, min_sample_s=1e-4)


def test_weight_bytes_of_a_layer_and_of_its_onnx_node_match_the_parameter_count():
    conv = nn.Conv2d(64, 128, 3)
    assert weight_bytes(conv) == (64 * 128 * 9 + 128) * 4          # counted by hand
    assert weight_bytes(nn.ReLU()) == 0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(300, 200)

        def forward(self, x):
            return torch.relu(self.fc(x.flatten(1)))

    graph = export_graph(Net().eval(), (1, 3, 10, 10), "fc")
    nodes = graph_nodes(graph)
    gemm = next(n for n in nodes.model.graph.node if "Gemm" in n.op_type)
    assert weight_bytes(node_graph(nodes, gemm)) == (300 * 200 + 200) * 4


def test_the_probe_streams_its_matrix_time_grows_with_its_size():
    """Well beyond any cache, a matrix twice as large takes about twice as long to stream (torch-cpu:
    the fast way to build a large probe). The two sizes are timed interleaved, each keeping its quietest
    window, so a slow phase of the host's memory (seconds long) cannot fall on one size only; the rate
    stream_probe reports is bytes over its measured time."""
    from profilers.stream import _probe_subject
    backend = get_backend("torch-cpu", threads=1)
    with backend.active():
        fns = []
        for size in (256 << 20, 512 << 20):      # (128 MiB still ran partly from one VM's cache)
            module, inputs = _probe_subject(backend, size)
            fns.append(backend.prepare(module.eval(), inputs))
            del module
        small, large = backend.measure_interleaved(fns, Settings(max_time_s=3.0, passes=6, min_samples=3,
                                                                 min_sample_s=1e-3))
        del fns
        r = stream_probe(backend, 256 << 20)
    assert 1.3 <= large.median / small.median <= 3.5
    assert r["bytes"] == 256 << 20 and r["gbps"] == pytest.approx(r["bytes"] / r["median_ms"] / 1e6, rel=1e-3)
    assert 0.1 < r["gbps"] < 2000


def test_the_probe_runs_on_onnx_runtime_and_refuses_a_matrix_under_one_row():
    backend = get_backend("ort-cpu", threads=1)
    with backend.active():
        r = stream_probe(backend, 4 << 20)
    assert r["bytes"] == 4 << 20 and r["median_ms"] > 0 and str(STREAM_ROWS) in r["kernel"]
    with pytest.raises(HwcostError, match="at least"):
        stream_probe(backend, 100)


class _Heavy(nn.Module):
    """A conv (small weights) and a 2 MiB fully connected layer: the kind of network that streams."""

    def __init__(self, wide: int = 1024):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, wide)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _profile(tmp_path, module, name, stream_bytes=8 << 20):
    backend = get_backend("ort-cpu", threads=1)
    graph = export_graph(module.eval(), (1, 3, 8, 8), name)
    out = tmp_path / f"{name}.json"
    table = profile(jobs_for(graph, (1, 3, 8, 8), "all", backend.session_providers()), backend, out,
                    spaces=["onnx"], settings=QUICK, progress=False, reference=False, stream_bytes=stream_bytes)
    return graph, table, out


def test_profile_records_weights_and_probes_the_stream_only_when_a_key_is_heavy(tmp_path):
    graph, table, out = _profile(tmp_path, _Heavy(), "heavy")
    loaded = load_table(out)                   # round trip: the records survive and validate
    rec = loaded.measurement["weight_stream"]
    assert rec["bytes"] == 8 << 20 and rec["gbps"] > 0
    weights = sorted(e.extra.get("weight_bytes", 0) for e in loaded.entries)
    assert weights[-1] == (8 * 8 * 8 * 1024 + 1024) * 4      # the Gemm node: weight and bias
    # the conv node: its weights, not its input (ORT's NCHWc conv on x86 pads 8 output channels to 16)
    assert {(8 * 3 * 9 + 8) * 4, (16 * 3 * 9 + 16) * 4} & set(weights)
    assert stream_bandwidth(loaded) == pytest.approx(rec["gbps"] * 1e6)
    # a network of small weights only: no probe, and its predictions have nothing streamed
    _, light, out2 = _profile(tmp_path, _Heavy(wide=16), "light")
    assert "weight_stream" not in load_table(out2).measurement
    assert predict_network(export_graph(_Heavy(wide=16).eval(), (1, 3, 8, 8), "l"), (1, 3, 8, 8), light,
                           incontext=None).streamed == {}


def test_table_show_names_the_weight_stream(tmp_path, capsys):
    _, _, out = _profile(tmp_path, _Heavy(), "show")
    assert main(["table", "show", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("weight stream"))
    assert "GB/s" in line and "8 MiB" in line


def _table(gbps: float | None, entries) -> DeviceTable:
    measurement = {"weight_stream": {"gbps": gbps, "bytes": 1 << 30, "median_ms": 1.0}} if gbps else {}
    return DeviceTable("op", ["onnx"], device_info(),
                       {"backend": "ort-cpu", "threads": 1, "batch": 1, "dtype": "float32"}, tuple(entries),
                       measurement, now_iso(), {})


def _key(op, c_in, c_out, h=1):
    return OpKey("onnx", op, 1, c_in, c_out, h, h, 1)


def test_streamed_time_is_what_the_weights_take_at_the_bandwidth_beyond_the_isolated_time():
    gemm, conv, relu = _key("Gemm", 4096, 4096), _key("Conv", 64, 64, 14), _key("Relu", 64, 64, 14)
    entries = [Entry(gemm, 1.0, 0.9, 1.1, 10, extra={"weight_bytes": 20_000_000}),   # 20 MB / 10 GB/s = 2 ms
               Entry(conv, 0.5, 0.4, 0.6, 10, extra={"weight_bytes": 1_000_000}),    # 0.1 ms < 0.5 ms
               Entry(relu, 0.05, 0.04, 0.06, 10)]
    f = streaming_ms(_table(10.0, entries))
    assert f(gemm, 1.0) == pytest.approx(1.0)
    assert f(conv, 0.5) == 0.0 and f(relu, 0.05) == 0.0
    assert streaming_ms(_table(None, entries)) is None        # no probe: nothing streamed, as before
    rows = [(gemm, 3, 0, 1.0, "table"), (conv, 2, 0, 0.5, "table"), (relu, 2, 0, 0.05, "table")]
    feats, n = group_features(rows, {gemm: f(gemm, 1.0)})
    assert feats[STREAMED] == pytest.approx(3 * 1.0) and n == 7
    assert STREAMED not in group_features(rows)[0]


def test_the_fit_prices_streamed_weights_where_op_factors_cannot():
    """Networks whose measured time is ``1.1 x`` their op sum plus what their weights take to stream:
    a network with much streaming, held out, is predicted within 2 % with the streamed group and
    more than 10 % low without it (a per-group factor cannot carry a cost that is not per op)."""
    rng = np.random.default_rng(1)

    def net(i, streamed):
        feats = {"conv_kxk": rng.uniform(5, 20), "linear": rng.uniform(0.5, 3), "activation": rng.uniform(0.2, 1)}
        n_ops = int(rng.integers(40, 120))
        measured = 1.1 * sum(feats.values()) + streamed
        return Sample(f"n{i}", {**feats, **({STREAMED: streamed} if streamed else {})}, n_ops, measured)

    cal = [net(i, rng.uniform(0, 2)) for i in range(14)]
    held = net(99, 12.0)
    with_s = fit_in_context(cal, 0.0, streamed="choose")
    assert with_s.factor(STREAMED) == pytest.approx(1.0, abs=0.05)
    assert with_s.predict(held.features, held.n_ops) == pytest.approx(held.measured_ms, rel=0.02)
    plain = [Sample(s.name, {g: x for g, x in s.features.items() if g != STREAMED}, s.n_ops, s.measured_ms)
             for s in cal]
    without = fit_in_context(plain, 0.0)
    held_plain = {g: x for g, x in held.features.items() if g != STREAMED}
    assert without.predict(held_plain, held.n_ops) < 0.9 * held.measured_ms
    # the default factor (a group no network had) is the op groups' mean, not pulled by the pseudo-group
    assert with_s.default_factor == pytest.approx(1.1, abs=0.05)
    # by default (what hwcost calibrate fits) the group stays out: it did not carry across zoos on host D
    assert STREAMED not in fit_in_context(cal, 0.0).factors
    with pytest.raises(HwcostError, match="streamed must be one of"):
        fit_in_context(cal, 0.0, streamed="yes")


def test_a_calibrated_prediction_adds_the_streamed_weights(tmp_path):
    """On a table whose probe says weights stream slowly (0.5 GB/s, set by hand so that the 2 MiB Gemm
    must stream), each key's streamed time is max(0, bytes / BW - ms), and a calibrated prediction adds
    the fitted factor times their sum; a calibration that never saw streaming prices it at 0."""
    import dataclasses
    graph, table, _ = _profile(tmp_path, _Heavy(), "cal")
    slow = dataclasses.replace(table, measurement={**table.measurement,
                                                   "weight_stream": {"gbps": 0.5, "bytes": 1 << 30, "median_ms": 2147.0}})
    raw = predict_network(graph, (1, 3, 8, 8), slow, incontext=None)
    assert raw.streamed, "the 2 MiB Gemm must stream at 0.5 GB/s"
    for key, n, a, ms, _ in raw.per_key:
        want = max(0.0, slow.get(key).extra.get("weight_bytes", 0) / 0.5e6 - ms)
        assert raw.streamed.get(key, 0.0) == pytest.approx(want)
    feats, n_ops = group_features(raw.per_key, raw.streamed)
    total = sum((n - a) * raw.streamed.get(k, 0.0) for k, n, a, _, _ in raw.per_key)
    assert total > 3.0 and feats[STREAMED] == pytest.approx(total)
    rng = np.random.default_rng(0)
    cal = []
    for i in range(8):
        f = {g: x * rng.uniform(0.5, 2) for g, x in feats.items() if g != STREAMED}
        s = rng.uniform(0, 2 * total)
        cal.append(Sample(f"n{i}", {**f, STREAMED: s}, n_ops, 1.2 * sum(f.values()) + 0.9 * s))
    model = fit_in_context(cal, 0.0, structures=("groups",), streamed="on", backend="ort-cpu", host={"cpu": "x"}, created=now_iso())
    calibrated = dataclasses.replace(slow, calibration=model.to_json())
    p = predict_network(graph, (1, 3, 8, 8), calibrated)
    plain = {g: x for g, x in feats.items() if g != STREAMED}
    assert p.latency_ms == pytest.approx(model.predict(feats, n_ops))
    assert p.latency_ms - model.predict(plain, n_ops) == pytest.approx(model.factor(STREAMED) * total)
    assert model.factor(STREAMED) == pytest.approx(0.9, abs=0.05)
    # no calibration network streamed: the group is not fitted and costs nothing, as before the probe
    unseen = fit_in_context([Sample(s.name, {g: x for g, x in s.features.items() if g != STREAMED}, s.n_ops,
                                    s.measured_ms) for s in cal], 0.0)
    assert unseen.factor(STREAMED) == 0.0
    assert unseen.predict(feats, n_ops) == pytest.approx(unseen.predict(plain, n_ops))
    # and the plain-sum structure streams nothing either
    assert fit_in_context(cal, 0.0, structures=("sum",), streamed="on").factor(STREAMED) == 0.0


def test_a_probe_that_cannot_run_is_recorded_as_skipped_and_the_table_is_written(tmp_path, monkeypatch):
    import profilers.stream as stream

    def fail(*a, **k):
        raise MemoryError("no room")
    monkeypatch.setattr(stream, "stream_probe", fail)
    with pytest.warns(UserWarning, match="weight-stream probe skipped: the weight-stream probe failed: no room"):
        _, table, out = _profile(tmp_path, _Heavy(), "skip")
    rec = load_table(out).measurement["weight_stream"]
    assert "failed" in rec["skipped"] and stream_bandwidth(table) is None and len(table) >= 3
    monkeypatch.setattr(stream, "probe_bytes", lambda requested=stream.STREAM_BYTES: 64 << 20)
    assert "64 MiB" in stream.probe_record(get_backend("ort-cpu"))["skipped"]


def test_the_streamed_group_stays_out_when_it_does_not_lower_the_leave_one_out_error():
    """Networks whose time owes nothing to their streamed weights (the timm zoo on host D: weights that fit
    the cache): the fit leaves the group out, and predicts as the model without it does."""
    rng = np.random.default_rng(2)
    cal = []
    for i in range(12):      # three networks with much to stream, which their measured times do not show
        feats = {"conv_kxk": rng.uniform(5, 20), "linear": rng.uniform(0.5, 3)}
        measured = 1.1 * sum(feats.values()) * (1 + rng.normal(0, 0.02))
        cal.append(Sample(f"n{i}", {**feats, STREAMED: 10.0 if i < 3 else rng.uniform(0, 0.2)}, 60, measured))
    model = fit_in_context(cal, 0.0, streamed="choose")
    assert STREAMED not in model.factors and model.summary()["streamed"] is False
    plain = fit_in_context([Sample(s.name, {g: x for g, x in s.features.items() if g != STREAMED}, s.n_ops,
                                   s.measured_ms) for s in cal], 0.0)
    probe = {"conv_kxk": 10.0, "linear": 2.0, STREAMED: 4.0}
    assert model.predict(probe, 60) == pytest.approx(plain.predict({"conv_kxk": 10.0, "linear": 2.0}, 60))


def test_cli_profile_sizes_or_skips_the_probe(tmp_path, capsys):
    from profilers.export import export_onnx
    net = tmp_path / "heavy.onnx"
    export_onnx(_Heavy().eval(), torch.randn(1, 3, 8, 8), net)
    base = ["profile", "--model", str(net), "--max-time", "0.3", "--passes", "2", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a.json"), "--stream-mib", "0"]) == 0
    assert "weight_stream" not in load_table(tmp_path / "a.json").measurement
    assert main(base + ["--out", str(tmp_path / "b.json"), "--stream-mib", "4"]) == 0
    assert load_table(tmp_path / "b.json").measurement["weight_stream"]["bytes"] == 4 << 20
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "c.json"), "--stream-mib", "-1"]) != 0
    err = capsys.readouterr().err
    assert "--stream-mib must be >= 0" in err and "Traceback" not in err


def test_zoo_spread_takes_each_runs_phase_out_before_comparing_models():
    """benchmarks/zoo_spread.py: a run where the host ran every model 20 % slower moves no model; a model
    whose own ratio moved by 10 % shows a spread of 1.10 (computed by hand)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_spread.py"
    spec = importlib.util.spec_from_file_location("zoo_spread", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(scale, moved):
        ratios = {"a": 1.0, "b": 1.1, "c": 1.2}
        return {"rows": [{"model": m, "sum_of_ops_ms": 10.0,
                          "measured_ms": 10.0 * r * scale * (1.1 if m == moved else 1.0)} for m, r in ratios.items()]}
    rows = {m: s for m, _, s in mod.spread([run(1.0, None), run(1.2, None)])}
    assert rows == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    rows = {m: s for m, _, s in mod.spread([run(1.0, None), run(1.0, "a")])}
    assert rows["a"] == pytest.approx(1.1) and rows["b"] == pytest.approx(1.0)
