"""Data-parallel training: K gloo processes on CPU take the steps one process takes.

The 2-process run is launched the way torchrun launches it (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT in each process's environment), with
``torch.multiprocessing.spawn`` standing in for the launcher.

BatchNorm: in training mode each process would normalise its shard with the
shard's own statistics, which one process with the whole batch does not do
(SyncBatchNorm is GPU-only). The equivalence run therefore trains with BN
frozen (``freeze_bn``: running statistics, i.e. BN acts as a fixed affine map),
which makes every sample's loss independent of the others in its batch; then
the only difference left is the order of floating-point sums, and the
parameters agree to ``ATOL``. Cutout and crop/flip stay on: the global batch
is augmented identically on every process before it is sharded. Drop-path is
off (its masks are drawn per process).
"""
import json
import os
import socket

import pytest
import torch

from search import distributed as D

ATOL, RTOL = 1e-5, 1e-4     # float32 sums in another order, over 6 SGD steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CFG = dict(genotype="DARTS_V2", data="synthetic", C=4, layers=3, epochs=2, steps_per_epoch=3,
           batch_size=31, drop_path=0.0, freeze_bn=True, threads=1, network=None, seed=3)
# batch 31 on 2 processes: shards of 16 and 15, so the loss weighting by shard size is exercised


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from search.train import TrainConfig, TrainRun
    run = TrainRun(TrainConfig(**CFG), os.path.join(out, "run"))
    assert D.is_distributed() and D.world_size() == world and D.rank() == rank
    result = run.run(progress=False)
    torch.save(run.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))

    # allreduce_grads on hand-made gradients: a, on every rank; b, on rank 1 only; c, nowhere.
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))
    if rank == 1:
        b.grad = torch.ones(3) * 4
    D.allreduce_grads([a, b, c])
    checks = {"a": a.grad.tolist(), "b": b.grad.tolist(), "c_is_none": c.grad is None,
              "sum": D.allreduce_sum([rank, 1]).tolist(), "accuracy": result["test_accuracy"]}
    with open(os.path.join(out, f"checks{rank}.json"), "w") as f:
        json.dump(checks, f)
    D.shutdown()


def test_two_gloo_processes_take_the_same_steps_as_one(tmp_path):
    import torch.multiprocessing as mp
    from search.train import TrainConfig, run_train
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = run_train(TrainConfig(**CFG), tmp_path / "single", progress=False)
    torch.set_num_threads(1)
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["model"]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    written = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert single.keys() == r0.keys()
    for k in single:
        assert torch.equal(r0[k], r1[k]), k                    # the processes never drift apart
        assert torch.equal(r0[k], written[k]), k               # rank 0 wrote what it holds
        torch.testing.assert_close(r0[k], single[k], atol=ATOL, rtol=RTOL, msg=k)
    # Training did move the weights (far more than the tolerance): the comparison is not vacuous.
    from search.train import TrainRun
    start = TrainRun(TrainConfig(**CFG), tmp_path / "fresh").model.state_dict()
    assert max(float((single[k] - start[k]).abs().max()) for k in single if single[k].is_floating_point()) > 100 * ATOL
    c0, c1 = (json.loads((tmp_path / f"checks{r}.json").read_text()) for r in (0, 1))
    assert c0 == c1
    assert c0["a"] == [1.5] * 3                                # (1 + 2) / 2
    assert c0["b"] == [2.0] * 3                                # (0 + 4) / 2
    assert c0["c_is_none"] and c0["sum"] == [1.0, 2.0]
    assert c0["accuracy"] == pytest.approx(one["test_accuracy"], abs=1 / 100)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == \
        sorted(p.name for p in (tmp_path / "single").iterdir())   # one writer, a complete directory


def test_shards_partition_the_global_batch_in_order():
    x, y = torch.arange(31 * 2).reshape(31, 2), torch.arange(31)
    for k in (1, 2, 3, 7):
        parts = [D.shard(x, y, r, k) for r in range(k)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        sizes = [len(p[1]) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == [len(t) for t in torch.tensor_split(y, k)]
        # shard weights make the average of per-shard means the global mean
        losses = torch.rand(31)
        w = [k * len(p[1]) / 31 for p in parts]
        mean_of = sum(wi * losses[D.shard_bounds(31, r, k)[0]:D.shard_bounds(31, r, k)[1]].mean()
                      for r, wi in enumerate(w)) / k
        assert float(mean_of) == pytest.approx(float(losses.mean()), rel=1e-6)


def test_single_process_helpers_are_no_ops():
    info = D.init()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert not D.is_distributed() and D.is_main() and D.rank() == 0 and D.world_size() == 1
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([3.0, 4.0])
    D.allreduce_grads([p])
    assert p.grad.tolist() == [3.0, 4.0]
    assert D.shard_weight(8, 8) == 1.0
    assert D.main_only(lambda: 5)() == 5
    D.barrier()
    D.shutdown()


def test_half_configured_torchrun_env_is_a_clear_error(monkeypatch):
    from spaces import HwcostError
    monkeypatch.setenv("WORLD_SIZE", "2")
    for v in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(HwcostError, match="torchrun"):
        D.init()
