"""The search engine on toy problems whose optimum is known, for every strategy."""
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.objective import Objective, parse_term
from search.run import SearchConfig, SearchRun, run_search
from search.strategies import STRATEGIES
from search.supernet import SupernetConfig, build_supernet
from spaces import HwcostError, Nb201Arch

FAST = dict(data="synthetic", epochs=2, steps_per_epoch=3, batch_size=16, C=4, layers=3, threads=1)


def small(space="nb201", **kw) -> SearchConfig:
    if STRATEGIES[kw.get("strategy", "darts")].progressive:
        kw.setdefault("stages", [3, 3])   # two short stages (default: 3, 9, 15 cells)
    return SearchConfig(space=space, **{**FAST, **kw})


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_cost_only_objective_picks_the_cheapest_ops(strategy, tmp_path):
    # A huge params penalty dominates the task loss: every nb201 edge must end on a parameter-free op.
    cfg = small(strategy=strategy, penalties=["params=1e-2"], arch_lr=0.05, epochs=3)
    r = run_search(cfg, tmp_path / "run", progress=False)
    ops = Nb201Arch.parse(r["arch"]).ops
    assert not any(op.startswith("nor_conv") for op in ops), ops
    assert r["derived"]["params"] == min_params_nb201()


def min_params_nb201():
    from costmodels.analytical import count_params
    from spaces import Nb201NetConfig, build_network
    return count_params(build_network(Nb201NetConfig("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_hard_budget_is_met(strategy, tmp_path):
    budget = 0.4e6
    cfg = small(strategy=strategy, budgets=[f"params={budget}"], arch_lr=0.05, epochs=2)
    r = run_search(cfg, tmp_path / "run", progress=False)
    assert r["within_budget"] == {"params": True}
    assert r["derived"]["params"] <= budget
    assert not list((tmp_path / "run").glob("*.png"))  # HWCOST_PLOTS=0 (tests/conftest.py): no plots drawn


def test_soft_penalty_moves_the_choice_the_right_way(tmp_path):
    base = run_search(small(strategy="darts", arch_lr=0.05, epochs=3, seed=1), tmp_path / "a", progress=False)
    pen = run_search(small(strategy="darts", arch_lr=0.05, epochs=3, seed=1, penalties=["macs=1e-5"]),
                     tmp_path / "b", progress=False)
    # Same seed, same data: the penalty can only lower the expected MACs of the final alphas.
    la = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])["costs"]["macs"]
    lb = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])["costs"]["macs"]
    assert lb < la
    assert pen["derived"]["macs"] <= base["derived"]["macs"]


def test_darts_space_search_writes_a_complete_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOST_PLOTS", "1")  # the suite turns plots off (tests/conftest.py)
    cfg = small(space="darts", strategy="pcdarts", partial_k=2, budgets=["params=2.5M"], warmup_epochs=1)
    r = run_search(cfg, tmp_path / "run", progress=False)
    assert set(r) >= {"space", "genotype", "budgets", "derived", "table"}
    for name in ("config.json", "log.jsonl", "alphas.jsonl", "checkpoint.pt", "result.json", "alphas.png", "costs.png"):
        assert (tmp_path / "run" / name).exists(), name
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 6 and {"loss_train", "costs", "entropy"} <= set(logs[0])
    # warm-up epoch: alpha frozen
    assert all(l["loss_val"] != l["loss_val"] for l in logs[:3])  # NaN: no alpha step
    assert r["derived"]["params"] <= 2.5e6


def test_objective_dual_ascent_and_units():
    t = parse_term("latency=4ms", "hard")
    assert (t.metric, t.value) == ("latency_ms", 4.0)
    assert parse_term("params=1.5M", "hard").value == 1.5e6
    assert parse_term("memory=2MiB", "hard").value == 2 * 2**20
    obj = Objective([t], ("latency_ms", "params"), dual_lr=1.0, floor=0.85)
    obj.dual_step(torch.tensor([6.0, 0.0]))
    assert t.multiplier == pytest.approx(0.5)       # over budget: mu += (6/4 - 1)
    obj.dual_step(torch.tensor([3.8, 0.0]))
    assert t.multiplier == pytest.approx(0.5)       # inside [0.85 B, B]: unchanged
    obj.dual_step(torch.tensor([1.0, 0.0]))
    assert t.multiplier == pytest.approx(0.5 + 1.0 / 3.4 - 1)  # under the floor: falls below 0


@pytest.mark.parametrize("text,match", [
    ("latency=4", "unit"), ("latency=-4ms", "NAME=VALUE"), ("params=0", "positive"),
    ("speed=3ms", "unknown resource"), ("latency 4ms", "NAME=VALUE"), ("params=1e-7x", "unit"),
])
def test_bad_budgets(text, match):
    with pytest.raises(HwcostError, match=match):
        parse_term(text, "hard")


def test_latency_budget_without_a_table_is_refused(tmp_path):
    with pytest.raises(HwcostError, match="pass --table"):
        SearchRun(small(budgets=["latency=5ms"]), tmp_path / "r")


def test_table_of_another_space_is_refused(tmp_path):
    with pytest.raises(HwcostError, match="only an nb201 search"):
        SearchRun(small(space="darts", budgets=["latency=5ms"], table="raspi4"), tmp_path / "r")


def test_impossible_budget_is_refused_before_training(tmp_path):
    # below the cheapest derivable network (tests/test_budget_attainable.py: the range, NOT met)
    with pytest.raises(HwcostError, match=r"params=1k is below the cheapest .* attainable: params"):
        run_search(small(budgets=["params=1000"]), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_optimised_mixed_op_equals_plain_weighted_sum():
    torch.manual_seed(0)
    for cfg in (SupernetConfig(C=4, layers=3), SupernetConfig(C=8, layers=3, partial_k=4),
                SupernetConfig(space="nb201", C=4, nb201_N=1), SupernetConfig(C=4, layers=3, max_w=True)):
        net = build_supernet(cfg)
        net.alphas.data.normal_()
        x = torch.randn(2, 3, 8, 8)
        a = net(x)
        b = net(x, plain=True)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.square().sum(), net.arch_parameters())
        gb = torch.autograd.grad(net(x, plain=True).square().sum(), net.arch_parameters())
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)


RESUME_ARGS = ["--space", "nb201", "--data", "synthetic", "--epochs", "4", "--steps-per-epoch", "4",
               "--batch-size", "16", "--C", "4", "--layers", "3", "--threads", "1", "--seed", "3", "--json"]
KILLER = Path(__file__).with_name("search_killed_at_checkpoint.py")


@pytest.fixture(scope="module")
def uninterrupted_search(tmp_path_factory):
    full = tmp_path_factory.mktemp("search") / "full"
    subprocess.run([sys.executable, "-m", "hwcost.cli", "search", *RESUME_ARGS, "--out", str(full)],
                   check=True, capture_output=True, timeout=300)
    return full


# The kill is an event inside the search process (tests/search_killed_at_checkpoint.py), not a
# timer in this one: right after the 2nd of 4 epoch checkpoints, or 2 steps into the 3rd epoch
# (log lines past the checkpoint, which the resume must drop and run again).
@pytest.mark.parametrize("steps_after", [pytest.param(0, marks=pytest.mark.slow), 2], ids=["at-checkpoint", "mid-epoch"])
def test_resume_after_kill_gives_the_same_alphas(uninterrupted_search, steps_after, tmp_path):
    full, cut = uninterrupted_search, tmp_path / "cut"
    killed = subprocess.run([sys.executable, str(KILLER), "2", str(steps_after), *RESUME_ARGS, "--out", str(cut)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (cut / "result.json").exists()
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["step"] == 8   # 2 epochs x 4 steps
    logged = [json.loads(x)["step"] for x in (cut / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 9 + steps_after))
    subprocess.run([sys.executable, "-m", "hwcost.cli", "search", *RESUME_ARGS, "--out", str(cut), "--resume"],
                   check=True, capture_output=True, timeout=300)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]["alphas"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]["alphas"]
    assert torch.equal(a, b), (a - b).abs().max()   # bit for bit
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (full, cut))
    assert ra["arch"] == rb["arch"]
    n_steps = [json.loads(x)["step"] for x in (cut / "log.jsonl").read_text().splitlines()]
    assert n_steps == list(range(1, 17))  # every step logged once
    epochs = [json.loads(x)["epoch"] for x in (cut / "alphas.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_nonempty_run_directory_needs_resume(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("data")
    with pytest.raises(HwcostError, match="--resume"):
        SearchRun(small(), tmp_path / "r")


# --- every strategy on every space (tiny supernets, synthetic data; training and derivation) ---

SPACES = ("darts", "sharpdarts", "nb201")


def _matrix_params():
    out = []
    for strategy in sorted(STRATEGIES):
        for space in SPACES:
            # darts/sharpdarts: the target network's cost tensor takes 5-15 s to build once per process
            marks = [pytest.mark.slow] if space != "nb201" else []
            out.append(pytest.param(strategy, space, marks=marks, id=f"{strategy}-{space}"))
    return out


@pytest.mark.parametrize("strategy,space", _matrix_params())
def test_every_strategy_trains_on_every_space(strategy, space, tmp_path):
    from search.strategies import get_strategy
    spec = get_strategy(strategy)
    kw = dict(data="synthetic", epochs=1, steps_per_epoch=2, batch_size=8, C=4, layers=2, threads=1,
              warmup_epochs=0, arch_lr=0.05)
    if spec.progressive:
        kw["stages"] = [2, 3] if space != "nb201" else [3, 3]
    if spec.needs_terms:
        kw["penalties"] = ["params=1e-7"]
    if strategy == "dcanas" and space != "nb201":
        kw["bottleneck"] = 2          # C / bottleneck must stay even (FactorizedReduce)
    run = SearchRun(SearchConfig(space=space, strategy=strategy, **kw), tmp_path / "r")
    before = run.model.alphas.detach().clone()
    run.train()
    logs = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    n_stages = len(run.stages) if run.stages else 1
    assert len(logs) == 2 * n_stages
    assert all(math.isfinite(l["loss_train"]) and math.isfinite(l["loss_val"]) for l in logs)
    assert torch.isfinite(run.model.alphas).all()
    if not spec.progressive:        # alpha moved (progressive: a fresh alpha per stage)
        assert not torch.equal(before, run.model.alphas.detach())
    arch = run.expected.derive(run.model.arch_logits(), run.model.betas)
    ops = set(run.ops)
    if space == "nb201":
        assert set(Nb201Arch.parse(arch).ops) <= ops
    else:
        assert all(op in ops - {"none"} for cell in (arch.normal, arch.reduce) for op, _ in cell)
    if spec.progressive:
        assert run.stage == 1
        assert {int(n) for n in run.model.op_mask.sum(-1).flatten()} == {run.stages[1].ops_per_edge}
    assert (type(run.model).__name__.startswith("Dca")) == (strategy == "dcanas")


def test_a_supernet_name_registers_once():
    from search.supernet import SUPERNETS, register_supernet
    build_supernet(SupernetConfig(space="nb201", C=4, nb201_N=1))   # the DCA-NAS supernets are registered now
    before = list(SUPERNETS)
    with pytest.raises(HwcostError, match="supernet 'nb201' is registered already"):
        register_supernet("nb201", lambda c: True, lambda c: None)
    assert SUPERNETS == before


# (state_dict entries, parameters) of supernets built before the macro skeletons were
# shared (spaces/skeleton.py): the same layout, so earlier checkpoints still load.
LAYOUTS = {
    "darts": (dict(C=8, layers=5), 2651, 394434),
    "darts-pc": (dict(C=8, layers=5, partial_k=4), 2652, 66838),
    "sharpdarts": (dict(space="sharpdarts", C=8, layers=3), 2760, 630590),
    "nb201": (dict(space="nb201", C=8, nb201_N=2), 328, 180048),
    "dcanas-darts": (dict(C=8, layers=5, share_weights=True, bottleneck=2, derived_cells=True), 1151, 73914),
    "dcanas-nb201": (dict(space="nb201", C=8, nb201_N=2, share_weights=True, bottleneck=2, derived_cells=True),
                     328, 46992),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_supernet_layout_is_unchanged(name):
    kw, n_keys, n_params = LAYOUTS[name]
    net = build_supernet(SupernetConfig(**kw))
    assert (len(net.state_dict()), sum(p.numel() for p in net.parameters())) == (n_keys, n_params)


def test_supernets_follow_the_eval_networks_skeleton():
    from spaces import BUILTIN_GENOTYPES, CifarNetConfig, build_network
    from spaces.skeleton import darts_skeleton
    sk = darts_skeleton(8, 5, 4)
    nets = [build_network(CifarNetConfig(BUILTIN_GENOTYPES["DARTS_V2"][1], C=8, layers=5)),
            build_supernet(SupernetConfig(C=8, layers=5)),
            build_supernet(SupernetConfig(C=8, layers=5, share_weights=True, derived_cells=True))]
    for net in nets:
        assert [(c.preprocess0.hw_args["c_in"], c.preprocess1.hw_args["c_in"], c.preprocess1.hw_args["c_out"],
                 c.reduction) for c in net.cells] == [(s.C_prev_prev, s.C_prev, s.C, s.reduction) for s in sk.cells]
        assert net.classifier.hw_args["c_in"] == sk.C_out
    assert [c.searchable for c in nets[2].cells] == [s.first_of_type for s in sk.cells]
