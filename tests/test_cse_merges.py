"""Identical parameter-free ops on one tensor run once in an ONNX graph (the export's and ONNX Runtime's
common-subexpression elimination): what prediction and the search's cost tensor count for an ORT table,
checked against the exported graph's own nodes and against an enumeration."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter

import onnx
import pytest
import torch

from costmodels.expected_cost import ExpectedCost
from costmodels.predict import Overhead, predict_genotype, predict_nb201
from device_tables import DATA_DIR, load_table
from profilers.export import export_onnx
from search.costs import derived_latency, enumerate_nb201_costs, search_cost_tensor
from spaces import BUILTIN_GENOTYPES, CifarNetConfig, Genotype, Nb201NetConfig, build_network, get_space
from spaces.nb201_arch import Nb201Arch
from spaces.opkeys import network_op_counts

ORT_NB201, TORCH_NB201 = str(DATA_DIR / "nb201_ort-cpu.json"), str(DATA_DIR / "nb201_torch-cpu.json")
ORT_DARTS = str(DATA_DIR / "darts_ort-cpu.json")
NB201_ARCHS = ["|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
               "|none~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|avg_pool_3x3~2|",
               "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"]
POOLS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")


def _pooly_genotype(seed: int) -> Genotype:
    """A DARTS genotype drawn mostly from parameter-free ops, so that its cells repeat them on a state."""
    rng = random.Random(seed)

    def cell():   # each node reads two different states, as a derived cell does
        return [(rng.choice(POOLS + ("sep_conv_3x3",)), src) for node in range(4)
                for src in sorted(rng.sample(range(node + 2), 2))]
    return Genotype(normal=cell(), normal_concat=[2, 3, 4, 5], reduce=cell(), reduce_concat=[2, 3, 4, 5])


def _by_op(counter) -> Counter:
    out = Counter()
    for k, n in counter.items():
        out[k.op] += n
    return out


def _graph_ops(net, tmp_path) -> Counter:
    path = tmp_path / "net.onnx"
    export_onnx(net, torch.randn(*net.input_shape()), path, check=False)
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _genotype(which: str) -> Genotype:
    """DARTS_V2 (its reduction cell's nodes 3 and 5 sum the same two pooled values), or a drawn one."""
    return BUILTIN_GENOTYPES["DARTS_V2"][1] if which == "v2" else _pooly_genotype(int(which))


@pytest.mark.parametrize("which", ["nb201-0", "nb201-1", "darts-4", "darts-6", "darts-v2"])
def test_the_calls_counted_once_are_the_nodes_the_exported_graph_lacks(which, tmp_path):
    space, i = which.split("-")
    if space == "nb201":
        net = build_network(Nb201NetConfig(arch=NB201_ARCHS[int(i)]))
    else:
        net = build_network(CifarNetConfig(_genotype(i), "darts", C=8, layers=5, input_size=16))
    merged: dict = {}
    calls = _by_op(network_op_counts(net, net.input_shape(), merged))
    merged = _by_op(merged)
    assert sum(merged.values()) > 0                       # the case is exercised
    graph = _graph_ops(net, tmp_path)
    if space == "nb201":   # each residual block adds one AveragePool; a none op is a Mul by 0
        assert graph["AveragePool"] == calls["avg_pool_3x3"] - merged["avg_pool_3x3"] + 2
        assert graph["Mul"] == calls["none"] - merged["none"]
    else:                  # a node sum of two states is one Add; the DARTS network has no other Add
        assert graph["MaxPool"] == calls["max_pool_3x3"] - merged["max_pool_3x3"]
        assert graph["AveragePool"] == calls["avg_pool_3x3"] - merged["avg_pool_3x3"]
        assert graph["Add"] == calls["node_sum"] - merged["node_sum"]


def test_an_eager_pytorch_table_counts_every_call():
    arch = NB201_ARCHS[0]
    eager = predict_nb201(arch, load_table(TORCH_NB201))
    ort = predict_nb201(arch, load_table(ORT_NB201))
    assert eager.merged == {} and eager.n_calls == 124
    assert sum(ort.merged.values()) == 45 and ort.n_calls == 124 - 45
    ct, notes = search_cost_tensor("nb201", "cifar10", tuple(get_space("nb201").primitives), TORCH_NB201)
    assert ct.merge is None and "merged" not in notes


@pytest.fixture(scope="module")
def nb201_ort():
    return search_cost_tensor("nb201", "cifar10", tuple(get_space("nb201").primitives), ORT_NB201)[0]


def test_nb201_search_costs_count_merged_ops_as_predict_does(nb201_ort):
    ct = nb201_ort
    assert ct.merge is not None
    archs, costs = enumerate_nb201_costs(ORT_NB201, ct)
    li = ct.index("latency_ms")
    rng = random.Random(3)
    for arch in NB201_ARCHS + rng.sample(archs, 3):
        want = predict_nb201(arch, load_table(ORT_NB201)).latency_ms
        assert derived_latency("nb201", arch, ct, ORT_NB201)["latency_ms"] == pytest.approx(want, rel=1e-9)
        assert float(costs[archs.index(arch), li]) == pytest.approx(want, rel=1e-9)


def test_the_expected_cost_is_the_expectation_over_edges_drawn_independently(nb201_ort):
    """Edges drawing their ops independently from softmax(alpha): the closed form (expected calls minus
    the chance of at least one, per state and op) equals the average over all 15,625 cells."""
    ct = nb201_ort
    archs, costs = enumerate_nb201_costs(ORT_NB201, ct)
    alphas = torch.randn(1, len(ct.edges), len(ct.ops), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    w = torch.softmax(alphas, -1)
    idx = torch.tensor([[ct.ops.index(op) for op in Nb201Arch.parse(a).ops] for a in archs])
    prob = w[0, torch.arange(len(ct.edges)), idx].prod(-1)            # [n archs]
    assert float(prob.sum()) == pytest.approx(1.0, rel=1e-12)
    li = ct.index("latency_ms")
    want = float((prob * costs[:, li]).sum())
    got = ExpectedCost(ct, mode="expected")(alphas=alphas)[li]
    assert float(got) == pytest.approx(want, rel=1e-9)
    plain = ExpectedCost(dataclasses.replace(ct, merge=None), mode="expected")(alphas=alphas)[li]
    assert float(plain) > float(got)                                   # without merges: every call counted


@pytest.fixture(scope="module")
def darts_ort():
    return search_cost_tensor("darts", "cifar10", tuple(get_space("darts").primitives), ORT_DARTS)


def test_darts_search_costs_count_merged_ops_and_leave_merged_node_sums_to_predict(darts_ort):
    """The cost tensor counts an edge op once per state; a node sum whose inputs both merged (the same
    values as an earlier node's) it still counts: predict is lower by exactly those sums' entries less
    the call overhead each of them would have taken off."""
    ct, notes = darts_ort
    table = load_table(ORT_DARTS)
    per_call = Overhead.from_table(table).per_call_ms
    assert ct.merge is not None and notes["overhead"]["per_call_ms"] == per_call
    cascades = 0
    for which in ("v2", "1", "4", "5", "6"):
        g = _genotype(which)
        p = predict_genotype(g, table)
        got = derived_latency("darts", g, ct, ORT_DARTS)["latency_ms"]
        sums = {k: n for k, n in p.merged.items() if "node_sum" in k}
        gap = sum(n * (table.latency_ms(k) - per_call) for k, n in sums.items())
        cascades += bool(sums)
        assert sum(p.merged.values()) > 0
        assert got - p.latency_ms == pytest.approx(gap, abs=1e-9)
    assert cascades == 1                                              # DARTS_V2's; both cases seen


def test_the_cheapest_network_with_merges_is_found_exactly():
    """attainable_range's minimum on an ORT table (a repeated pool runs once) equals a brute force over
    every network derivation can produce in a two-op DARTS space, each priced by the derived cost."""
    import itertools

    from search.objective import attainable_range
    ops = ("max_pool_3x3", "sep_conv_3x3")
    ct, _ = search_cost_tensor("darts", "cifar10", ops, ORT_DARTS)
    assert ct.merge is not None
    ec = ExpectedCost(ct, mode="derived")
    li = ct.index("latency_ms")
    lo = attainable_range(ec)["latency_ms"][0]
    c, merge = ct.c[..., li].tolist(), ct.merge[..., li].tolist()
    nodes = [[e for e, (to, _) in enumerate(ct.edges) if to == j] for j in (2, 3, 4, 5)]
    best = []
    for k in range(len(ct.cell_types)):          # cells are independent: the cheapest of each type
        cheapest = (float("inf"), None)
        for picks in itertools.product(*(itertools.combinations(idx, 2) for idx in nodes)):
            chosen = [e for pair in picks for e in pair]
            for choice in itertools.product(range(len(ops)), repeat=len(chosen)):
                seen, total = set(), 0.0
                for e, o in zip(chosen, choice):
                    repeat = (ct.edges[e][1], o) in seen and merge[k][e][o] != 0
                    total += c[k][e][o] - (merge[k][e][o] if repeat else 0.0)
                    seen.add((ct.edges[e][1], o))
                cheapest = min(cheapest, (total, tuple(zip(chosen, choice))))
        best.append(cheapest)
    assert lo == pytest.approx(float(ct.fixed[li]) + sum(b[0] for b in best), rel=1e-12)
    w = torch.zeros(ct.c.shape[:3], dtype=torch.float64)     # the cheapest network, priced by ExpectedCost
    for k, (_, pairs) in enumerate(best):
        for e, o in pairs:
            w[k, e, o] = 1.0
    assert float(ec(weights=w)[li]) == pytest.approx(lo, rel=1e-9)
    additive = attainable_range(ExpectedCost(dataclasses.replace(ct, merge=None), mode="derived"))["latency_ms"][0]
    assert lo < additive
