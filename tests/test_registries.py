"""Extension by registration: a name registers once, and a strategy is one plug-in object."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from spaces import HwcostError


def test_a_backend_name_registers_once():
    from profilers.backends import _BACKENDS, _PREFIXES, register_backend
    with pytest.raises(HwcostError, match="'torch-cpu' is already registered"):
        register_backend("torch-cpu")(type("Again", (), {}))
    with pytest.raises(HwcostError, match="'ort:' is already registered"):
        register_backend("ort:", prefix=True)(type("Again", (), {}))
    assert _BACKENDS["torch-cpu"].__name__ != "Again" and _PREFIXES["ort:"].__name__ != "Again"


def test_a_strategy_name_registers_once():
    from search.strategies import STRATEGIES, Strategy, register_strategy
    darts = STRATEGIES["darts"]
    with pytest.raises(HwcostError, match="'darts' is already registered"):
        register_strategy(Strategy(name="darts", arch_lr=1.0, weight_lr=1.0, weight_lr_min=0.0, doc="again"))
    assert STRATEGIES["darts"] is darts


def test_a_new_strategy_is_one_registered_object(tmp_path, monkeypatch):
    """A plug-in overriding the alpha step runs through SearchRun without any change there."""
    from search import strategies
    from search.run import SearchConfig, run_search
    from search.strategies import Strategy, register_strategy

    calls = []

    @dataclass(frozen=True, kw_only=True)
    class FrozenAlpha(Strategy):
        def alpha_grads(self, arch, x_train, y_train, x_val, y_val, eta):
            calls.append(eta)
            loss_val = arch.loss(x_val, y_val)
            for p in arch.model.arch_parameters():
                p.grad = torch.zeros_like(p)
            return loss_val

    monkeypatch.setattr(strategies.base, "STRATEGIES", dict(strategies.STRATEGIES))
    register_strategy(FrozenAlpha(name="frozen", arch_lr=0.1, weight_lr=0.01, weight_lr_min=0.0, doc="test"))
    cfg = SearchConfig(space="nb201", strategy="frozen", data="synthetic", epochs=1, steps_per_epoch=2,
                       batch_size=8, C=4, layers=3, threads=1)
    result = run_search(cfg, tmp_path / "r", progress=False)
    assert result["strategy"] == "frozen" and len(calls) == 2
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["strategy"]["name"] == "frozen"
