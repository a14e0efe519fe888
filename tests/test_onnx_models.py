"""--model NET.onnx (issue 12): an ONNX graph without PyTorch -- keyed after ONNX Runtime's graph
optimisation, costed from the graph, profiled node by node, predicted and measured whole."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from costmodels.analytical import network_costs, onnx_costs
from device_tables import OpKey
from hwcost.cli import main
from spaces.errors import HwcostError
from spaces.onnx_graph import graph_nodes, load_onnx


def tiny_net() -> nn.Module:
    """conv+BN+relu, a depthwise conv (stride 2) + relu, global pooling, a linear."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU(),
                        nn.Conv2d(16, 32, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    # running statistics of a trained BN (a fresh one's zeros and ones the exporter shares with its bias/weight)
    net[1].running_mean.uniform_(-0.1, 0.1)
    net[1].running_var.uniform_(0.5, 1.5)
    return net


SHAPE = (1, 3, 32, 32)


def export(model: nn.Module, path, dynamic: bool = False) -> str:
    # PRESERVE keeps BatchNormalization in the file (the exporter's eval mode would fold it itself),
    # so the fold seen below is ONNX Runtime's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"input": {0: "batch"}} if dynamic else None)
    return str(path)


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    return export(tiny_net(), tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_keys_are_the_nodes_ort_runs_after_its_optimisation(net_onnx):
    graph = load_onnx(net_onnx)
    assert "BatchNormalization" in {n.op_type for n in graph.proto().graph.node}   # in the file
    plain = graph_nodes(graph, "disable").keys
    assert [k.op for k in plain].count("BatchNormalization") == 1
    for level in ("basic", "extended", "all"):
        keys = graph_nodes(graph, level).keys
        ops = [k.op for k in keys]
        assert all(isinstance(k, OpKey) and k.space == "onnx" for k in keys)
        assert OpKey.from_str(keys[0].to_str()) == keys[0]
        assert "BatchNormalization" not in ops and "Identity" not in ops          # folded into the conv
        if level != "basic":
            assert "Relu" not in ops          # every ReLU runs inside its convolution (FusedConv / nchwc.Conv)
    extended = graph_nodes(graph, "extended").keys
    convs = [k for k in extended if k.op == "com.microsoft.FusedConv"]
    assert len(convs) == 3 and all(dict(k.extra)["activation"] == "Relu" for k in convs)
    first, depthwise, pointwise = convs
    assert (first.batch, first.c_in, first.c_out, first.h, first.w, first.stride) == (1, 3, 16, 32, 32, 1)
    dw = dict(depthwise.extra)
    assert depthwise.stride == 2 and dw["groups"] == 16 and dw["kernel"] == 3 and (dw["hout"], dw["wout"]) == (16, 16)
    assert dict(pointwise.extra)["kernel"] == 1 and pointwise.c_out == 32
    gemm = next(k for k in extended if k.op == "Gemm")
    assert (gemm.c_in, gemm.c_out) == (32, 10)


def test_params_and_macs_from_the_graph_match_pytorch(net_onnx):
    model = tiny_net()
    d = onnx_costs(load_onnx(net_onnx))
    assert d["params"] == sum(p.numel() for p in model.parameters())        # BN's running stats are no params
    assert d["macs"] == network_costs(model, SHAPE).macs                      # conv + linear, both counters
    assert d["input_shape"] == list(SHAPE) and d["model_bytes"] == 4 * (d["params"] + 2 * 16)   # + running stats


def test_profile_predict_and_measure_agree(net_onnx, tmp_path, capsys):
    table = tmp_path / "tiny_ort.json"
    assert main(["profile", "--model", net_onnx, "--max-time", "0.2", "--passes", "2", "--no-progress",
                 "--out", str(table)]) == 0
    tab = json.loads(table.read_text())
    assert tab["spaces"] == ["onnx"] and tab["provenance"]["graph_optimization"] == "all"
    capsys.readouterr()
    assert main(["predict", "--table", str(table), "--model", net_onnx, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["from_table"] == predicted["n_ops"] == tab["provenance"]["nodes"]
    assert main(["measure", "--model", net_onnx, "--max-time", "1", "--passes", "2", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["latency_ms"]
    assert predicted["latency_ms"] > 0 and 0.3 < predicted["latency_ms"] / measured < 3.0


def test_cost_cli_prints_the_graphs_counts(net_onnx, capsys):
    assert main(["cost", "--model", net_onnx]) == 0
    out = capsys.readouterr().out
    assert "MACs (Conv, ConvTranspose, Gemm, MatMul)" in out and "1x3x32x32" in out


def test_cost_and_export_take_a_torchvision_model(tmp_path, capsys):
    assert main(["cost", "--model", "torchvision:squeezenet1_0", "--input", "1x3x64x64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 1e6
    out = tmp_path / "sq.onnx"
    assert main(["export", "--model", "torchvision:squeezenet1_0", "--input", "1x3x64x64", "--onnx", str(out)]) == 0
    assert out.exists() and "onnx.checker: ok" in capsys.readouterr().out


def test_dynamic_dims_need_input(tmp_path):
    path = export(tiny_net(), tmp_path / "dyn.onnx", dynamic=True)
    with pytest.raises(HwcostError, match=r"dynamic input dims \(input 'input': batch x 3 x 32 x 32\); give fixed "
                                          r"ones with --input"):
        load_onnx(path)
    fixed = load_onnx(path, (2, 3, 32, 32))
    assert fixed.input_shape == (2, 3, 32, 32) and graph_nodes(fixed, "extended").keys[0].batch == 2
    with pytest.raises(HwcostError, match="does not fit input 'input'"):
        load_onnx(path, (1, 4, 32, 32))


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwcost: error: ") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_bad_onnx_inputs_are_one_clear_error(tmp_path, capsys, net_onnx):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff\x13" * 10)
    assert "is not an ONNX model" in _cli_error(capsys, ["cost", "--model", str(junk)])
    missing = str(tmp_path / "missing.onnx")
    for argv in (["cost", "--model", missing], ["measure", "--model", missing],
                 ["profile", "--model", missing, "--out", str(tmp_path / "t.json")],
                 ["predict", "--table", "darts_ort-cpu", "--model", net_onnx]):
        _cli_error(capsys, argv)
    assert "no such file" in _cli_error(capsys, ["measure", "--model", missing])
    dyn = export(tiny_net(), tmp_path / "dyn.onnx", dynamic=True)
    assert "give fixed ones with --input" in _cli_error(capsys, ["measure", "--model", dyn])
    assert "runs on ONNX Runtime" in _cli_error(capsys, ["measure", "--model", net_onnx, "--backend", "torch-cpu"])
    assert "already an ONNX model" in _cli_error(capsys, ["export", "--model", net_onnx, "--onnx",
                                                          str(tmp_path / "x.onnx")])
    assert "needs a table of space onnx" in _cli_error(capsys, ["predict", "--table", "darts_ort-cpu", "--model",
                                                                net_onnx])
