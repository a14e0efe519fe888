"""P-DARTS / RAPDARTS progressive search: stage transitions, skip cap, dropout schedule, runs."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from costmodels.cost_tensor import darts_edges
from costmodels.expected_cost import ExpectedCost
from search.progressive import cap_skips, default_stage_ops, keep_strongest, plan_stages, skip_dropout_rate
from search.run import SearchConfig, SearchRun, run_search
from search.supernet import MixedOp, SupernetConfig, build_supernet
from spaces import HwcostError
from spaces.registry import get_space

DARTS_OPS = get_space("darts").primitives
TINY = dict(data="synthetic", epochs=2, steps_per_epoch=2, batch_size=8, C=4, threads=1)


def _topk_by_hand(p: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Independent top-k: python's sorted over (-p, index) of the live ops of each row."""
    out = np.zeros_like(alive)
    for idx in np.ndindex(p.shape[:-1]):
        ranked = sorted((-p[idx][o], o) for o in range(p.shape[-1]) if alive[idx][o])
        for _, o in ranked[:k]:
            out[idx][o] = True
    return out


def test_keep_strongest_matches_an_independent_topk():
    torch.manual_seed(0)
    logits = torch.randn(2, 14, 8)
    logits[0, 3, [1, 5]] = 0.25           # ties: the op listed first wins
    alive = torch.rand(2, 14, 8) > 0.3
    alive[..., 0] = True                  # some live op on every edge
    masked = logits.masked_fill(~alive, float("-inf"))
    for k in (1, 3, 5):
        got = keep_strongest(masked, k)
        p = F.softmax(masked, -1).numpy()
        want = _topk_by_hand(p, alive.numpy(), k)
        assert np.array_equal(got.numpy(), want), k
        assert not (got & ~alive).any()   # a dropped op never comes back


def test_keep_strongest_by_hand():
    # one edge, ops 0..7: keep 3 of the strongest -> ops 4 (2.0), 1 (1.0) and 6 (0.5); op 2 (3.0) was dropped
    logits = torch.tensor([[[0.0, 1.0, 3.0, -1.0, 2.0, 0.1, 0.5, 0.2]]])
    logits[0, 0, 2] = float("-inf")
    assert keep_strongest(logits, 3)[0, 0].nonzero().flatten().tolist() == [1, 4, 6]


def test_default_stage_ops_follow_pdarts():
    assert default_stage_ops(8, 3) == (8, 5, 3)          # darts: P-DARTS's 8 -> 5 -> 3
    assert default_stage_ops(5, 3) == (5, 3, 2)          # nb201
    stages = plan_stages([5, 11, 17], None, None, 8)
    assert [(s.layers, s.ops_per_edge, s.skip_dropout) for s in stages] == [(5, 8, 0.1), (11, 5, 0.4), (17, 3, 0.7)]


@pytest.mark.parametrize("layers,ops,drop,match", [
    ([5, 3], None, None, "do not decrease"), ([5, 11], [7, 3], None, "must start with 8"),
    ([5, 11], [8, 1], None, "at least 2"), ([5, 11], [8, 5, 3], None, "2 stage"),
    ([5, 11], None, [0.1, 1.0], r"\[0, 1\)"), ([], None, None, "at least one stage"),
])
def test_bad_stage_options(layers, ops, drop, match):
    with pytest.raises(HwcostError, match=match):
        plan_stages(layers, ops, drop, 8)


def test_dropout_rate_schedule():
    # P-DARTS (E=25 epochs, 10 weights-only): linear during warm-up, then rate * exp(-0.2 (e - 10))
    assert skip_dropout_rate(0.4, 0, 25, 10) == pytest.approx(0.4 * 24 / 25)
    assert skip_dropout_rate(0.4, 9, 25, 10) == pytest.approx(0.4 * 15 / 25)
    assert skip_dropout_rate(0.4, 10, 25, 10) == pytest.approx(0.4)
    assert skip_dropout_rate(0.4, 15, 25, 10) == pytest.approx(0.4 / math.e)
    rates = [skip_dropout_rate(0.7, e, 25, 10) for e in range(25)]
    assert all(a > b for a, b in zip(rates[:10], rates[1:10])) and all(a > b for a, b in zip(rates[10:], rates[11:]))


def test_skip_dropout_acts_on_the_identity_skip_only():
    torch.manual_seed(0)
    op = MixedOp("darts", 4, 1, ("skip_connect",))
    x = torch.randn(8, 4, 6, 6) + 3.0     # nonzero everywhere
    op.skip_drop = 0.5
    y = op(x, torch.ones(1))
    zero = y == 0
    assert 0.4 < zero.float().mean() < 0.6
    torch.testing.assert_close(y[~zero], 2 * x[~zero])   # inverted dropout scales by 1 / (1 - p)
    op.eval()
    torch.testing.assert_close(op(x, torch.ones(1)), x)
    assert MixedOp("darts", 4, 2, ("skip_connect",)).skip is None   # stride 2: FactorizedReduce, no dropout


def _probs_to_logits(rows: dict, n_edges: int = 14) -> torch.Tensor:
    logits = torch.full((2, n_edges, len(DARTS_OPS)), float("-inf"))
    logits[1, :, DARTS_OPS.index("max_pool_3x3")] = 0.0   # reduce cell: irrelevant here
    for e in range(n_edges):
        for op, p in rows.get(e, {"none": 0.9, "max_pool_3x3": 0.1}).items():
            logits[0, e, DARTS_OPS.index(op)] = math.log(p)
    return logits


def test_skip_cap_removes_the_weakest_skips_until_it_holds():
    edges = darts_edges(4)
    e = {pair: i for i, pair in enumerate(edges)}
    rows = {e[(2, 0)]: {"skip_connect": 0.9, "sep_conv_3x3": 0.1},
            e[(2, 1)]: {"skip_connect": 0.6, "dil_conv_3x3": 0.4},
            e[(3, 0)]: {"skip_connect": 0.7, "max_pool_3x3": 0.3},
            e[(3, 1)]: {"sep_conv_5x5": 0.5, "none": 0.5},
            e[(3, 2)]: {"sep_conv_3x3": 0.8, "none": 0.2},
            e[(4, 0)]: {"dil_conv_5x5": 0.3, "none": 0.7},
            e[(4, 1)]: {"skip_connect": 0.65, "avg_pool_3x3": 0.35},
            e[(4, 3)]: {"sep_conv_3x3": 0.75, "none": 0.25},
            e[(5, 0)]: {"sep_conv_3x3": 0.85, "none": 0.15},
            e[(5, 4)]: {"sep_conv_5x5": 0.8, "none": 0.2}}
    logits = _probs_to_logits(rows)
    out, removed, held = cap_skips(logits, DARTS_OPS, max_skips=2)
    # 4 skips (0.9, 0.6, 0.7, 0.65): the 0.6 one goes first (its edge falls back to dil_conv_3x3),
    # then the 0.65 one (its edge now carries avg_pool_3x3 at 1.0 and stays chosen).
    assert removed == [e[(2, 1)], e[(4, 1)]] and held
    from costmodels.expected_cost import derive_darts
    p = F.softmax(out, -1)
    g = derive_darts(p[0], p[1], DARTS_OPS)
    # (each node lists its edges strongest first: dil_conv_3x3 now has its edge's whole weight, 1.0)
    assert g.normal == (("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0),
                        ("avg_pool_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("sep_conv_5x5", 4))
    # a cap of 0 removes every skip that can go
    out0, removed0, held0 = cap_skips(logits, DARTS_OPS, max_skips=0)
    p0 = F.softmax(out0, -1)
    assert held0 and all(op != "skip_connect" for op, _ in derive_darts(p0[0], p0[1], DARTS_OPS).normal)


def test_dropped_ops_have_probability_zero_in_the_expected_cost():
    from search.costs import cached_search_cost_tensor
    # through search.costs' cache: the nb201 searches of this process (same arguments) built it already
    ct, _ = cached_search_cost_tensor("nb201", "cifar10", get_space("nb201").primitives)
    subsets = ((0, 2), (1, 3, 4), (2,), (0, 1, 2, 3, 4), (3, 4), (1,))
    net = build_supernet(SupernetConfig(space="nb201", C=4, nb201_N=1, op_subsets=(subsets,)))
    with torch.no_grad():
        net.alphas.normal_()
    ec = ExpectedCost(ct, mode="expected")
    logits = net.arch_logits()
    # independent: softmax over each edge's kept alphas only, zeros elsewhere
    w = torch.zeros(1, 6, 5, dtype=torch.float64)
    for e, idx in enumerate(subsets):
        w[0, e, list(idx)] = F.softmax(net.alphas[0, e, list(idx)].detach().double(), -1)
    torch.testing.assert_close(ec(logits), ec(weights=w))
    g = torch.autograd.grad(ec(logits)[ec.index("params")], net.alphas)[0]
    assert torch.isfinite(g).all() and (g[~net.op_mask] == 0).all()
    # the mixed ops hold exactly the kept ops
    for cell in (m for m in net.modules() if hasattr(m, "mixed")):
        for e, mixed in enumerate(cell.mixed):
            assert mixed.primitives == tuple(ct.ops[i] for i in subsets[e])


def test_tiny_darts_pdarts_run_writes_result(tmp_path):
    cfg = SearchConfig(space="darts", strategy="pdarts", stages=[2, 3, 3], layers=2, **TINY)
    r = run_search(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert json.loads((out / "result.json").read_text()) == r
    prog = r["progressive"]
    assert [s["ops_per_edge"] for s in prog["stages"]] == [8, 5, 3] and prog["final_stage"] == 2
    subsets = prog["op_subsets"]
    assert all(len(ops) == 3 for cell in subsets.values() for ops in cell)
    # every op of the genotype comes from its edge's final subset; the cap holds
    edges = darts_edges(4)
    for k, cell in (("normal", r["genotype"]["normal"]), ("reduce", r["genotype"]["reduce"])):
        for n, (op, src) in enumerate(cell):
            assert op in subsets[k][edges.index((n // 2 + 2, src))]
    assert sum(op == "skip_connect" for op, _ in r["genotype"]["normal"]) <= 2
    assert prog["skip_cap"]["held"]
    stages = [json.loads(x) for x in (out / "stages.jsonl").read_text().splitlines()]
    assert [s["layers"] for s in stages] == [3, 3]
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [l["stage"] for l in logs] == [0] * 4 + [1] * 4 + [2] * 4
    # warm-up: round(0.4 * 2) = 1 weights-only epoch per stage; dropout by the schedule
    assert all(math.isnan(l["loss_val"]) == (l["epoch"] == 0) for l in logs)
    for l in logs:
        rate = (0.1, 0.4, 0.7)[l["stage"]]
        assert l["skip_dropout"] == pytest.approx(skip_dropout_rate(rate, l["epoch"], 2, 1))


def test_stage_transition_keeps_the_previous_stages_strongest_ops(tmp_path):
    cfg = SearchConfig(space="nb201", strategy="pdarts", stages=[3, 3], layers=3, **TINY)
    run = SearchRun(cfg, tmp_path / "run")
    run._train_stage()
    before = run.model.arch_logits().detach().clone()
    run._next_stage()
    p = F.softmax(before, -1).numpy()
    want = _topk_by_hand(p, np.ones_like(p, dtype=bool), 3)
    got = np.zeros_like(want)
    for e, idx in enumerate(run.model.config.op_subsets[0]):
        got[0, e, list(idx)] = True
    assert np.array_equal(got, want)
    assert torch.equal(run.model.op_mask, torch.from_numpy(want))


def test_resume_across_stages_gives_the_same_result(tmp_path, monkeypatch):
    cfg = SearchConfig(space="nb201", strategy="pdarts", stages=[3, 3, 3], layers=3, seed=2, **TINY)
    full = run_search(cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = SearchRun._step

    def dying(self, *a):
        calls["n"] += 1
        if calls["n"] == 7:        # stage 1, second epoch, first step
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(SearchRun, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(SearchRun, "_step", real)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (int(state["stage"]), int(state["epoch"])) == (1, 1) and "op_mask" in state
    resumed = SearchRun(cfg, tmp_path / "cut", resume=True).run(progress=False)
    for k in ("arch", "progressive", "derived"):
        assert resumed[k] == full[k], k
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]["alphas"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]["alphas"]
    torch.testing.assert_close(a, b)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_rapdarts_penalty_lowers_the_cost_against_pdarts(tmp_path):
    base = dict(space="nb201", stages=[3, 3], layers=3, arch_lr=0.05, seed=1, **{**TINY, "epochs": 3})
    a = run_search(SearchConfig(strategy="pdarts", **base), tmp_path / "a", progress=False)
    b = run_search(SearchConfig(strategy="rapdarts", penalties=["params=1e-2"], **base), tmp_path / "b", progress=False)
    assert b["derived"]["params"] <= a["derived"]["params"]
    from spaces import Nb201Arch
    assert not any(op.startswith("nor_conv") for op in Nb201Arch.parse(b["arch"]).ops)


@pytest.mark.parametrize("kw,match", [
    (dict(strategy="darts", stages=[2, 3]), "progressive strategies only"),
    (dict(strategy="rapdarts"), "--budget or --penalty"),
    (dict(strategy="pdarts", share_weights=True), "do not combine"),
    (dict(strategy="pdarts", space="nb201", max_skips=1), "nb201"),
    (dict(strategy="pdarts", lr_schedule="step"), "unknown lr schedule"),
])
def test_configs_that_cannot_apply_are_refused(kw, match, tmp_path):
    with pytest.raises(HwcostError, match=match):
        SearchRun(SearchConfig(**{**TINY, **kw}), tmp_path / "r")
    assert not (tmp_path / "r").exists()   # refused before the run directory is made


def test_cli_errors_are_one_line(capsys, tmp_path):
    from hwcost.cli import main
    for argv, match in ((["--strategy", "pdarts", "--stages", "5,x"], "comma-separated integers"),
                        (["--strategy", "darts", "--stage-ops", "8,5"], "progressive strategies only"),
                        (["--strategy", "dcanas", "--partial-k", "2"], "partial channels")):
        code = main(["search", "--data", "synthetic", "--out", str(tmp_path / "r"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and match in err, err
        assert not (tmp_path / "r").exists()
