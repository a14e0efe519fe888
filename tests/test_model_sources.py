"""--model forms (issue 12, part 1): torchvision:NAME, timm:NAME (optional extra) and the user's own
package.module:factory -- each one resolves to a module, and each bad spec is one clear error."""
from __future__ import annotations

import sys
import types

import pytest
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
