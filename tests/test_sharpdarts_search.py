"""sharpDARTS in the search: Max-W (eq. 3) in every strategy, Cosine Power Annealing, the sharpdarts space."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search.run import SearchConfig, SearchRun, run_search
from search.strategies import STRATEGIES
from search.supernet import MixedOp, SupernetConfig, build_supernet, mix_weights
from spaces.registry import get_space

TINY = dict(data="synthetic", epochs=2, steps_per_epoch=2, batch_size=8, C=4, layers=3, threads=1)


def test_max_w_by_hand():
    # w = softmax(alpha) = (0.5, 0.3, 0.2): eq. 3 gives 1 - 0.5 + w = (1.0, 0.8, 0.7)
    alpha = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    torch.testing.assert_close(mix_weights(alpha, max_w=True), torch.tensor([1.0, 0.8, 0.7], dtype=torch.float64))
    torch.testing.assert_close(mix_weights(alpha), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


def test_max_w_mixed_op_output_is_eq3():
    torch.manual_seed(0)
    prims = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "flood_conv_3x3")
    op = MixedOp("sharpdarts", 4, 1, prims).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    alpha = torch.randn(len(prims), dtype=torch.float64)
    p = np.exp(alpha.numpy()) / np.exp(alpha.numpy()).sum()
    w = torch.from_numpy(1.0 - p.max() + p)              # eq. 3, computed in numpy
    want = sum(w[i] * op.ops[i](x) for i in range(len(prims)))
    torch.testing.assert_close(op(x, mix_weights(alpha, max_w=True)), want)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_max_w_reaches_every_strategy(strategy, tmp_path):
    kw = {"penalties": ["params=1e-7"]} if STRATEGIES[strategy].needs_terms else {}
    if STRATEGIES[strategy].progressive:
        kw["stages"] = [3, 3]
    run = SearchRun(SearchConfig(space="nb201", strategy=strategy, max_w=True, **TINY, **kw), tmp_path / "r")
    assert run.model.config.max_w
    if run.stages:          # also past a stage transition, where some ops are masked
        run._train_stage()
        run._next_stage()
        assert run.model.config.max_w and run.model.op_mask is not None
    with torch.no_grad():
        run.model.alphas.normal_()
    logits = run.model.arch_logits().detach().double().numpy()
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = 1.0 - p.max(-1, keepdims=True) + p
    got = run.model.op_weights().detach().double().numpy()
    alive = np.isfinite(logits)
    np.testing.assert_allclose(got[alive], want[alive], rtol=1e-6)


def test_cpa_learning_rate_in_the_search_log(tmp_path):
    cfg = SearchConfig(space="nb201", strategy="darts", lr_schedule="cpa", lr_power=10.0, weight_lr=0.1,
                       **{**TINY, "epochs": 4, "steps_per_epoch": 1})
    run_search(cfg, tmp_path / "r", progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    # sharpDARTS eq. 2 written out: lr_min + (lr_max - lr_min) (p^(c+1) - p) / (p^2 - p), c = (1 + cos(pi t/T)) / 2
    lr_min = STRATEGIES["darts"].weight_lr_min
    want = []
    for t in range(4):
        c = (1 + math.cos(math.pi * t / 4)) / 2
        want.append(lr_min + (0.1 - lr_min) * (10 ** (c + 1) - 10) / (100 - 10))
    assert lrs == pytest.approx(want)
    assert lrs[0] == pytest.approx(0.1)


def test_sharpdarts_supernet_runs_every_primitive():
    torch.manual_seed(0)
    net = build_supernet(SupernetConfig(space="sharpdarts", C=4, layers=3, max_w=True))
    assert net.cells[0].mixed[0].primitives == get_space("sharpdarts").primitives
    x = torch.randn(2, 3, 8, 8)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(net.alphas.grad).all() and net.alphas.grad.abs().sum() > 0
    for name, prm in net.named_parameters():
        if ".ops." in name:
            assert prm.grad is not None, name


@pytest.mark.slow   # the sharpdarts target network's cost tensor takes ~15 s to build
def test_sharpdarts_search_runs(tmp_path):
    cfg = SearchConfig(space="sharpdarts", strategy="darts", max_w=True, lr_schedule="cpa",
                       penalties=["params=1e-6"], **TINY)
    r = run_search(cfg, tmp_path / "r", progress=False)
    prims = set(get_space("sharpdarts").primitives) - {"none"}
    assert r["space"] == "sharpdarts" and r["max_w"] and r["lr_schedule"] == "cpa"
    assert all(op in prims for cell in ("normal", "reduce") for op, _ in r["genotype"][cell])
    assert r["derived"]["params"] > 0
