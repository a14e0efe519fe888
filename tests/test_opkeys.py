"""One place maps a built network to its op keys (spaces.opkeys): the profiler
measures exactly the keys the cost tensor and prediction ask for."""
import ast
from pathlib import Path

import pytest

import costmodels.predict
import spaces.opkeys
from costmodels.cost_tensor import build_cost_tensor
from profilers.shapes import space_keys
from spaces import BUILTIN_GENOTYPES, CifarNetConfig, Nb201NetConfig, build_network
from spaces.opkeys import network_op_counts, probe_genotype, probe_nb201_arch

ROOT = Path(__file__).resolve().parents[1]
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"


def darts_small():
    # 5 cells: normal, reduce, normal after a reduction, reduce, normal.
    return CifarNetConfig(BUILTIN_GENOTYPES["DARTS_V2"][1], "darts", C=8, layers=5, input_size=16)


def nb201_small():
    return Nb201NetConfig(NB201, C=8, N=2)


def cost_tensor_keys(ct) -> set:
    """Every key the cost tensor asks its latency cost model for."""
    keys = {key for per_type in ct.keys for per_edge in per_type for per_op in per_edge for key, _ in per_op}
    return keys | {key for key, _ in ct.fixed_keys}


@pytest.fixture
def spy(monkeypatch):
    """Every key spaces.opkeys.op_key hands out."""
    seen = []
    real = spaces.opkeys.op_key

    def op_key(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]
    monkeypatch.setattr(spaces.opkeys, "op_key", op_key)
    return seen


@pytest.mark.parametrize("space, config", [("darts", darts_small), ("nb201", nb201_small)])
def test_profiler_measures_the_keys_the_cost_tensor_asks_for(space, config, spy):
    profiled = space_keys(space, [config()], batch=2)
    assert spy, "the profiler keys ops through spaces.opkeys.op_key"
    del spy[:]
    ct = build_cost_tensor(space, config(), metrics=("params",), batch=2)
    assert spy, "the cost tensor keys ops through spaces.opkeys.op_key"
    asked = cost_tensor_keys(ct)
    assert {k.batch for k in asked} == {2}
    assert asked == set(profiled)


@pytest.mark.parametrize("space, config", [("darts", darts_small), ("nb201", nb201_small)])
def test_a_built_network_runs_only_profiled_keys(space, config):
    net = build_network(config())
    counts = costmodels.predict.network_op_counts(net, net.input_shape(1))
    assert counts and all(n > 0 for n in counts.values())
    assert set(counts) <= set(space_keys(space, [config()]))


def test_prediction_counts_with_the_shared_function():
    assert costmodels.predict.network_op_counts is network_op_counts


def test_probes_one_op_and_a_list_of_ops_agree():
    assert probe_genotype("sep_conv_3x3", 3) == probe_genotype(["sep_conv_3x3"] * 6, 3)
    second = probe_genotype(list("abcdefgh"), 4, first=False)
    assert [src for _, src in second.normal] == [0, 1, 1, 2, 1, 3, 1, 4]
    assert probe_nb201_arch("skip_connect").count("skip_connect") == 6
    assert probe_nb201_arch(("none", "skip_connect")) == \
        "|none~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|skip_connect~2|"


def test_costmodels_import_no_profilers():
    """costmodels never measures: no module of it imports profilers (DESIGN, Rules)."""
    offenders = []
    for path in sorted((ROOT / "costmodels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "profilers"]
    assert offenders == []
