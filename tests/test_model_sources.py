"""--model forms (issue 12, part 1): torchvision:NAME, timm:NAME (optional extra) and the user's own
package.module:factory -- each one resolves to a module, and each bad spec is one clear error."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from hwcost.cli import main
from profilers.shapes import model_layer_keys, resolve_model
from spaces.errors import HwcostError

USER_MODULE = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))

def broken():
    raise RuntimeError("no weights here")

def not_a_module():
    return 42

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_pkg.nets"
    for name in ("my_pkg.nets", "my_pkg"):
        sys.modules.pop(name, None)


def test_a_factory_of_the_users_package_is_built_and_keyed(user_pkg):
    model = resolve_model(f"{user_pkg}:build")
    assert isinstance(model, nn.Sequential) and not model.training
    layers = model_layer_keys(model, (1, 3, 16, 16))
    assert [layer.key.op for layer in layers] == [type(m).__name__ for m in model]   # one key per layer, in order
    dense, depthwise = layers[0].key, layers[3].key
    # the depthwise conv is a key of its own (its groups), next to the dense one
    assert dict(depthwise.extra).get("groups") == 8 and dict(dense.extra).get("groups", 1) == 1


@pytest.mark.parametrize("spec,match", [
    ("my_pkg.nets:missing", "has no callable 'missing'"),
    ("my_pkg.nets:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
    ("my_pkg.nets:broken", r"broken\(\) raised RuntimeError: no weights here"),
    ("my_pkg.nets:not_a_module", "returned int, not a torch.nn.Module"),
    ("no_such_pkg.nets:build", "cannot import no_such_pkg.nets .*PYTHONPATH"),
    ("my pkg:build", "expected torchvision:NAME, timm:NAME or package.module:factory"),
    ("mobilenet_v2", "expected torchvision:NAME"),
    ("torchvision:no_such_net", "unknown torchvision model"),
])
def test_bad_model_specs_are_one_clear_error(user_pkg, spec, match):
    with pytest.raises(HwcostError, match=match):
        resolve_model(spec)


def test_timm_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)     # import timm -> ImportError
    with pytest.raises(HwcostError, match=r"pip install -e '\.\[timm\]'"):
        resolve_model("timm:efficientnet_b0")


def test_timm_names_resolve_through_timm(monkeypatch):
    made = []
    fake = types.SimpleNamespace(
        list_models=lambda pattern=None: ["resnet10t", "resnet18"] if pattern in (None, "*resnet*") else [],
        create_model=lambda name, pretrained: made.append((name, pretrained)) or nn.Linear(2, 2))
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert isinstance(resolve_model("timm:resnet10t"), nn.Linear)
    assert made == [("resnet10t", False)]                    # never pretrained: nothing downloads
    with pytest.raises(HwcostError, match="unknown timm model 'resnet_nope'; similar: resnet10t, resnet18"):
        resolve_model("timm:resnet_nope")


def test_cli_profile_and_predict_take_a_users_factory(user_pkg, tmp_path, capsys):
    table = tmp_path / "mine.json"
    assert main(["profile", "--model", f"{user_pkg}:build", "--input", "1x3x16x16", "--backend", "torch-cpu",
                 "--max-time", "0.05", "--out", str(table)]) == 0
    capsys.readouterr()
    assert main(["predict", "--table", str(table), "--model", f"{user_pkg}:build", "--input", "1x3x16x16"]) == 0
    assert "ms" in capsys.readouterr().out
    assert main(["predict", "--table", str(table), "--model", f"{user_pkg}:broken", "--input", "1x3x16x16"]) == 2
    err = capsys.readouterr().err
    assert "broken() raised RuntimeError" in err and "Traceback" not in err


class _Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it) and, with ``functional``, a matmul in
    forward that no leaf module holds."""

    def __init__(self, functional: bool):
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Linear(8, 8)
        self.pool, self.functional = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), functional

    def forward(self, x):
        y = self.conv(x)
        if x.size(0) > 0:                        # control flow on a traced value: torch.fx refuses
            y = self.act(y)
        y = self.pool(y)
        if self.functional:
            y = y @ torch.ones(8, 256) @ torch.ones(256, 8)   # compute outside any leaf module
        return self.fc(y)


class _WithDefaultArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, dim: int = 1):            # traced as a placeholder with a default (as timm's is_causal)
        return torch.softmax(self.conv(x), dim=dim)


def test_an_untraceable_model_whose_compute_hooks_miss_is_one_clear_error():
    with pytest.raises(HwcostError, match=r"_Untraceable cannot be keyed layer by layer: torch.fx cannot trace it "
                                          r"\(TraceError.*\).*runs outside its leaf modules \(.*mm.*\).*ONNX"):
        model_layer_keys(_Untraceable(functional=True), (1, 3, 8, 8))
    layers = model_layer_keys(_Untraceable(functional=False), (1, 3, 8, 8))   # hooks see it all: fine
    assert [layer.key.op for layer in layers] == ["Conv2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]


def test_forward_arguments_after_the_input_keep_their_defaults():
    layers = model_layer_keys(_WithDefaultArgument(), (1, 3, 4, 4))
    assert [layer.key.op for layer in layers] == ["Conv2d", "softmax"]   # before: the input tensor passed as dim
    out = layers[1].module(*layers[1].inputs)
    assert torch.allclose(out.sum(1), torch.ones(1, 4, 4))              # softmax over channels (dim=1)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mixnet_s", "ghostnet_100", "rexnet_100", "convnext_atto",
                                  "deit_tiny_patch16_224", "levit_128s"])
def test_real_timm_models_are_keyed(name):
    """Grouped and mixed-kernel depthwise convs, split/concat, SE gates, hard-swish, attention (runs where
    the optional timm extra is installed)."""
    pytest.importorskip("timm")
    model = resolve_model(f"timm:{name}")
    layers = model_layer_keys(model, (1, 3, 224, 224))
    assert layers and all(layer.count >= 1 for layer in layers)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as c:                 # every FLOP of the model is in some key's layer
        model(torch.randn(1, 3, 224, 224))
    keyed = 0
    for layer in layers:
        with FlopCounterMode(display=False) as one:
            layer.module(*layer.inputs)
        keyed += one.get_total_flops() * layer.count
    assert keyed == pytest.approx(c.get_total_flops(), rel=1e-6)


def test_an_untraceable_timm_model_is_refused_not_undercounted():
    pytest.importorskip("timm")
    with pytest.raises(HwcostError, match="ByobNet cannot be keyed layer by layer"):
        model_layer_keys(resolve_model("timm:mobilevit_xxs"), (1, 3, 224, 224))


def test_fx_layer_names_follow_the_keyed_nodes_in_order():
    # benchmarks/node_context.py times each keyed node where it runs in the network by its fx name: the names
    # must be the nodes' own, one per keyed layer, in the order they run (a functional add included).
    import torch.fx as fx
    from spaces.opkeys import _fx_layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)) + x).flatten(1)

    gm = fx.symbolic_trace(Block().eval())
    names: list[str] = []
    with torch.no_grad():
        raw = _fx_layers(gm, torch.randn(1, 4, 6, 6), names)
    assert names == ["conv", "bn", "add", "act", "flatten"]
    assert [k.op for k, _, _ in raw] == ["Conv2d", "BatchNorm2d", "add", "ReLU", "flatten"]
    assert set(names) <= {n.name for n in gm.graph.nodes}
