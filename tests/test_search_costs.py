"""The latency a search optimises is the latency `hwcost predict` gives the derived network."""
import pytest

from costmodels.predict import predict_genotype, predict_nb201
from device_tables import load_table
from search.costs import derived_latency, search_cost_tensor
from spaces import BUILTIN_GENOTYPES, get_space

TABLES = ["device_tables/data/darts_ort-cpu.json", "device_tables/data/darts_torch-cpu.json"]


def darts_tensor(table):
    """The darts tensor of ``table``, built once per process (tests/test_budget_attainable.py reads it too)."""
    from shared_tensors import darts_table_tensor
    return darts_table_tensor(table)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("name", ["DARTS_V1", "PDARTS", "PC_DARTS_CIFAR"])
def test_derived_latency_equals_whole_network_prediction(table, name):
    ct, notes = darts_tensor(table)
    got = derived_latency("darts", BUILTIN_GENOTYPES[name][1], ct, table)["latency_ms"]
    # predict_genotype counts the built network's op calls with hooks: an independent path
    assert got == pytest.approx(predict_genotype(name, load_table(table)).latency_ms, rel=1e-9)


def test_ort_table_overhead_is_removed_once_per_network():
    ct, notes = darts_tensor(TABLES[0])
    o = notes["overhead"]
    assert o["per_call_ms"] > 0 and o["n_calls"] == 302
    assert o["removed_ms"] == pytest.approx(301 * o["per_call_ms"])


def test_nb201_op_table_agrees_with_prediction():
    table = "device_tables/data/nb201_ort-cpu.json"
    ops = tuple(get_space("nb201").primitives)
    ct, _ = search_cost_tensor("nb201", "cifar10", ops, table)
    arch = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
    got = derived_latency("nb201", arch, ct, table)["latency_ms"]
    assert got == pytest.approx(predict_nb201(arch, load_table(table)).latency_ms, rel=1e-9)


def test_random_derived_costs_are_the_derived_networks_costs():
    import torch

    from costmodels.expected_cost import derive_darts
    from hwcost.pipeline import budget_ladder, random_derived_costs
    ct, _ = darts_tensor(TABLES[0])
    costs = random_derived_costs(ct, n=3, seed=7)
    g = torch.Generator().manual_seed(7)
    alphas = torch.randn(tuple(ct.c.shape[:3]), generator=g, dtype=ct.c.dtype)  # the first draw
    geno = derive_darts(torch.softmax(alphas[0], -1), torch.softmax(alphas[1], -1), ct.ops)
    want = predict_genotype(geno, load_table(TABLES[0])).latency_ms
    assert float(costs[0, ct.index("latency_ms")]) == pytest.approx(want, rel=1e-9)
    ladder = budget_ladder([1.0, 2.0, 3.0, 4.0, 5.0], k=3, lo_q=0.0, hi_q=1.0)
    assert ladder == [1.0, 3.0, 5.0]
