"""Whole-network prediction: on tables whose entries are set by hand, the predicted
latency equals a sum worked out from the genotype (or the model) by hand, minus the
per-call overhead; each source is counted; fusion and errors behave."""
import json
import random

import pytest
import torch
import torch.nn as nn

from costmodels.predict import (Overhead, calibrate_scale, fused_layer_counts, network_op_counts, predict_genotype,
                                predict_network)
from device_tables import DeviceTable, Entry, MissingKeyError, TableError, save_table
from hwcost import cli
from profilers.shapes import model_layer_keys
from spaces import BUILTIN_GENOTYPES, CifarNetConfig, HwcostError, build_network, network_config

ORT = {"backend": "ort-cpu", "execution_provider": "CPUExecutionProvider", "threads": 1, "batch": 1,
       "dtype": "float32", "graph_optimization": "all"}
TORCH = {**ORT, "backend": "torch-cpu", "execution_provider": "cpu"}
ORT_MEASUREMENT = {"call_overhead_ms": 0.01, "isolation": "one ONNX Runtime session per op model"}
BASE = {"stem_cifar": 0.5, "preprocess": 0.2, "factorized_reduce": 0.3, "node_sum": 0.01, "concat": 0.02,
        "classifier": 0.05, "sep_conv_3x3": 1.0, "sep_conv_5x5": 1.5, "dil_conv_3x3": 0.7,
        "dil_conv_5x5": 0.9, "max_pool_3x3": 0.1, "avg_pool_3x3": 0.12, "skip_connect": 0.004}
GENOTYPE = BUILTIN_GENOTYPES["DARTS_V2"][1]


def hand_ms(op: str, c_out: int) -> float:
    """The latency every table in these tests gives an op: by op type and output width."""
    return BASE[op] + 0.001 * c_out


def table_of(keys, space="darts", runtime=ORT, measurement=ORT_MEASUREMENT, ms=None) -> DeviceTable:
    ms = ms or (lambda k: hand_ms(k.op, k.c_out))
    return DeviceTable(kind="op", spaces=[space], device={"name": "box"}, runtime=dict(runtime),
                       entries=tuple(Entry(k, ms(k), ms(k), ms(k), 5) for k in keys), measurement=dict(measurement))


def small_net(C=8, layers=5):
    cfg = CifarNetConfig(GENOTYPE, "darts", C=C, layers=layers, input_size=16)
    return cfg, build_network(cfg)


def cell_merges(edges, reduction: bool) -> list[str]:
    """The ops of one DARTS cell that its ONNX graph runs once for two calls, by genotype arithmetic:
    a parameter-free op (a pool; skip_connect where it is an identity, i.e. not at stride 2 on a
    reduction cell's inputs) on a state another edge of the cell applies it to already; then a node sum
    whose two (op, state) inputs are those of an earlier node, both parameter-free (the same values)."""
    free = lambda op, src: op in ("max_pool_3x3", "avg_pool_3x3") or (  # noqa: E731
        op == "skip_connect" and not (reduction and src < 2))
    seen, merged, nodes = set(), [], []
    for node in range(len(edges) // 2):
        pair = tuple(edges[2 * node:2 * node + 2])
        for op, src in pair:
            if free(op, src) and (op, src) in seen:
                merged.append(op)
            seen.add((op, src))
        if all(free(*x) for x in pair) and pair in nodes:
            merged.append("node_sum")
        nodes.append(pair)
    return merged


def genotype_sum(C: int, layers: int, only: str | None = None, onnx: bool = False) -> tuple[float, int]:
    """(sum of hand latencies, number of op calls) of a CIFAR network, by genotype arithmetic:
    stem, then per cell 2 preprocessing ops, 8 edges, 4 node sums, 1 concat, then the classifier.
    ``onnx``: without the calls its ONNX graph merges (:func:`cell_merges`)."""
    total, calls = 0.0, 0

    def add(op, c_out, n=1):
        nonlocal total, calls
        if only is None or op == only:
            total += n * hand_ms(op, c_out)
            calls += n

    add("stem_cifar", 3 * C)
    c, reduction_prev = C, False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if reduction else c
        add("factorized_reduce" if reduction_prev else "preprocess", c)
        add("preprocess", c)
        edges = GENOTYPE.reduce if reduction else GENOTYPE.normal
        for op, _ in edges:
            add(op, c)
        for _ in range(4):
            add("node_sum", c)
        add("concat", 4 * c)
        for op in cell_merges(edges, reduction) if onnx else ():
            add(op, c, -1)
        reduction_prev = reduction
    add("classifier", 10)
    return total, calls


def test_prediction_is_the_hand_sum_over_the_genotype_minus_the_call_overhead():
    cfg, net = small_net()
    table = table_of(network_op_counts(net, net.input_shape()))
    p = predict_network(net, net.input_shape(), table)
    total, calls = genotype_sum(8, 5, onnx=True)
    # DARTS_V2 as written: 1 + 5 * (2 + 8 + 4 + 1) + 1 calls; its ONNX graph runs the normal cell's two
    # skip_connects on state 0 once (3 cells), and in the reduction cell (2) max_pool on state 0 twice,
    # on state 1 three times, skip_connect on node 2 three times, and nodes 3 and 5 sum the same values
    assert genotype_sum(8, 5)[1] == 1 + 5 * (2 + 8 + 4 + 1) + 1
    assert calls == genotype_sum(8, 5)[1] - 3 * 1 - 2 * (1 + 2 + 2 + 1)
    assert p.n_calls == calls and p.from_table == calls and p.from_surrogate == 0
    assert sum(p.merged.values()) == 3 + 2 * 6
    assert p.ops_sum_ms == pytest.approx(total, rel=1e-12)
    # each ORT entry carries one session run(); the network pays one
    assert p.latency_ms == pytest.approx(total - (calls - 1) * 0.01, rel=1e-12)


def test_cifar10_preset_has_302_ops_and_torch_tables_remove_no_overhead():
    net = build_network(network_config("cifar10", GENOTYPE))
    table = table_of(network_op_counts(net, net.input_shape()), runtime=TORCH,
                     measurement={"call_overhead_ms": 0.01, "isolation": "one module call per op"})
    p = predict_genotype("DARTS_V2", table)          # C=36, 20 cells
    total, calls = genotype_sum(36, 20)
    assert calls == 302 and p.n_calls == 302
    assert p.latency_ms == pytest.approx(total, rel=1e-12) and p.overhead.per_call_ms == 0


class ConstantSepConv:
    """A stand-in op surrogate that knows one op type."""

    def predict_key(self, key):
        if key.op != "sep_conv_3x3":
            raise KeyError(key)
        return hand_ms(key.op, key.c_out)


def test_sources_are_counted_and_missing_keys_named():
    _, net = small_net()
    keys = [k for k in network_op_counts(net, net.input_shape()) if k.op != "sep_conv_3x3"]
    table = table_of(keys)
    p = predict_network(net, net.input_shape(), table, surrogate=ConstantSepConv())
    total, calls = genotype_sum(8, 5, onnx=True)
    _, n_sep = genotype_sum(8, 5, only="sep_conv_3x3")
    assert n_sep == 5 * 3        # DARTS_V2: 5 sep_conv_3x3 edges per normal cell, 3 normal cells
    assert (p.from_surrogate, p.from_table) == (n_sep, calls - n_sep)
    assert p.latency_ms == pytest.approx(total - (calls - 1) * 0.01, rel=1e-12)
    with pytest.raises(MissingKeyError, match=r"darts/sep_conv_3x3\|b1\|cin8"):
        predict_network(net, net.input_shape(), table)


def test_overhead_from_the_table():
    assert Overhead.from_table(table_of([])).per_call_ms == 0.01
    _, net = small_net()
    keys = list(network_op_counts(net, net.input_shape()))
    # every entry includes the per-call overhead: a recorded value above the fastest entry is capped
    capped = Overhead.from_table(table_of(keys, measurement={**ORT_MEASUREMENT, "call_overhead_ms": 1.0}))
    assert capped.per_call_ms == min(hand_ms(k.op, k.c_out) for k in keys) and "fastest" in capped.source
    scaled = Overhead.from_table(table_of([], measurement={**ORT_MEASUREMENT, "context_scale": 1.25}))
    assert (scaled.per_call_ms, scaled.scale) == (0.01, 1.25)
    assert scaled.network_ms(10.0, 11) == pytest.approx(1.25 * (10.0 - 10 * 0.01))
    torch_table = table_of([], runtime=TORCH, measurement={"call_overhead_ms": 0.01,
                                                           "isolation": "one module call per op"})
    assert Overhead.from_table(torch_table).per_call_ms == 0
    chained = table_of([], measurement={**ORT_MEASUREMENT, "per_call_overhead_ms": 0.004})
    assert Overhead.from_table(chained).per_call_ms == 0.004


def test_calibrated_scale_recovers_a_known_factor():
    predicted = [10.0, 20.0, 35.0]
    assert calibrate_scale(predicted, [1.15 * p for p in predicted]) == pytest.approx(1.15)
    with pytest.raises(HwcostError):
        calibrate_scale([], [])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.pool, self.relu3 = nn.MaxPool2d(2), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6()

    def forward(self, x):
        a = self.relu(self.bn1(self.conv1(x)))       # BN folds into conv1, ReLU fuses into it
        b = self.relu3(self.pool(a))                  # after a pool: no fusion
        c = self.conv2(b)
        return self.act2(c) + c                        # conv2's output has two users: no fusion


def test_fusion_of_bn_and_activations_into_a_preceding_conv():
    model, shape = Tiny().eval(), (1, 3, 16, 16)
    layers = {layer.key: layer.count for layer in model_layer_keys(model, shape)}
    fused = fused_layer_counts(model, shape, "all")
    assert {k.op: n for k, n in fused.items()} == {"BatchNorm2d": 1, "ReLU": 1}
    assert all(k in layers for k in fused) and next(k for k in fused if k.op == "ReLU").h == 16
    assert {k.op for k in fused_layer_counts(model, shape, "basic")} == {"BatchNorm2d"}
    assert not fused_layer_counts(model, shape, "disable")

    ms = {"Conv2d": 1.0, "BatchNorm2d": 0.3, "ReLU": 0.1, "MaxPool2d": 0.2, "ReLU6": 0.05, "add": 0.07}
    table = table_of(layers, space="torch", ms=lambda k: ms[k.op])
    p = predict_network(model, shape, table)
    calls = 8                        # conv1 bn1 relu pool relu3 conv2 act2 add
    total = 2 * 1.0 + 0.3 + 2 * 0.1 + 0.2 + 0.05 + 0.07
    assert p.n_calls == calls and p.n_fused == 2
    assert p.latency_ms == pytest.approx(total - 0.3 - 0.1 - (calls - 2 - 1) * 0.01, rel=1e-12)
    eager = predict_network(model, shape, table_of(layers, space="torch", runtime=TORCH, ms=lambda k: ms[k.op],
                                                   measurement={"isolation": "one module call per op"}))
    assert eager.latency_ms == pytest.approx(total, rel=1e-12) and eager.n_fused == 0


def test_a_table_of_another_space_or_kind_is_refused():
    _, net = small_net()
    with pytest.raises(TableError, match="needs a table of space darts"):
        predict_network(net, net.input_shape(), table_of([], space="nb201"))
    with pytest.raises(TableError, match="backend ort-cpu, not torch-cpu"):
        predict_network(net, net.input_shape(), table_of([]), backend="torch-cpu")


# ------------------------------------------------------------------------------------ CLI


def run(capsys, monkeypatch, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    net = build_network(network_config("cifar10", GENOTYPE))
    save_table(table_of(network_op_counts(net, net.input_shape())), d / "darts.json")
    layers = model_layer_keys(Tiny(), (1, 3, 16, 16))
    save_table(table_of([layer.key for layer in layers], space="torch", ms=lambda k: 1.0), d / "torch.json")
    from costmodels.arch_surrogate import ArchLatencySurrogate
    from spaces.nb201_arch import NB201_OPS
    rng = random.Random(0)
    archs = ["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*rng.choices(NB201_OPS, k=6)) for _ in range(12)]
    ArchLatencySurrogate().fit(archs, [1.0 + a.count("conv") for a in archs]).save(d / "arch.json")
    (d / "op_surrogate.json").write_text(json.dumps({"format": "hwcost-op-surrogate", "schema_version": 1}))
    (d / "archs.txt").write_text(archs[0] + "\n\n" + archs[1] + "\n")
    (d / "bad_archs.txt").write_text(archs[0] + "\n|nor_conv_3x3~0|+|oops|\n")
    return d


def test_cli_genotype_json(capsys, monkeypatch, tables):
    code, out, _ = run(capsys, monkeypatch, "predict", "--table", str(tables / "darts.json"),
                       "--genotype", "DARTS_V2", "--network", "cifar10", "--json")
    d = json.loads(out)
    total, calls = genotype_sum(36, 20, onnx=True)
    assert code == 0 and d["from_table"] == calls and d["from_surrogate"] == 0 and d["merged_ops"] == 302 - calls
    assert d["latency_ms"] == pytest.approx(total - (calls - 1) * 0.01, rel=1e-9)


def test_cli_arch_file(capsys, monkeypatch, tables):
    code, out, _ = run(capsys, monkeypatch, "predict", "--surrogate", str(tables / "arch.json"),
                       "--archs", str(tables / "archs.txt"), "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2 and all(set(r) == {"arch", "latency_ms"} for r in rows)


BAD = [
    (["--table", "torch.json", "--model", "torchvision:not_a_net", "--input", "1x3x16x16"],
     "unknown torchvision model"),
    (["--table", "torch.json", "--model", "torchvision:resnet18", "--input", "1x3xbig"], "bad --input"),
    (["--table", "darts.json", "--space", "nb201", "--arch",
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"], "needs a table of space nb201"),
    (["--table", "darts.json", "--model", "torchvision:resnet18", "--input", "1x3x224x224"], "space torch"),
    (["--table", "darts.json", "--genotype", "DARTS_V2", "--backend", "torch-cpu"], "not torch-cpu"),
    (["--surrogate", "arch.json", "--archs", "bad_archs.txt"], "bad_archs.txt line 2"),
    (["--archs", "archs.txt"], "needs --surrogate"),
    (["--surrogate", "op_surrogate.json", "--archs", "archs.txt"], "expected 'hwcost-arch-surrogate'"),
    (["--table", "darts.json", "--surrogate", "arch.json", "--genotype", "DARTS_V2"], "architecture surrogate"),
]


@pytest.mark.parametrize("argv,match", BAD, ids=[m for _, m in BAD])
def test_cli_bad_input_is_one_line_exit_2(capsys, monkeypatch, tables, argv, match):
    argv = [str(tables / a) if a.endswith((".json", ".txt")) else a for a in argv]
    code, out, err = run(capsys, monkeypatch, "predict", *argv)
    assert code == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err


def test_call_overhead_chain_method_splits_per_call_and_per_node():
    """profilers.overhead (costmodels never measures): t(1) = call + node, t(k) = call + k * node."""
    from types import SimpleNamespace

    from profilers.overhead import measure_call_overhead

    class FakeBackend:
        name, batch = "fake", 1

        def measure(self, module, inputs, settings):
            nodes = len(module) if isinstance(module, nn.Sequential) else 1
            return SimpleNamespace(median=(0.050 + nodes * 0.002) * 1e-3)   # seconds

    d = measure_call_overhead(FakeBackend(), k=11)
    assert d["per_node_ms"] == pytest.approx(0.002) and d["per_call_ms"] == pytest.approx(0.050)
    assert d["chain_length"] == 11 and d["backend"] == "fake"
