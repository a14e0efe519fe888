"""Expected cost (RAPDARTS eq. 7-9) and the derivation-aware cost, against independent counts.

Ground truth is ``network_costs`` of the network built from a genotype; the
gradient is checked against eq. 8 written out and against finite differences.
Small target networks keep the suite fast where a property does not depend on
size; one check runs on the real CIFAR eval network (C=36, 20 cells).
"""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from costmodels.analytical import network_costs
from costmodels.cost_tensor import CostTensor, build_cost_tensor
from costmodels.costmodel import CostModel
from costmodels.expected_cost import (ExpectedCost, arch_weights, derive_darts, derive_nb201,
                                      edge_softmax, soft_topk)
from device_tables import DeviceTable, Entry, MissingKeyError
from spaces import BUILTIN_GENOTYPES, CifarNetConfig, HwcostError, Nb201NetConfig, build_network
from spaces.sharpdarts import PRIMITIVES as SHARP_PRIMITIVES

METRICS = ("params", "macs", "activation_bytes")
NB201_ANY = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops; more threads only contend
    yield
    torch.set_num_threads(threads)


def small(space="darts", genotype="DARTS_V2", **kw):
    # 5 cells: normal, reduce, normal after a reduction, reduce, normal.
    return CifarNetConfig(BUILTIN_GENOTYPES[genotype][1], space, **{"C": 8, "layers": 5, "input_size": 16, **kw})


@pytest.fixture(scope="module")
def darts_ct():
    return build_cost_tensor("darts", small(), metrics=METRICS)


@pytest.fixture(scope="module")
def sharp_ct():
    # SHARPSEPCONV_DARTS uses avg_pool_3x3, which is not a default sharpdarts primitive.
    return build_cost_tensor("sharpdarts", small("sharpdarts", "SHARP_DARTS"), metrics=METRICS,
                             primitives=SHARP_PRIMITIVES + ("avg_pool_3x3",))


@pytest.fixture(scope="module")
def nb201_ct():
    return build_cost_tensor("nb201", Nb201NetConfig(NB201_ANY, C=8, N=2), metrics=METRICS)


_costs_cache: dict = {}


def analytical(config):
    """network_costs of the network ``config`` describes (memoised: configs repeat)."""
    key = repr(config)
    if key not in _costs_cache:
        net = build_network(config)
        _costs_cache[key] = network_costs(net, net.input_shape())
    return _costs_cache[key]


def as_ints(values) -> list[int]:
    return [int(round(float(v))) for v in values]


def node_sets(g):
    """A genotype's edges as {node: {(op, input)}}: the order within a node is not structure."""
    return [[frozenset(cell[2 * n:2 * n + 2]) for n in range(len(cell) // 2)] for cell in (g.normal, g.reduce)]


# ---------------------------------------------------------------------------
# Gradient: RAPDARTS eq. 8 and autograd


def test_gradient_is_rapdarts_eq8(darts_ct):
    ec = ExpectedCost(darts_ct)
    alphas = torch.randn(2, 14, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alphas.requires_grad_(True)
    c = darts_ct.c.numpy()
    for m in range(len(METRICS)):
        (grad,) = torch.autograd.grad(ec(alphas)[m], alphas)
        # eq. 8, literally: dE/dalpha_i = sum_l c_l p_l (delta_il - p_i), per mixed op.
        p = torch.softmax(alphas.detach(), -1).numpy()
        want = np.zeros_like(p)
        for k in range(2):
            for e in range(14):
                for i in range(8):
                    want[k, e, i] = sum(c[k, e, l, m] * p[k, e, l] * ((i == l) - p[k, e, i]) for l in range(8))
        np.testing.assert_allclose(grad.numpy(), want, rtol=1e-12, atol=1e-9 * np.abs(c[..., m]).max())


def test_gradcheck_float64(darts_ct, nb201_ct):
    for ct in (darts_ct, nb201_ct):
        ec = ExpectedCost(ct)
        scale = ct.c.abs().amax(dim=(0, 1, 2)).clamp_min(1.0)
        a = (0.5 * torch.randn(len(ct.cell_types), len(ct.edges), len(ct.ops), dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(lambda a: ec(a) / scale, (a,))
    ec = ExpectedCost(darts_ct)   # with PC-DARTS beta
    scale = darts_ct.c.abs().amax(dim=(0, 1, 2))
    a = (0.5 * torch.randn(2, 14, 8, dtype=torch.float64)).requires_grad_()
    b = (0.5 * torch.randn(2, 14, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ec(a, b) / scale, (a, b))


def test_expected_with_beta_weights_edges_by_two_softmax_beta(darts_ct):
    ec = ExpectedCost(darts_ct)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 14, 8, dtype=torch.float64, generator=g), torch.randn(2, 14, dtype=torch.float64, generator=g)
    p = torch.softmax(a, -1)
    want = darts_ct.fixed.clone()
    e = 0
    for j in range(2, 6):                    # node j takes inputs 0..j-1
        idx = list(range(e, e + j))
        sb = torch.softmax(b[:, idx], -1)
        for n, edge in enumerate(idx):
            mult = torch.ones(2, dtype=torch.float64) if j == 2 else 2 * sb[:, n]
            for k in range(2):
                want += mult[k] * (p[k, edge, :, None] * darts_ct.c[k, edge]).sum(0)
        e += j
    torch.testing.assert_close(ec(a, b), want, rtol=1e-12, atol=1e-6)


def test_nb201_ignores_beta(nb201_ct):
    ec = ExpectedCost(nb201_ct)
    a = torch.randn(1, 6, 5, dtype=torch.float64)
    assert torch.equal(ec(a), ec(a, torch.randn(1, 6, dtype=torch.float64)))


# ---------------------------------------------------------------------------
# Derived value at one-hot weights == analytical cost of the derived network


@pytest.mark.parametrize("space,name", [("darts", "DARTS_V2"), ("darts", "PC_DARTS_CIFAR"), ("darts", "DARTS_V1"),
                                        ("darts", "PDARTS"), ("sharpdarts", "SHARP_DARTS"),
                                        ("sharpdarts", "SHARPSEPCONV_DARTS")])
def test_derived_one_hot_equals_network_costs(space, name, darts_ct, sharp_ct):
    ct = darts_ct if space == "darts" else sharp_ct
    g = BUILTIN_GENOTYPES[name][1]
    w = arch_weights(g, ct.ops)
    ec = ExpectedCost(ct, mode="derived")
    derived = ec.derive(weights=w)
    assert node_sets(derived) == node_sets(g)
    truth = analytical(small(space, name))
    # Every additive metric, exactly (integers held exactly in float64).
    assert as_ints(ec(weights=w)) == [getattr(truth, m) for m in METRICS]
    # The network built from what derivation returned costs the same.
    assert analytical(dataclasses.replace(small(space, name), genotype=derived)).params == truth.params


def test_derived_on_the_cifar_eval_network_c36():
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    target = CifarNetConfig(g)   # C=36, 20 cells: the network DARTS reports
    ct = build_cost_tensor("darts", target, metrics=("params", "macs"))
    ec = ExpectedCost(ct, mode="derived")
    truth = analytical(target)
    assert as_ints(ec(weights=arch_weights(g, ct.ops))) == [truth.params, truth.macs]
    assert truth.params == 3_349_342   # the published 3.3M


@pytest.mark.parametrize("arch", [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|",
])
def test_nb201_one_hot_expected_and_derived_equal_network_costs(arch, nb201_ct):
    w = arch_weights(arch, nb201_ct.ops)
    truth = analytical(Nb201NetConfig(arch, C=8, N=2))
    want = [getattr(truth, m) for m in METRICS]
    for mode in ("expected", "derived"):   # the derived NB201 cell keeps every edge
        assert as_ints(ExpectedCost(nb201_ct, mode=mode)(weights=w)) == want
    assert derive_nb201(w[0], nb201_ct.ops) == arch


def test_fixed_cost_is_genotype_independent(darts_ct):
    for name in ("DARTS_V2", "PC_DARTS_CIFAR", "PDARTS"):
        g = BUILTIN_GENOTYPES[name][1]
        edges_cost = torch.einsum("keo,keom->m", arch_weights(g, darts_ct.ops), darts_ct.c)  # none costs 0
        truth = analytical(small("darts", name))
        assert as_ints(darts_ct.fixed) == [getattr(truth, m) - int(v) for m, v in zip(METRICS, edges_cost)]


def test_none_costs_nothing_in_darts(darts_ct):
    none = darts_ct.ops.index("none")
    assert torch.all(darts_ct.c[:, :, none] == 0)
    assert darts_ct.keys[0][0][none]   # but its keys are there, for a table that measured it


def test_metrics_selectable_by_name(darts_ct):
    a = torch.randn(2, 14, 8)
    full = ExpectedCost(darts_ct)(a)
    only = ExpectedCost(darts_ct, metrics=("macs",))
    assert only.metrics == ("macs",) and torch.equal(only(a), full[[1]])
    assert only.named(only(a)) == {"macs": float(full[1])}
    with pytest.raises(KeyError, match="unknown metric"):
        ExpectedCost(darts_ct, metrics=("flops",))


def test_alphas_as_dict_and_bad_shapes(darts_ct):
    ec = ExpectedCost(darts_ct)
    a = torch.randn(2, 14, 8)
    assert torch.equal(ec({"normal": a[0], "reduce": a[1]}), ec(a))
    with pytest.raises(HwcostError, match="shape"):
        ec(torch.randn(2, 14, 7))
    with pytest.raises(HwcostError, match="lack cell type"):
        ec({"normal": a[0]})


# ---------------------------------------------------------------------------
# Derivation: the DARTS rule, PC-DARTS beta, ties


def test_beta_flips_the_edge_choice(darts_ct):
    ops = darts_ct.ops
    w = torch.zeros(2, 14, 8)
    w[..., ops.index("max_pool_3x3")] = 0.1       # every edge weak
    # Node 3 (edges 2, 3, 4 from states 0, 1, 2): alpha alone prefers inputs 1 and 0 ...
    w[0, 2, ops.index("sep_conv_3x3")] = 0.6
    w[0, 3, ops.index("sep_conv_5x5")] = 0.7
    w[0, 4, ops.index("skip_connect")] = 0.5
    plain = derive_darts(w[0], w[1], ops)
    assert set(plain.normal[2:4]) == {("sep_conv_5x5", 1), ("sep_conv_3x3", 0)}
    # ... and beta, favouring the edge from state 2, swaps input 0 for it.
    betas = torch.zeros(2, 14)
    betas[0, 4] = 3.0
    flipped = derive_darts(w[0], w[1], ops, betas=betas)
    assert set(flipped.normal[2:4]) == {("sep_conv_5x5", 1), ("skip_connect", 2)}
    ec = ExpectedCost(darts_ct, mode="derived")
    assert ec.derive(weights=w, betas=betas) == flipped
    assert (0, 4, ops.index("skip_connect")) in ec.chosen(weights=w, betas=betas)
    # The derived value follows the choice: it is the cost of the flipped genotype.
    for b, g in ((None, plain), (betas, flipped)):
        assert torch.equal(ec(weights=w, betas=b), ec(weights=arch_weights(g, ops)))
    assert not torch.equal(ec(weights=w), ec(weights=w, betas=betas))


def test_derivation_matches_the_darts_rule_and_breaks_ties_like_the_original():
    ops = ("none", "a", "b")
    w = torch.tensor([[0.9, 0.05, 0.05],    # 2<-0: none strongest, but none is never kept
                      [0.2, 0.3, 0.5],      # 2<-1
                      [0.0, 0.4, 0.4],      # 3<-0 tie between ops: the first (a)
                      [0.0, 0.1, 0.2],      # 3<-1
                      [0.0, 0.4, 0.1]])     # 3<-2 ties with 3<-0 on strength: the lower edge first
    g = derive_darts(w, w, ops, steps=2)
    assert g.normal == (("b", 1), ("a", 0), ("a", 0), ("a", 2))
    assert g.normal_concat == (2, 3)


# ---------------------------------------------------------------------------
# Derived mode away from one-hot: piecewise-constant value, straight-through gradient


def test_soft_top2_keeps_two_edges_per_node():
    groups = [[0, 1], [2, 3, 4], [5, 6, 7, 8]]
    s = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    g = soft_topk(s, groups, 2, tau=1.0)
    assert torch.equal(g[:, :2], torch.ones(2, 2, dtype=torch.float64))   # node 2 keeps both
    for idx in groups[1:]:
        torch.testing.assert_close(g[:, idx].sum(-1), torch.full((2,), 2.0, dtype=torch.float64))
        (grad,) = torch.autograd.grad(g[:, idx].sum(), s, retain_graph=True)
        assert grad.abs().max() < 1e-8      # the threshold moves so that two edges stay kept
    hard = soft_topk(s.detach(), groups, 2, tau=1e-5)   # tends to the hard top-2
    for idx in groups[1:]:
        top = torch.topk(s.detach()[:, idx], 2).indices
        want = torch.zeros(2, len(idx), dtype=torch.float64).scatter(1, top, 1.0)
        torch.testing.assert_close(hard[:, idx], want, atol=1e-6, rtol=0)


def test_derived_value_is_piecewise_constant_with_a_useful_gradient(darts_ct):
    ec = ExpectedCost(darts_ct, mode="derived", metrics=("params",))
    g = torch.Generator().manual_seed(0)
    a = 1e-3 * torch.randn(2, 14, 8, generator=g)   # the DARTS initialisation
    b = 1e-3 * torch.randn(2, 14, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    value = ec(a, b)
    ga, gb = torch.autograd.grad(value.sum(), (a, b))
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0 and gb.abs().sum() > 0
    # The value is the cost of the genotype derived now, and a small step does not change it.
    now = ec.derive(a, b)
    assert torch.equal(value.detach(), ec(weights=arch_weights(now, darts_ct.ops)))
    step = a.detach() + 1e-8 * torch.randn(2, 14, 8, generator=g)
    assert ec.derive(step, b) == now and torch.equal(ec(step, b), value.detach())
    # One-hot weights give finite gradients too (log and renormalisation are floored).
    w = arch_weights(BUILTIN_GENOTYPES["DARTS_V2"][1], darts_ct.ops).requires_grad_(True)
    (gw,) = torch.autograd.grad(ec(weights=w).sum(), w)
    assert torch.isfinite(gw).all()


def test_descending_the_derived_cost_reduces_it(darts_ct):
    ec = ExpectedCost(darts_ct, mode="derived", metrics=("params",))
    a = (1e-3 * torch.randn(2, 14, 8, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    start = float(ec(a).detach())
    opt = torch.optim.Adam([a], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        (ec(a) / start).sum().backward()
        opt.step()
    end = float(ec(a).detach())
    fixed = float(darts_ct.fixed[0])
    assert end - fixed < 0.25 * (start - fixed), (start, end, fixed)


# ---------------------------------------------------------------------------
# Latency: every key answered, a missing key raises


def _latency(key) -> float:
    return 1e-3 + 1e-9 * key.h * key.w * key.c_in * (3 + key.stride) + 1e-4 * len(key.op)


def test_latency_sums_the_cost_model_over_every_key(nb201_ct):
    ct = build_cost_tensor("nb201", Nb201NetConfig(NB201_ANY, C=8, N=2), metrics=("latency_ms",),
                           latency_fn=_latency)
    for e in range(6):
        for o in range(5):
            want = sum(n * _latency(k) for k, n in ct.keys[0][e][o])
            assert ct.c[0, e, o, 0].item() == pytest.approx(want, rel=1e-12)
            assert sum(n for _, n in ct.keys[0][e][o]) == 6   # 3 stages x N=2 cells
    assert ct.fixed[0].item() == pytest.approx(sum(n * _latency(k) for k, n in ct.fixed_keys), rel=1e-12)
    assert {k.op for k, _ in ct.fixed_keys} == {"stem", "resblock", "node_sum", "classifier"}


def _table(keys, space):
    return DeviceTable(kind="op", spaces=[space], device={"name": "test"}, runtime={"backend": "test"},
                       entries=tuple(Entry.imported(k, _latency(k)) for k in keys))


class _PartialSurrogate:
    """Answers only pooling ops (as a surrogate fitted on other op types would not)."""

    def predict_key(self, key):
        if "pool" not in key.op:
            raise KeyError(key.op)
        return _latency(key)


def test_a_key_missing_from_table_and_surrogate_raises():
    target = small(C=4, layers=3, input_size=8)
    full = build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=_latency)
    keys = {k for per_type in full.keys for per_edge in per_type for per_op in per_edge for k, _ in per_op}
    keys |= {k for k, _ in full.fixed_keys}
    # Table with every key: the cost model reproduces the callable.
    model = CostModel(_table(keys, "darts"))
    via_table = build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=model)
    torch.testing.assert_close(via_table.c, full.c)
    # Pooling keys dropped from the table: the surrogate answers them.
    pools = {k for k in keys if "pool" in k.op}
    model = CostModel(_table(keys - pools, "darts"), _PartialSurrogate())
    build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=model)
    assert model.sources["surrogate"] > 0
    # A conv key in neither: the error propagates, naming the key.
    missing = next(k for k in sorted(keys, key=str) if k.op == "sep_conv_5x5" and k.stride == 2)
    model = CostModel(_table(keys - {missing}, "darts"), _PartialSurrogate())
    with pytest.raises(MissingKeyError, match=re.escape(missing.to_str())):
        build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=model)
    # ... and so does a fixed-part key.
    stem = next(k for k in keys if k.op == "stem_cifar")
    with pytest.raises(MissingKeyError, match="stem_cifar"):
        build_cost_tensor("darts", target, metrics=("latency_ms",),
                          latency_fn=CostModel(_table(keys - {stem}, "darts")))


def test_none_latency_from_the_table_when_measured_else_zero():
    target = small(C=4, layers=3, input_size=8)

    def without_none(key):
        if key.op == "none":
            raise MissingKeyError(f"no {key}")
        return _latency(key)

    measured = build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=_latency)
    unmeasured = build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=without_none)
    assert torch.all(measured.c[:, :, 0] > 0) and torch.all(unmeasured.c[:, :, 0] == 0)
    assert torch.equal(measured.c[:, :, 1:], unmeasured.c[:, :, 1:])

    def broken(key):
        raise RuntimeError("device unreachable")

    with pytest.raises(RuntimeError, match="unreachable"):   # only a missing key means "not measured"
        build_cost_tensor("darts", target, metrics=("latency_ms",), latency_fn=broken)


def test_latency_metric_needs_a_cost_model():
    with pytest.raises(HwcostError, match="latency_fn"):
        build_cost_tensor("darts", small(C=4, layers=3, input_size=8), metrics=("latency_ms",))


# ---------------------------------------------------------------------------
# Shapes from the builder; persistence


def test_edge_shapes_and_strides_come_from_the_network(darts_ct):
    # Normal cells at (8, 16x16), (16, 8x8), (32, 4x4); reduce cells read (16, 16x16), (32, 8x8).
    sep = darts_ct.ops.index("sep_conv_3x3")
    normal = {(k.c_in, k.h, k.stride) for k, _ in darts_ct.keys[0][0][sep]}
    assert normal == {(8, 16, 1), (16, 8, 1), (32, 4, 1)}
    reduce_in = {(k.c_in, k.h, k.stride) for k, _ in darts_ct.keys[1][0][sep]}   # 2 <- 0
    reduce_mid = {(k.c_in, k.h, k.stride) for k, _ in darts_ct.keys[1][4][sep]}   # 3 <- 2
    assert reduce_in == {(16, 16, 2), (32, 8, 2)} and reduce_mid == {(16, 8, 1), (32, 4, 1)}


def test_to_dict_round_trips_through_json(nb201_ct):
    back = CostTensor.from_dict(json.loads(json.dumps(nb201_ct.to_dict())))
    assert torch.equal(back.c, nb201_ct.c) and torch.equal(back.fixed, nb201_ct.fixed)
    assert back.keys == nb201_ct.keys and back.fixed_keys == nb201_ct.fixed_keys
    assert (back.metrics, back.ops, back.edges, back.cell_types, back.target) == \
           (nb201_ct.metrics, nb201_ct.ops, nb201_ct.edges, nb201_ct.cell_types, nb201_ct.target)


def test_edge_softmax_normalises_per_node():
    edges = ((2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    s = edge_softmax(torch.randn(2, 5), edges)
    torch.testing.assert_close(s[:, :2].sum(-1), torch.ones(2))
    torch.testing.assert_close(s[:, 2:].sum(-1), torch.ones(2))
