"""Data-parallel helpers for training and search: ``torchrun`` with gloo (CPU) or nccl (GPU).

Every function is a no-op in a plain single process, so the same loop runs
both ways. The scheme is explicit gradient averaging rather than
``DistributedDataParallel``: the loops here already own their backward,
clipping and optimizer steps (and the search loop owns a second optimizer for
the architecture), and one coalesced all-reduce after ``backward()`` is all
they need. Equivalence with one process rests on three rules:

1. every process starts from the same parameters (:func:`broadcast_module`);
2. every process draws the same *global* batch (same seeded permutation and
   augmentation) and keeps its contiguous part (:func:`shard`);
3. each process weights its loss by its share of the global batch
   (:func:`shard_weight`) and the gradients are averaged
   (:func:`allreduce_grads`), so every process holds the gradient of the mean
   loss over the global batch and takes the same optimizer step.

What is *not* equivalent: BatchNorm in training mode normalises each shard
with its own batch statistics (as DDP does without SyncBatchNorm, which
PyTorch offers on GPUs only), and its running statistics drift apart;
:func:`allreduce_buffers` averages them before anything is evaluated or
saved. Randomness drawn inside the model (drop-path) differs per process.
The search (``hwcost search``) avoids the BatchNorm difference altogether:
:func:`convert_sync_batchnorm` swaps its BNs for :class:`SyncBatchNorm2d`,
whose training-mode statistics (forward) and statistic gradients (backward)
are all-reduced, on gloo as on nccl.

Launch: ``torchrun --nproc_per_node K -m hwcost.cli train|search ...``; only rank 0
writes files (:func:`is_main`, :func:`main_only`).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from spaces.errors import HwcostError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_started_here = False


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None      # None: not distributed
    device: torch.device


def init(backend: str | None = None, device: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    Without those variables (or with WORLD_SIZE=1) nothing is initialised and
    the process is rank 0 of 1. ``backend`` defaults to nccl when CUDA is
    available (each process then uses GPU ``LOCAL_RANK``) and gloo otherwise;
    ``device="cpu"`` forces gloo.
    """
    global _started_here
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world <= 1 and not dist.is_initialized():
        dev = torch.device(device if device not in (None, "auto") else ("cuda" if use_cuda else "cpu"))
        return DistInfo(0, 1, 0, None, dev)
    if not dist.is_initialized():
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise HwcostError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with "
                              f"torchrun --nproc_per_node {world} ...")
        backend = backend or ("nccl" if use_cuda else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        _started_here = True
    backend = dist.get_backend()
    dev = torch.device(f"cuda:{local_rank}" if backend == "nccl" else "cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, dev)


def shutdown() -> None:
    """Leave the process group if :func:`init` created it.

    Every rank first meets the others at a barrier: a rank that tore its gloo
    connections down while a peer was still finishing its last collective made
    that peer's transport thread call ``std::terminate`` (SIGABRT, seen once in CI).
    """
    global _started_here
    if _started_here and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _started_here = False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or not distributed): the one process that writes files and prints."""
    return rank() == 0


def main_only(fn: Callable) -> Callable:
    """Decorator: run ``fn`` on rank 0 only (other ranks get None)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None
    return wrapper


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# --- batches ------------------------------------------------------------------------------


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[start, stop) of this process's contiguous part of ``n`` samples (sizes differ by at most 1)."""
    r = rank() if rank_ is None else rank_
    k = world_size() if world is None else world
    base, extra = divmod(n, k)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(x: torch.Tensor, y: torch.Tensor | None = None, rank_: int | None = None, world: int | None = None):
    """This process's part of a global batch (the same split ``torch.tensor_split`` makes).

    Concatenating the parts of ranks 0..K-1 gives the global batch back, in order.
    """
    start, stop = shard_bounds(len(x), rank_, world)
    return x[start:stop] if y is None else (x[start:stop], y[start:stop])


def shard_weight(n_local: int, n_global: int) -> float:
    """Factor on a process's *mean* loss so that averaged gradients equal the global-batch mean.

    mean over ranks of (K * n_r / n) * mean_r(loss) = sum_r n_r mean_r / n = mean(loss).
    """
    return world_size() * n_local / n_global


# --- collectives --------------------------------------------------------------------------


def allreduce_grads(params: Iterable[torch.nn.Parameter], average: bool = True) -> None:
    """Sum (``average``: then divide by K) the gradients of ``params`` over all processes.

    One coalesced all-reduce: the gradients are flattened into one buffer with a
    has-gradient flag per parameter appended, so a parameter that received no
    gradient anywhere keeps ``grad = None`` (the optimizer then skips it, as it
    would in one process) and one that received a gradient on some ranks only
    gets the sum with zeros for the others.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    ref = params[0]
    flat = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=ref.device, dtype=ref.dtype)
            for p in params]
    flags = torch.tensor([p.grad is not None for p in params], device=ref.device, dtype=ref.dtype)
    buf = torch.cat(flat + [flags])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if average:
        buf[:-len(params)] /= dist.get_world_size()
    offset = 0
    for p, flag in zip(params, buf[-len(params):].tolist()):
        n = p.numel()
        if flag > 0:
            g = buf[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def allreduce_sum(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Sum a small vector of numbers (losses, counts) over all processes (float64, CPU)."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if not is_distributed():
        return t
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every process (same start everywhere)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def allreduce_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BN running mean/var) over all processes.

    Each process's BN saw only its shard; the average of the running means is
    the running mean over the global batches; the variance misses the
    between-shard part (small for random shards).
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b /= dist.get_world_size()



def allreduce_tensors(tensors: Sequence[torch.Tensor], average: bool = True) -> list[torch.Tensor]:
    """Sum (``average``: then divide by K) a list of same-dtype tensors over all processes.

    One coalesced all-reduce; returns new tensors of the same shapes (the inputs
    are left alone). In one process the inputs come back unchanged.
    """
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return tensors
    buf = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if average:
        buf /= dist.get_world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(buf[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


# --- synchronised batch norm (CPU / gloo as well as GPU / nccl) ----------------------------


class _SyncBatchNormFn(torch.autograd.Function):
    """x -> (x - mean) / sqrt(var + eps) with mean and (biased) var over the *global* batch.

    Forward: one all-reduce of [per-channel sum, per-channel sum of squares, count]
    (float64, so E[x^2] - E[x]^2 keeps its digits). Backward: one all-reduce of
    [sum g, sum g * x_hat]; with n the global count,
    ``dx = (g - sum(g)/n - x_hat * sum(g x_hat)/n) / sqrt(var + eps)``.
    Every process back-propagates its own loss, so the sums in the backward add the
    upstream gradients of all processes' losses: each process gets the gradient of
    the *sum* of the processes' losses with respect to its own samples, and the
    average over processes of the parameter gradients is the gradient of the mean
    loss, as one process with the concatenated batch computes it.
    """

    @staticmethod
    def forward(ctx, x, eps, stats_out):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)])
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        n = local[-1]
        mean = local[:c] / n
        var = (local[c:2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = (var + eps).rsqrt().to(x.dtype).view(shape)
        x_hat = (x - mean.to(x.dtype).view(shape)) * invstd
        ctx.save_for_backward(x_hat, invstd)
        ctx.n = float(n)
        stats_out.append((mean, var, float(n)))
        return x_hat

    @staticmethod
    def backward(ctx, g):
        x_hat, invstd = ctx.saved_tensors
        c = x_hat.shape[1]
        dims = [0] + list(range(2, x_hat.dim()))
        shape = [1, c] + [1] * (x_hat.dim() - 2)
        sums = torch.cat([g.sum(dims, dtype=torch.float64), (g * x_hat).sum(dims, dtype=torch.float64)])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        mean_g = (sums[:c] / ctx.n).to(g.dtype).view(shape)
        mean_gx = (sums[c:] / ctx.n).to(g.dtype).view(shape)
        return (g - mean_g - x_hat * mean_gx) * invstd, None, None


def sync_batch_norm(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, tuple]:
    """Non-affine batch normalisation of ``x`` over the global batch; returns (x_hat, (mean, var, n))."""
    stats: list = []
    y = _SyncBatchNormFn.apply(x, eps, stats)
    return y, stats[0]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the global batch.

    ``torch.nn.SyncBatchNorm`` runs on CUDA only; this one runs wherever
    ``torch.distributed`` does (gloo on CPU included). Same parameters, buffers and
    ``state_dict`` as ``nn.BatchNorm2d``; the running statistics take the global
    mean and the global unbiased variance, so every process holds the same ones,
    equal to what one process with the whole batch would hold. In eval mode, or
    in a single process, it is plain ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or self.running_mean is None
        if not use_batch or not is_distributed():
            return super().forward(x)
        self._check_input_dim(x)
        x_hat, (mean, var, n) = sync_batch_norm(x, self.eps)
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1.0 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1.0 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        if self.affine:
            shape = [1, -1] + [1] * (x.dim() - 2)
            x_hat = x_hat * self.weight.view(shape) + self.bias.view(shape)
        return x_hat


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` in ``module`` into :class:`SyncBatchNorm2d`, in place.

    The modules keep their identity, parameters and buffers (only their class
    changes), so optimisers, ``state_dict`` keys and any references held
    elsewhere stay valid. Returns how many were converted (0 in one process:
    nothing is changed there).
    """
    if not is_distributed():
        return 0
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
            n += 1
    return n
