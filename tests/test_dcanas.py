"""DCA-NAS supernet options: weight sharing (eq. 5), channel bottleneck, derived cells; dcanas searches."""

import pytest
import torch
import torch.nn.functional as F

from costmodels.cost_tensor import darts_edges
from search.dcanas import DcaDartsSupernet, DcaGraph, DcaNb201Supernet
from search.run import SearchConfig, SearchRun, run_search
from search.supernet import SupernetConfig, build_supernet
from spaces import HwcostError
from spaces.nb201_arch import EDGES as NB201_EDGES

NB_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")


def _graph(share, bottleneck=1, C=4):
    return DcaGraph("nb201", C, NB201_EDGES, 1, lambda i: 1, NB_OPS, share, bottleneck).double()


def test_shared_ops_are_one_parameter_per_source_and_op():
    g = _graph(share=True)
    for o in range(len(NB_OPS)):
        for e, (_, i) in enumerate(NB201_EDGES):
            for e2, (_, i2) in enumerate(NB201_EDGES):
                same = g.op_module(e, o) is g.op_module(e2, o)
                assert same == (i == i2), (e, e2, o)
    w = g.op_module(0, NB_OPS.index("nor_conv_3x3"))[1].weight
    assert w is g.op_module(NB201_EDGES.index((2, 0)), NB_OPS.index("nor_conv_3x3"))[1].weight
    # sources 0, 1, 2 each hold one op list
    assert len(g.ops) == 3


def test_shared_gradient_is_the_sum_of_the_edges_gradients():
    """Autograd on an unshared copy (each edge its own copy of the shared weights) gives each
    edge's gradient separately; the shared parameter's gradient must be their sum."""
    torch.manual_seed(0)
    shared = _graph(share=True)
    unshared = _graph(share=False)
    for e, (_, i) in enumerate(NB201_EDGES):   # every edge starts from its source's shared weights
        unshared.ops[f"e{e}"].load_state_dict(shared.ops[f"s{i}"].state_dict())
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = F.softmax(torch.randn(len(NB201_EDGES), len(NB_OPS), dtype=torch.float64), -1)
    t = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    out_s = (shared([x], w)[-1] * t).sum()
    out_u = (unshared([x], w)[-1] * t).sum()
    torch.testing.assert_close(out_s, out_u)
    out_s.backward()
    out_u.backward()
    conv = NB_OPS.index("nor_conv_3x3")
    for i in range(3):
        g_shared = shared.ops[f"s{i}"][conv][1].weight.grad
        leaving = [e for e, (_, src) in enumerate(NB201_EDGES) if src == i]
        g_sum = sum(unshared.ops[f"e{e}"][conv][1].weight.grad for e in leaving)
        assert len(leaving) == 3 - i
        torch.testing.assert_close(g_shared, g_sum)
        if len(leaving) > 1:   # really accumulated: not just one edge's share
            one = unshared.ops[f"e{leaving[0]}"][conv][1].weight.grad
            assert not torch.allclose(g_shared, one)


def test_cached_forward_equals_the_textbook_sum():
    torch.manual_seed(1)
    for cfg in (SupernetConfig(C=4, layers=3, share_weights=True, bottleneck=2),
                SupernetConfig(space="nb201", C=4, nb201_N=1, share_weights=True, bottleneck=2, max_w=True),
                SupernetConfig(space="sharpdarts", C=4, layers=3, share_weights=True)):
        net = build_supernet(cfg).double()
        net.alphas.data.normal_()
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        a, b = net(x), net(x, plain=True)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.square().sum(), net.alphas)[0]
        gb = torch.autograd.grad(net(x, plain=True).square().sum(), net.alphas)[0]
        torch.testing.assert_close(ga, gb)


def _darts_op_params(op: str, c: int, stride: int) -> int:
    """Closed forms (REFERENCE.md's DARTS ops, BN without affine)."""
    k = {"3x3": 9, "5x5": 25}
    if op.startswith("sep_conv"):
        return 2 * (c * k[op[-3:]] + c * c)
    if op.startswith("dil_conv"):
        return c * k[op[-3:]] + c * c
    if op == "skip_connect" and stride == 2:
        return 2 * c * (c // 2)          # FactorizedReduce: two 1x1 convs to c/2
    return 0


@pytest.mark.parametrize("share,b", [(True, 2), (False, 2), (True, 1), (True, 4)])
def test_bottleneck_shapes_and_parameter_count(share, b):
    C, c_prev = 8, 24
    cfg = SupernetConfig(C=C, layers=3, share_weights=share, bottleneck=b)
    net = DcaDartsSupernet(cfg)
    cell = net.cells[1]                  # a reduction cell: stride-2 edges from the inputs
    Cc = 2 * C
    assert cell.reduction
    cb = Cc // b
    edges = darts_edges(4)
    sources = range(5)                   # node 5 feeds no edge
    stride = lambda i: 2 if i < 2 else 1  # noqa: E731
    if share:
        ops = sum(_darts_op_params(op, cb, stride(i)) for i in sources for op in DARTS_OPS)
    else:
        ops = sum(_darts_op_params(op, cb, stride(i)) for _, i in edges for op in DARTS_OPS)
    proj = (5 * Cc * cb + 4 * cb * Cc) if b > 1 else 0
    assert sum(p.numel() for p in cell.graph.parameters()) == ops + proj
    for e in range(len(edges)):
        conv = cell.graph.op_module(e, DARTS_OPS.index("sep_conv_3x3"))
        assert conv.hw_args["c_in"] == conv.hw_args["c_out"] == cb
    # shapes: the ops see C/b channels, the nodes C
    seen = {}
    hooks = [cell.graph.op_module(e, DARTS_OPS.index("sep_conv_3x3")).register_forward_hook(
        lambda m, i, o, e=e: seen.update({e: (i[0].shape[1], o.shape[1])}) and None) for e in range(len(edges))]
    s0 = torch.randn(2, c_prev, 8, 8)
    out = cell(s0, torch.randn(2, 4 * C, 8, 8), weights=F.softmax(torch.randn(14, 8), -1))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 4 * Cc, 4, 4)
    assert set(seen.values()) == {(cb, cb)}


def test_derived_cells_run_only_the_derived_ops():
    torch.manual_seed(0)
    cfg = SupernetConfig(C=4, layers=4, derived_cells=True)
    net = DcaDartsSupernet(cfg)
    assert [c.searchable for c in net.cells] == [True, True, False, False]   # cells 0 (normal) and 1 (reduce)
    net.alphas.data.normal_()
    choice = net.derived_choice()
    F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    derived = net.cells[3]                # normal, derived
    picked = set(choice[0])
    assert len(picked) == 8
    for e in range(14):
        for o, op in enumerate(DARTS_OPS):
            if op in ("sep_conv_3x3", "dil_conv_5x5"):
                grad = next(derived.graph.op_module(e, o).parameters()).grad
                assert (grad is not None) == ((e, o) in picked), (e, op)
                g_mixed = next(net.cells[0].graph.op_module(e, o).parameters()).grad
                assert g_mixed is not None           # the mixed cell runs every op
    assert net.alphas.grad is not None and torch.isfinite(net.alphas.grad).all()


def test_derived_choice_follows_the_darts_rule():
    from costmodels.expected_cost import derive_darts
    net = DcaDartsSupernet(SupernetConfig(C=4, layers=3, derived_cells=True))
    net.alphas.data.normal_()
    w = F.softmax(net.alphas.detach(), -1)
    g = derive_darts(w[0], w[1], DARTS_OPS)
    edges = darts_edges(4)
    for k, cell in enumerate((g.normal, g.reduce)):
        want = [(edges.index((n // 2 + 2, src)), DARTS_OPS.index(op)) for n, (op, src) in enumerate(cell)]
        assert net.derived_choice()[k] == want
    nb = DcaNb201Supernet(SupernetConfig(space="nb201", C=4, nb201_N=2, derived_cells=True))
    nb.alphas.data.normal_()
    assert [c.searchable for c in nb.layers if hasattr(c, "searchable")] == [True] + [False] * 5
    assert nb.derived_choice() == [(e, int(nb.alphas[0, e].argmax())) for e in range(6)]


@pytest.mark.parametrize("kw,match", [
    (dict(bottleneck=3, C=8), "divide"), (dict(bottleneck=8, C=8), "even"),
    (dict(share_weights=True, partial_k=2, C=8), "partial channels"),
])
def test_bad_dcanas_supernets(kw, match):
    with pytest.raises(HwcostError, match=match):
        build_supernet(SupernetConfig(layers=3, **kw))


FAST = dict(data="synthetic", epochs=3, steps_per_epoch=3, batch_size=16, C=4, layers=3, threads=1, arch_lr=0.05)


def test_dcanas_strategy_builds_the_dcanas_supernet(tmp_path):
    run = SearchRun(SearchConfig(space="nb201", strategy="dcanas", **FAST), tmp_path / "r")
    assert isinstance(run.model, DcaNb201Supernet)
    assert (run.net_cfg.share_weights, run.net_cfg.bottleneck, run.net_cfg.derived_cells) == (True, 4, True)
    off = SearchRun(SearchConfig(space="nb201", strategy="dcanas", share_weights=False, bottleneck=1,
                                 derived_cells=False, **FAST), tmp_path / "s")
    assert type(off.model).__name__ == "Nb201Supernet"


# (nb201: the cost-only and hard-budget toys of tests/test_search.py run every strategy, dcanas included)
@pytest.mark.slow   # the darts target network's cost tensor and derived costs: ~15 s alone
def test_dcanas_darts_cost_only_objective_avoids_convs(tmp_path):
    cfg = SearchConfig(space="darts", strategy="dcanas", bottleneck=2, penalties=["params=1e-2"], **FAST)
    r = run_search(cfg, tmp_path / "a", progress=False)
    ops = [op for cell in ("normal", "reduce") for op, _ in r["genotype"][cell]]
    assert not any(op.startswith(("sep_conv", "dil_conv")) for op in ops), ops
    assert r["dcanas"] == {"share_weights": True, "bottleneck": 2, "derived_cells": True}


def test_dcanas_darts_hard_budget_is_met(tmp_path):
    budget = 1.6e6       # the parameter-free cells' network has 1.37M (stem, preprocessing, classifier)
    r = run_search(SearchConfig(space="darts", strategy="dcanas", bottleneck=2, budgets=[f"params={budget}"],
                                **FAST), tmp_path / "b", progress=False)
    assert r["within_budget"] == {"params": True} and r["derived"]["params"] <= budget
