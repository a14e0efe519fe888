"""The fast supernet forward (search/fast.py) computes the textbook weighted sum.

Same parameters, same input: ``model(x)`` after ``accelerate`` against a deep
copy's ``model(x, plain=True)`` (every op, ``none`` included), comparing the
loss, the alpha/beta gradients, every weight gradient and the BN running
statistics, in float64 (tight) and float32 (1e-5-ish).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import search.fast as fast
from search.fast import accelerate, depthwise_conv2d, pointwise_conv2d
from search.supernet import SupernetConfig, build_supernet


def _pair(dtype=torch.float64, seed=0, batch=2, **cfg):
    """(fast model, plain copy, x, y): layers=3 has a normal cell and two reduction cells."""
    torch.manual_seed(seed)
    kw = dict(C=8, layers=3, num_classes=5)
    kw.update(cfg)
    plain = build_supernet(SupernetConfig(**kw)).to(dtype)
    with torch.no_grad():  # away from the near-uniform init, so every op's weight matters
        for p in plain.arch_parameters():
            p.normal_()
    fast_model = accelerate(copy.deepcopy(plain))
    x = torch.randn(batch, 3, 8, 8, dtype=dtype)
    y = torch.randint(0, 5, (batch,))
    return fast_model, plain, x, y


def _grads(model, x, y, plain):
    loss = F.cross_entropy(model(x, plain=plain), y)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return loss, dict(zip(names, grads))


def _assert_same(fast_model, plain, x, y, tol):
    loss_f, g_f = _grads(fast_model, x, y, plain=False)
    loss_p, g_p = _grads(plain, x, y, plain=True)
    torch.testing.assert_close(loss_f, loss_p, rtol=tol, atol=tol)
    assert g_f.keys() == g_p.keys()
    for name, gp in g_p.items():
        gf = g_f[name]
        assert (gf is None) == (gp is None), name
        if gp is not None:
            scale = gp.abs().max().item() + 1e-30
            torch.testing.assert_close(gf, gp, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")
    for (name, bf), bp in zip(fast_model.named_buffers(), plain.buffers()):
        torch.testing.assert_close(bf, bp, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


# every value of each factor meets every value of each other factor at least once;
# C=8 runs the grouped 1x1 conv, C=16 the batched matmul; merged = ops sharing kernels
COMBOS = [(1, False, 8, True), (1, True, 16, False), (4, False, 16, True), (4, True, 8, False),
          (1, False, 16, False), (4, True, 16, True)]


@pytest.mark.parametrize("partial_k,max_w,C,merge", COMBOS,
                         ids=[f"K{k}-{'maxw' if m else 'softmax'}-C{c}-{'merged' if g else 'per-op'}"
                              for k, m, c, g in COMBOS])
def test_fast_equals_plain_float64(partial_k, max_w, C, merge, monkeypatch):
    if not merge:  # every conv op with its own kernels, as on large maps
        monkeypatch.setattr(fast, "MERGE_MAX_POSITIONS", 0)
    fast_model, plain, x, y = _pair(C=C, partial_k=partial_k, max_w=max_w)
    _assert_same(fast_model, plain, x, y, tol=1e-9)


@pytest.mark.parametrize("partial_k", [1, 4])
def test_fast_equals_plain_float32(partial_k):
    # batch 4: with 2 images the BNs of the 2x2 maps see 8 values and amplify float32 rounding
    fast_model, plain, x, y = _pair(torch.float32, batch=4, C=16, partial_k=partial_k, max_w=True)
    _assert_same(fast_model, plain, x, y, tol=3e-5)


def test_second_step_and_primitive_subset():
    # two consecutive steps (running statistics, bound BN views) and a P-DARTS-like op subset
    fast_model, plain, x, y = _pair(primitives=("none", "skip_connect", "sep_conv_5x5", "dil_conv_5x5"))
    _assert_same(fast_model, plain, x, y, tol=1e-9)
    _assert_same(fast_model, plain, x, y, tol=1e-9)


def test_buffers_replaced_by_to_are_rebound():
    fast_model, plain, x, y = _pair(torch.float32)
    _grads(fast_model, x, y, plain=False)   # binds the BN running statistics to flat buffers
    fast_model.load_state_dict(plain.state_dict())   # copies into the bound views
    fast_model.double()                     # replaces every buffer
    plain.double()
    _assert_same(fast_model, plain, x.double(), y, tol=1e-9)


def test_state_dict_and_eval_mode_unchanged():
    fast_model, plain, x, y = _pair()
    _grads(fast_model, x, y, plain=False)
    _grads(plain, x, y, plain=True)
    sd_f, sd_p = fast_model.state_dict(), plain.state_dict()
    assert sd_f.keys() == sd_p.keys()
    for k in sd_p:
        torch.testing.assert_close(sd_f[k], sd_p[k], rtol=1e-9, atol=1e-9)
    fresh = build_supernet(SupernetConfig(C=8, layers=3, num_classes=5)).double()
    fresh.load_state_dict(sd_f)
    fast_model.eval(), plain.eval(), fresh.eval()
    with torch.no_grad():
        out = fast_model(x)
        torch.testing.assert_close(out, plain(x, plain=True), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out, fresh(x, plain=True), rtol=1e-9, atol=1e-9)


def test_second_order_architect_gradient():
    from search.strategies import Architect, get_strategy
    fast_model, plain, x, y = _pair(primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3",
                                                "dil_conv_5x5"))
    spec = get_strategy("darts-2nd")
    grads = []
    for model, is_plain in ((fast_model, False), (plain, True)):
        if is_plain:
            model.forward = lambda inp, _f=model.forward: _f(inp, plain=True)
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        arch = Architect(model, spec, w_opt, lambda: torch.zeros(()))
        arch.optimizer.step = lambda: None   # keep alpha; compare the gradient
        arch.step(x, y, x.flip(0), y.flip(0), 0.025)
        grads.append(model.alphas.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)


def test_unsupported_space_falls_back():
    fast_model, plain, x, y = _pair(space="sharpdarts")
    assert fast._plan(fast_model.cells[0]) is None
    with torch.no_grad():
        torch.testing.assert_close(fast_model(x), plain(x, plain=True), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k,d", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [2, 4, 7, 9])
def test_depthwise_conv2d_matches_conv2d(k, d, stride, size):
    torch.manual_seed(0)
    x = torch.randn(3, 6, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 1, k, k, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, d * (k - 1) // 2, d, 6)
    out = depthwise_conv2d(x, w, stride, d)
    g = torch.randn_like(ref)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [8, 16, 32])
def test_pointwise_conv2d_matches_grouped_conv(c):
    torch.manual_seed(0)
    x = torch.randn(2, 3 * c, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(3 * c, c, 1, 1, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, None, 1, 0, 1, 3)
    out = pointwise_conv2d(x, w, 3)
    g = torch.randn_like(ref)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
