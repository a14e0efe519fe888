"""Genotypes, NB201 strings and network builders, against independent facts."""
import json

import pytest
import torch

from spaces import (BUILTIN_GENOTYPES, CifarNetConfig, HwcostError, Nb201Arch, Nb201NetConfig, get_space,
                    build_network, load_genotype, network_config, parse_genotype)
from spaces.nb201_arch import all_archs

DARTS_V2_LITERAL = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")


def test_published_literal_parses_without_eval_to_the_builtin():
    assert parse_genotype(DARTS_V2_LITERAL) == BUILTIN_GENOTYPES["DARTS_V2"][1]


def test_literal_with_code_is_refused():
    evil = DARTS_V2_LITERAL.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=__import__('os').getcwd()")
    with pytest.raises(HwcostError, match="not a literal"):
        parse_genotype(evil)


def test_json_file_round_trip(tmp_path):
    g = BUILTIN_GENOTYPES["PDARTS"][1]
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g.to_dict()))
    assert load_genotype(str(path)) == ("darts", g)
    assert parse_genotype(str(g)) == g  # str() is the published literal form


@pytest.mark.parametrize("text,match", [
    ('{"normal": [["sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}', "2 edges per node"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 5]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "inputs 0..1"),
    ('{"normal": [["conv_7x7", 0], ["sep_conv_3x3", 1]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "unknown op"),
    ('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [7], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "concat"),
    ('{"normal": "oops"', "malformed genotype JSON"),
    ('{"normal": [["sep_conv_3x3", 0]]}', "missing field"),
    ('{"normal": [[1, 0], ["a", 1]], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}', "op_name, input_index"),
    ("print('hi')", "expected Genotype"),
])
def test_malformed_genotypes_give_clear_errors(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(HwcostError, match=match):
        load_genotype(str(path), "darts")


def test_unknown_genotype_name_lists_builtins():
    with pytest.raises(HwcostError, match="DARTS_V2"):
        load_genotype("DARTS_V9")


def test_nb201_strings():
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    a = Nb201Arch.parse(s)
    assert a.to_str() == s
    assert a.ops == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    archs = all_archs()
    assert len(archs) == 15625 == len({x.to_str() for x in archs})
    # Only edge 3<-0 present: one live edge; an edge into a dead node is not live.
    assert Nb201Arch.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|").live_edges() == (
        False, False, False, True, False, False)
    assert Nb201Arch.parse("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|").is_connected() is False


@pytest.mark.parametrize("bad,match", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "3 nodes"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "needs 2 input"),
    ("|conv~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "unknown NB201 op"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "op~0"),
    ("nor_conv_3x3~0+|a~0|b~1|+|c~0|d~1|e~2|", "must be written"),
])
def test_bad_nb201_strings(bad, match):
    with pytest.raises(HwcostError, match=match):
        Nb201Arch.parse(bad)


def _independent_darts_cifar_params(genotype, C=36, layers=20, classes=10):
    """Closed-form parameter count of the DARTS CIFAR eval network (no aux head)."""
    bn = lambda c: 2 * c  # noqa: E731  (affine BN: weight + bias)
    def op(name, c, stride):
        k = {"3x3": 3, "5x5": 5}.get(name[-3:], 0)
        if name.startswith("sep_conv"):
            return 2 * (c * k * k + c * c + bn(c))
        if name.startswith("dil_conv"):
            return c * k * k + c * c + bn(c)
        if name == "skip_connect" and stride == 2:
            return c * c + bn(c)  # FactorizedReduce: two 1x1 convs to c/2 each
        return 0
    c_stem = 3 * C
    total = 3 * c_stem * 9 + bn(c_stem)
    c_pp, c_p, c, red_prev = c_stem, c_stem, C, False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if red else c
        total += c_pp * c + bn(c) + c_p * c + bn(c)  # preprocess0 (FR or 1x1) and preprocess1
        edges = genotype.reduce if red else genotype.normal
        total += sum(op(name, c, 2 if red and src < 2 else 1) for name, src in edges)
        c_pp, c_p, red_prev = c_p, 4 * c, red
    return total + c_p * classes + classes


@pytest.mark.parametrize("name,paper_m", [("DARTS_V2", 3.3), ("PC_DARTS_CIFAR", 3.6), ("PDARTS", 3.4),
                                          ("DARTS_V1", 3.3)])
def test_darts_params_match_closed_form_and_paper(name, paper_m):
    space, g = BUILTIN_GENOTYPES[name]
    model = build_network(network_config("cifar10", g, space, auxiliary=True))
    counted = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head"))
    assert counted == _independent_darts_cifar_params(g)
    # DARTS_V1's paper figure (3.3M) is for the second-order cell; V1 (first order) is 3.2M in our count.
    tol = 0.15 if name == "DARTS_V1" else 0.06
    assert abs(counted / 1e6 - paper_m) < tol


@pytest.mark.parametrize("name,paper_m", [("SHARP_DARTS", 1.98), ("SHARPSEPCONV_DARTS", 3.6)])
def test_sharpdarts_params_near_paper(name, paper_m):
    space, g = BUILTIN_GENOTYPES[name]
    model = build_network(network_config("cifar10", g, space))
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - paper_m) < 0.05


def test_nb201_param_extremes_match_the_benchmark():
    # NAS-Bench-201's own table: the largest network has 1.53M params, the smallest 0.07M.
    big = build_network(Nb201NetConfig("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"))
    small = build_network(Nb201NetConfig("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"))
    assert round(sum(p.numel() for p in big.parameters()) / 1e6, 2) == 1.53
    assert round(sum(p.numel() for p in small.parameters()) / 1e6, 2) == 0.07
    assert big(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_network_layout_and_aux_head():
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    net = build_network(CifarNetConfig(g, layers=8, C=8, auxiliary=True, drop_path_prob=0.2))
    assert [c.reduction for c in net.cells] == [False, False, True, False, False, True, False, False]
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_drop_path_spares_identity_edges():
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    net = build_network(CifarNetConfig(g, layers=3, C=4, drop_path_prob=1.0 - 1e-6))
    cell = net.cells[0]
    torch.manual_seed(0)
    x = torch.randn(4, 12, 8, 8)
    cell.train()
    # With drop-path prob ~1 every non-identity edge is zeroed; node 4 = sep_conv(s1) + skip(s0) -> s0
    states = [cell.preprocess0(x), cell.preprocess1(x)]
    out = cell(x, x)
    c = 4
    node4 = out[:, 2 * c:3 * c]  # concat order 2,3,4,5 -> node 4 is the third block
    torch.testing.assert_close(node4, states[0] + torch.zeros_like(states[0]), rtol=0, atol=1e-5)


def test_imagenet_network_runs_at_224():
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    net = build_network(network_config("imagenet", g, C=8, layers=3, num_classes=5)).eval()
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_genotype_of_other_space_is_refused():
    with pytest.raises(HwcostError, match="belongs to space"):
        load_genotype("SHARP_DARTS", "darts")


def test_darts_skeleton_lays_out_the_published_cifar_network():
    from spaces.skeleton import darts_skeleton
    sk = darts_skeleton(36, 20, 4)
    assert [s.index for s in sk.cells if s.reduction] == [6, 13]
    assert [sk.cells[i].C for i in (0, 5, 6, 12, 13, 19)] == [36, 36, 72, 72, 144, 144]
    assert [(s.C_prev_prev, s.C_prev) for s in sk.cells[:3]] == [(108, 108), (108, 144), (144, 144)]
    assert [s.index for s in sk.cells if s.reduction_prev] == [7, 14]
    assert [s.index for s in sk.cells if s.first_of_type] == [0, 6]
    assert (sk.aux_pos, sk.C_aux, sk.C_out) == (13, 576, 576)
    assert [f.op for f in sk.stems] == ["stem_cifar"] and sk.stems[0].c_out == 108
    im = darts_skeleton(48, 14, 4, "imagenet")
    assert [(f.name, f.stride) for f in im.stems] == [("stem0", 2), ("stem1", 2)]
    assert im.cells[0].reduction_prev and [s.index for s in im.cells if s.reduction] == [4, 9]
    with pytest.raises(HwcostError, match="unknown DARTS stem"):
        darts_skeleton(16, 8, 4, "mnist")


def test_networks_are_built_from_their_skeleton():
    from spaces.skeleton import darts_skeleton, nb201_skeleton
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    net = build_network(CifarNetConfig(g, layers=6, C=8, auxiliary=True))
    sk = darts_skeleton(8, 6, 4)
    for slot, cell in zip(sk.cells, net.cells, strict=True):
        assert (cell.preprocess0.hw_op == "factorized_reduce") == slot.reduction_prev
        assert (cell.preprocess0.hw_args["c_in"], cell.preprocess1.hw_args["c_in"],
                cell.preprocess1.hw_args["c_out"], cell.reduction) == (slot.C_prev_prev, slot.C_prev, slot.C, slot.reduction)
    assert net.auxiliary_head.hw_args["c_in"] == sk.C_aux and net.classifier.hw_args["c_in"] == sk.C_out
    nb = nb201_skeleton(8, 2, 16)
    assert nb.stages == ((8, 16), (16, 8), (32, 4))
    assert [s.index for s in nb.resblocks] == [2, 5]
    net = build_network(Nb201NetConfig("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", C=8, N=2))
    assert [getattr(m, "hw_op", "cell") for m in net.cells] == [s.kind for s in nb.body]
    assert net.classifier.hw_args["c_in"] == nb.C_out == 32


def test_a_name_registers_once():
    from spaces.registry import register_op, register_space
    with pytest.raises(HwcostError, match="space 'darts' is registered already"):
        register_space("darts", "another darts")
    with pytest.raises(HwcostError, match="op 'skip_connect' is registered already in space 'nb201'"):
        register_op("nb201", "skip_connect")(lambda c_in, c_out, stride, affine: None)
    assert get_space("nb201").op("skip_connect").doc.startswith("Identity")   # the first one is kept
