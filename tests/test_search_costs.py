"""The latency a search optimises is the latency `hwcost predict` gives the derived network."""
import pytest

from costmodels.predict import predict_genotype, predict_nb201
from device_tables import load_table
from search.costs import derived_latency, search_cost_tensor
from spaces import BUILTIN_GENOTYPES, get_space

TABLES = ["device_tables/data/darts_ort-cpu.json", "device_tables/data/darts_torch-cpu.json"]
_CACHE = {}


def darts_tensor(table):
    if table not in _CACHE:
        _CACHE[table] = search_cost_tensor("darts", "cifar10", tuple(get_space("darts").primitives), table)
    return _CACHE[table]


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
