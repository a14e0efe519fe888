"""Nodes fed subnormal floats (spaces.onnx_graph): counted, keyed apart, timed on their network's inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from profilers.export import export_graph
from spaces.errors import HwcostError
from spaces.onnx_graph import SUBNORMAL_MIN, graph_nodes, node_graph, subnormal_share

TINY = float(np.finfo(np.float32).tiny)     # the smallest normal float32, 1.18e-38


def test_subnormal_share_counts_nonzero_values_below_the_smallest_normal():
    a = np.array([0.0, 1e-40, -1e-41, TINY, 1.0, -3.0, 1e-45, 2e-38], np.float32)
    # 1e-40, -1e-41, 1e-45 are subnormal; 0, TINY itself, 2e-38 (> TINY) and the normal ones are not
    assert subnormal_share(a) == pytest.approx(3 / 8)
    assert subnormal_share(np.array([1e-40], np.float64)) == 0.0        # normal in float64
    assert subnormal_share(np.array([1e-5, 3e-6], np.float16)) == 0.0    # float16 is widened to float32
    assert subnormal_share(np.arange(5)) == 0.0 and subnormal_share(np.zeros(0, np.float32)) == 0.0


def test_subnormal_share_on_the_bits_matches_a_float_comparison_across_chunks(monkeypatch):
    # The count reads the float's bits in chunks; a chunk boundary inside the array, a strided view, a
    # tensor, -0.0, inf, nan and both signs must give what comparing the floats gives.
    import spaces.opkeys as ok
    monkeypatch.setattr(ok, "_SUBNORMAL_CHUNK", 1000)
    rng = np.random.default_rng(3)
    a = rng.standard_normal(4321).astype(np.float32)
    a[rng.random(a.size) < 0.3] *= np.float32(1e-39)
    a[rng.random(a.size) < 0.05] = -0.0
    a[:4] = [np.inf, -np.inf, np.nan, -TINY]

    def by_floats(x):
        m = np.abs(x)
        return np.count_nonzero((m > 0) & (m < TINY)) / x.size
    assert 0.2 < by_floats(a) < 0.4
    assert subnormal_share(a) == pytest.approx(by_floats(a), abs=0)
    assert subnormal_share(a[::3]) == pytest.approx(by_floats(a[::3]), abs=0)
    assert subnormal_share(torch.from_numpy(a.reshape(29, 149))) == pytest.approx(by_floats(a), abs=0)


class _Scaled(nn.Module):
    """x * s (a per-feature scale, not foldable into the MatMul), then x W: with s = 1e-39 the
    product is subnormal and the MatMul is fed it."""

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("s", torch.full((64,), scale))
        self.s[::2] = 1.0                       # half the features stay normal: a share of 0.5
        self.w = nn.Parameter(torch.randn(64, 32))

    def forward(self, x):
        # x also feeds a ReLU, which never meets a subnormal: it is timed on random data
        return (x * self.s) @ self.w + torch.relu(x)[..., :32]


def _nodes(scale):
    return graph_nodes(export_graph(_Scaled(scale).eval(), (1, 16, 64), f"scaled{scale:g}"))


def test_a_node_fed_subnormals_is_keyed_apart_and_timed_on_its_networks_inputs():
    nodes = _nodes(1e-39)
    flagged = [(n, k) for n, k in zip(nodes.model.graph.node, nodes.keys) if "subnormal" in dict(k.extra)]
    ops = {n.op_type for n, _ in flagged}
    assert "Mul" in ops and ops & {"MatMul", "FusedMatMul", "Gemm"}     # its output, and the node it feeds
    for node, key in flagged:
        share = dict(key.extra)["subnormal"]
        assert share == pytest.approx(0.5, abs=0.01) and share >= SUBNORMAL_MIN
        one = node_graph(nodes, node)
        assert one.arrays is not None
        fed = one.example_arrays()
        assert len(fed) == len(one.inputs) and [a.shape for a in fed] == [tuple(s) for _, s, _ in one.inputs]
        if node.op_type != "Mul":               # the Mul's input is the network's (normal) random input
            assert subnormal_share(fed[0]) == pytest.approx(share, abs=0.01)
    # the same network with a normal scale: the same nodes, keys without the attribute, random inputs
    clean = _nodes(0.5)
    assert len(clean.keys) == len(nodes.keys)
    assert all("subnormal" not in dict(k.extra) for k in clean.keys)
    assert all(node_graph(clean, n).arrays is None for n in clean.model.graph.node)
    # a node that shares its input with a flagged one, but meets no subnormal itself: random data
    relu = [n for n in nodes.model.graph.node if n.op_type == "Relu"]
    assert relu and all("subnormal" not in dict(k.extra) for n, k in zip(nodes.model.graph.node, nodes.keys)
                        if n.op_type == "Relu")
    assert all(node_graph(nodes, n).arrays is None for n in relu)
    # keys only (what predict reads): the same keys, and a flagged node cannot be built to be timed
    bare = graph_nodes(export_graph(_Scaled(1e-39).eval(), (1, 16, 64), "scaled"), keep_values=False)
    assert bare.keys == nodes.keys
    with pytest.raises(HwcostError, match="values were not kept"):
        node_graph(bare, flagged[0][0])
    flagged_keys = {k for _, k in flagged}
    assert not flagged_keys & set(clean.keys)
    strip = lambda k: (k.op, k.batch, k.c_in, k.c_out, k.h, k.w,  # noqa: E731
                       tuple(x for x in k.extra if x[0] != "subnormal"))
    assert {strip(k) for k in flagged_keys} <= {strip(k) for k in clean.keys}


def test_profile_and_predict_of_an_onnx_model_report_its_subnormal_nodes(tmp_path, capsys, monkeypatch):
    """hwcost profile --model times the flagged nodes on their captured inputs; predict reports their calls
    and their share of the sum, read back from the table's own entries."""
    import json

    from hwcost.cli import main
    path = tmp_path / "scaled.onnx"
    path.write_bytes(export_graph(_Scaled(1e-39).eval(), (1, 16, 64), "scaled").model_bytes)
    table = tmp_path / "t.json"
    from spaces import onnx_graph
    fed: dict = {}                              # the largest subnormal share each one-node model was run on
    real = onnx_graph.OnnxGraph.example_arrays

    def spy(self, seed=0):
        arrays = real(self, seed)
        fed[self.name] = max([fed.get(self.name, 0.0)] + [subnormal_share(a) for a in arrays])
        return arrays
    monkeypatch.setattr(onnx_graph.OnnxGraph, "example_arrays", spy)
    assert main(["profile", "--model", str(path), "--max-time", "0.05", "--passes", "1", "--no-progress",
                 "--stream-mib", "0", "--out", str(table)]) == 0
    # the node fed the subnormal product ran on it (half its elements); the ReLU beside it on random data
    matmul = [name for name in fed if "MatMul" in name or "Gemm" in name]
    assert matmul and all(fed[name] == pytest.approx(0.5, abs=0.01) for name in matmul)
    assert fed["Relu node"] == 0.0
    entries = json.loads(table.read_text())["entries"]
    flagged = {e["key"]: e["median_ms"] for e in entries if "subnormal=" in e["key"]}
    assert flagged and all(ms > 0 for ms in flagged.values())
    capsys.readouterr()
    assert main(["predict", "--table", str(table), "--model", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["subnormal_ops"] == len(flagged)          # each flagged node occurs once in this network
    assert d["subnormal_ms"] == pytest.approx(sum(flagged.values()), rel=1e-6)
    assert main(["predict", "--table", str(table), "--model", str(path)]) == 0
    assert f"{len(flagged)} ops are fed subnormal floats" in capsys.readouterr().out


class _Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize("use_fx", [True, False])
def test_a_pytorch_layer_fed_subnormals_is_keyed_apart_and_timed_on_its_networks_inputs(use_fx):
    """The same for PyTorch layer keys (torch.fx, or hooks on leaf modules): the layer making the
    subnormals and the one fed them are flagged; their kept inputs are the network's, taken before the
    call; a layer beside them runs on random data; with a normal scale the keys are the plain ones."""
    from profilers.profile import model_jobs
    from profilers.shapes import torch_key_module
    from spaces.opkeys import model_layer_keys
    torch.manual_seed(0)
    net = lambda scale: nn.Sequential(_Scale(scale), nn.Linear(64, 32), nn.ReLU(inplace=True)).eval()  # noqa: E731
    model = net(1e-39)
    layers = model_layer_keys(model, (1, 16, 64), use_fx=use_fx)
    share = {layer.key.op: dict(layer.key.extra).get("subnormal") for layer in layers}
    scale_op = "mul" if use_fx else "Scale"     # (the op name without its leading underscore)
    # x * 1e-39 makes every element subnormal; the Linear is fed them; W x + b is normal again
    assert share == {scale_op: 1.0, "Linear": 1.0, "ReLU": None}
    by_op = {layer.key.op: layer for layer in layers}
    fed = by_op["Linear"].inputs[0]
    assert subnormal_share(fed) == 1.0
    x = by_op[scale_op].inputs[0]          # the network's input itself (normal); times 1e-39 it is subnormal
    assert subnormal_share(x) == 0.0 and torch.equal(fed, x * 1e-39)
    assert subnormal_share(by_op["ReLU"].inputs[0]) == 0.0      # random, not the Linear's output
    # what hwcost profile runs for each key: the same inputs
    jobs = {j.key: j.build()[1] for j in model_jobs(model, (1, 16, 64))}
    assert subnormal_share(jobs[next(k for k in jobs if k.op == "Linear")][0]) == 1.0
    with pytest.raises(HwcostError, match="cannot rebuild"):
        torch_key_module(by_op["Linear"].key)
    plain = model_layer_keys(net(0.5), (1, 16, 64), use_fx=use_fx)
    assert all("subnormal" not in dict(layer.key.extra) for layer in plain)
    strip = lambda k: (k.op, k.c_in, k.c_out, k.h, tuple(x for x in k.extra if x[0] != "subnormal"))  # noqa: E731
    assert [strip(layer.key) for layer in layers] == [strip(layer.key) for layer in plain]


def test_a_node_or_layer_on_subnormal_weights_is_keyed_apart():
    """A weight (an ONNX initializer, a PyTorch layer's parameter) half of whose elements are subnormal
    flags its node or layer as its inputs would: its key never shares an entry with the same op on
    normal weights."""
    from spaces.opkeys import model_layer_keys
    torch.manual_seed(0)
    lin = nn.Linear(64, 32).eval()
    keys = lambda m, tag: graph_nodes(export_graph(m, (1, 64), tag)).keys  # noqa: E731
    plain = keys(lin, "plain")
    plain_layers = {fx: model_layer_keys(nn.Sequential(lin), (1, 64), use_fx=fx) for fx in (True, False)}
    with torch.no_grad():
        lin.weight[:, ::2] = 1e-39
    flagged = keys(lin, "subnormal_weights")
    shares = [dict(k.extra).get("subnormal") for k in flagged]
    assert len(flagged) == len(plain) == 1 and shares == [0.5]
    assert "subnormal" not in dict(plain[0].extra)
    for fx, before in plain_layers.items():
        after = model_layer_keys(nn.Sequential(lin), (1, 64), use_fx=fx)
        assert [dict(layer.key.extra).get("subnormal") for layer in after] == [0.5]
        assert all("subnormal" not in dict(layer.key.extra) for layer in before)
        assert subnormal_share(after[0].inputs[0]) == 0.0     # its input is the network's own (normal) one
