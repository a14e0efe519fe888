"""Data-parallel search: 2 gloo processes on CPU take the steps one process takes.

The 2-process run is launched the way torchrun launches it (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT in each process's environment), with
``torch.multiprocessing.spawn`` standing in for the launcher; one spawn does
every 2-process check.

Unlike ``hwcost train``'s test, BatchNorm stays in training mode: the search's
BNs are swapped for ``search.distributed.SyncBatchNorm2d``, whose statistics
(forward) and statistic gradients (backward) are those of the global batch. So
the only difference from one process is the order of floating-point sums.

Tolerance: alpha and every weight, BN running statistics included, agree with
the one-process run to ATOL=1e-5 + RTOL=1e-4 after 4 first-order steps (hard
params budget, so the dual ascent moves mu too) and after 2 second-order
(``darts-2nd``, every gradient of the unrolled step all-reduced) steps.
Observed max |difference| (2 processes vs 1, this machine, float32):
alpha 1.8e-7 (first order) and 7.6e-7 (second order); weights and buffers
1.2e-7; the multiplier mu 0. Alpha moved by 0.20 / 0.10 over the runs, four
orders of magnitude above the tolerance, so the comparison is not vacuous.
The two processes hold bit-identical tensors throughout.
The synchronised BN alone matches ``nn.BatchNorm2d`` on the concatenated batch
(output, input gradient, affine gradients, running statistics) to 1e-12 in
float64 and 1e-5 in float32, with unequal shards (6 + 5 samples).
"""
import json
import os
import socket
import sys

import pytest
import torch

from search import distributed as D

ATOL, RTOL = 1e-5, 1e-4

CFG = dict(space="nb201", strategy="darts", data="synthetic", C=4, layers=3, epochs=2, steps_per_epoch=2,
           batch_size=16, budgets=["params=0.3M"], arch_lr=0.05, seed=5, threads=1)
CFG2 = {**CFG, "strategy": "darts-2nd", "epochs": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(run) -> dict:
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    state["_multipliers"] = torch.tensor([t.multiplier for t in run.terms], dtype=torch.float64)
    return state


def _bn_case(dtype):
    """A global batch (11 samples: shards of 6 and 5), an affine BN and an upstream gradient."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(11, 3, 4, 5, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    gout = torch.randn(11, 3, 4, 5, generator=g, dtype=torch.float64).to(dtype)
    bn = torch.nn.BatchNorm2d(3).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 0.7]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return x, gout, bn


def _bn_shard(rank: int, world: int) -> dict:
    """SyncBatchNorm2d on this rank's shard: output, input gradient, summed parameter gradients."""
    out = {}
    for dtype in (torch.float64, torch.float32):
        x, gout, bn = _bn_case(dtype)
        assert D.convert_sync_batchnorm(bn) == 1 and isinstance(bn, D.SyncBatchNorm2d)
        xs, gs = D.shard(x, gout)
        xs = xs.clone().requires_grad_(True)
        y = bn(xs)
        y.backward(gs)
        pg = D.allreduce_tensors([bn.weight.grad, bn.bias.grad], average=False)
        out[str(dtype)] = {"y": y.detach(), "dx": xs.grad, "dw": pg[0], "db": pg[1],
                           "rm": bn.running_mean.clone(), "rv": bn.running_var.clone()}
    return out


class _Stop(Exception):
    pass


def _write_auditor(root: str, seen: list):
    """An audit hook recording every write, rename, mkdir or delete under ``root``."""
    root = os.path.realpath(root)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                     (mode is None and isinstance(flags, int) and flags & writing)
            paths = [path] if writes else []
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            if isinstance(p, (str, os.PathLike)) and os.path.realpath(os.fspath(p)).startswith(root):
                seen.append(f"{event} {os.fspath(p)}")
    return hook


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from search.run import SearchConfig, SearchRun
    from spaces import HwcostError
    D.init(device="cpu")
    assert D.is_distributed() and D.world_size() == world and D.rank() == rank
    results = {"bn": _bn_shard(rank, world)}

    seen: list = []
    if rank == 1:   # rank 1 must write nothing into any run directory
        sys.addaudithook(_write_auditor(os.path.join(out, "runs"), seen))

    try:            # a global batch that does not split: one clear error on every rank
        SearchRun(SearchConfig(**{**CFG, "batch_size": 15}), os.path.join(out, "runs", "odd"))
    except HwcostError as e:
        results["odd_error"] = str(e)

    run = SearchRun(SearchConfig(**CFG), os.path.join(out, "runs", "first"))
    assert isinstance(run.model.stem[1], D.SyncBatchNorm2d)
    result = run.run(progress=False)
    results["first"], results["first_result"] = _snapshot(run), result

    run = SearchRun(SearchConfig(**CFG2), os.path.join(out, "runs", "second"))
    run.train()                     # the steps only (finish: derivation and plots, checked above)
    results["second"] = _snapshot(run)

    # resume: stopped after epoch 1's checkpoint, continued by every rank from it
    class Interrupted(SearchRun):
        def _checkpoint(self):
            super()._checkpoint()
            if self.epoch == 1:
                raise _Stop

    try:
        Interrupted(SearchConfig(**CFG), os.path.join(out, "runs", "resumed")).train()
    except _Stop:
        pass
    run = SearchRun(SearchConfig(**CFG), os.path.join(out, "runs", "resumed"), resume=True)
    run.train()
    results["resumed"] = _snapshot(run)

    results["writes"] = list(seen)
    D.barrier()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    D.shutdown()


def _max_diff(a: dict, b: dict, keys=None) -> float:
    keys = keys or [k for k in a if a[k].is_floating_point()]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@pytest.mark.slow
def test_two_gloo_processes_search_like_one(tmp_path):
    import torch.multiprocessing as mp
    from search.run import SearchConfig, SearchRun
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # (b) synchronised BN on the shards == plain BN on the concatenated batch (forward, backward, running stats)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x, gout, bn = _bn_case(dtype)
        x = x.clone().requires_grad_(True)
        y = bn(x)
        y.backward(gout)
        for r, res in ((0, r0), (1, r1)):
            got = res["bn"][str(dtype)]
            lo, hi = D.shard_bounds(len(x), r, 2)
            torch.testing.assert_close(got["y"], y.detach()[lo:hi], atol=tol, rtol=tol)
            torch.testing.assert_close(got["dx"], x.grad[lo:hi], atol=tol, rtol=tol)
            torch.testing.assert_close(got["dw"], bn.weight.grad, atol=tol, rtol=tol)
            torch.testing.assert_close(got["db"], bn.bias.grad, atol=tol, rtol=tol)
            torch.testing.assert_close(got["rm"], bn.running_mean, atol=tol, rtol=tol)
            torch.testing.assert_close(got["rv"], bn.running_var, atol=tol, rtol=tol)

    # (d) an indivisible global batch
    for res in (r0, r1):
        assert "--batch-size 15" in res["odd_error"] and "divisible by 2" in res["odd_error"]
    assert not (tmp_path / "runs" / "odd").exists()

    # (a) the same alpha, weights, BN statistics and multiplier as one process with the same global batch
    for name, cfg in (("first", CFG), ("second", CFG2)):
        one = SearchRun(SearchConfig(**cfg), tmp_path / "single" / name)
        one.run(progress=False) if name == "first" else one.train()
        single = _snapshot(one)
        assert single.keys() == r0[name].keys()
        for k in single:
            assert torch.equal(r0[name][k], r1[name][k]), k        # the processes never drift apart
            torch.testing.assert_close(r0[name][k], single[k], atol=ATOL, rtol=RTOL, msg=k)
        start = SearchRun(SearchConfig(**cfg), tmp_path / "fresh" / name).model.alphas.detach()
        assert float((single["alphas"] - start).abs().max()) > 1000 * ATOL   # alpha moved: not vacuous
        weights = [k for k in single if k not in ("alphas", "_multipliers") and single[k].is_floating_point()]
        print(f"{name}: max |diff| alpha {_max_diff(r0[name], single, ['alphas']):.2e}, "
              f"weights/buffers {_max_diff(r0[name], single, weights):.2e}, "
              f"mu {_max_diff(r0[name], single, ['_multipliers']):.2e}; "
              f"alpha moved {float((single['alphas'] - start).abs().max()):.3f}")
    assert r0["first"]["_multipliers"].abs().max() > 0                         # the dual ascent ran
    written = torch.load(tmp_path / "runs" / "first" / "checkpoint.pt", weights_only=True)["model"]
    for k in written:
        assert torch.equal(written[k], r0["first"][k]), k                   # rank 0 wrote what it holds

    # losses in the log are global means: equal to one process's (up to the sums' order)
    for name in ("first", "second"):
        multi = [json.loads(x) for x in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()]
        solo = [json.loads(x) for x in (tmp_path / "single" / name / "log.jsonl").read_text().splitlines()]
        assert len(multi) == len(solo)
        for a, b in zip(multi, solo):
            assert a["loss_train"] == pytest.approx(b["loss_train"], abs=1e-5)
            assert a["loss_val"] == pytest.approx(b["loss_val"], abs=1e-5)

    # (c) one writer: rank 1 wrote nothing, and each run directory holds what a one-process run's holds
    assert r1["writes"] == []
    assert sorted(p.name for p in (tmp_path / "runs" / "first").iterdir()) == \
        sorted(p.name for p in (tmp_path / "single" / "first").iterdir())
    assert json.loads((tmp_path / "runs" / "first" / "result.json").read_text())["world_size"] == 2

    # resume under DDP: the interrupted-and-resumed run ends where the uninterrupted one does
    for k in r0["first"]:
        assert torch.equal(r0["resumed"][k], r1["resumed"][k]), k
        torch.testing.assert_close(r0["resumed"][k], r0["first"][k], atol=1e-6, rtol=1e-6, msg=k)
    logs = (tmp_path / "runs" / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logs] == [1, 2, 3, 4]


def test_single_process_search_keeps_plain_batchnorm(tmp_path):
    """Without torchrun nothing is converted or reduced (the one-process path is unchanged)."""
    from search.run import SearchConfig, SearchRun
    run = SearchRun(SearchConfig(**{**CFG, "batch_size": 15}), tmp_path / "run")   # any batch size in one process
    assert run.architect.reduce_grads is None
    assert not any(isinstance(m, D.SyncBatchNorm2d) for m in run.model.modules())
    assert D.convert_sync_batchnorm(run.model) == 0
    bn = torch.nn.BatchNorm2d(2)
    bn.__class__ = D.SyncBatchNorm2d      # in one process it is plain BatchNorm2d
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True))
