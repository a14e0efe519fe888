"""Batch norm over a concatenation of modules' channels (tricks 4 and 5 of search/fast.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _BNGroup:
    """Non-affine BN modules whose channels run as one concatenated BN call.

    Their running statistics are made views of one flat buffer, so the single
    ``F.batch_norm`` call updates every module in place (each gets exactly the
    update its own forward would give). If a module's buffers are replaced
    (``model.to(...)``, ``load_state_dict(assign=True)``) the views are rebuilt.
    """

    def __init__(self, mods: list[nn.BatchNorm2d]):
        self.mods = mods
        self.c = mods[0].num_features
        self.eps, self.momentum = mods[0].eps, mods[0].momentum
        self.tracked = mods[0].running_mean is not None
        self.bound: list = []

    def _stats(self):
        if self.bound and all(m._buffers["running_mean"] is a and m._buffers["running_var"] is b
                              and m._buffers["num_batches_tracked"] is n
                              for m, (a, b, n) in zip(self.mods, self.bound)):
            return self.flat
        ms, c = self.mods, self.c
        with torch.no_grad():
            rm = torch.cat([m.running_mean for m in ms])
            rv = torch.cat([m.running_var for m in ms])
            nbt = torch.stack([m.num_batches_tracked for m in ms])
        for i, m in enumerate(ms):
            m._buffers["running_mean"] = rm[i * c:(i + 1) * c]
            m._buffers["running_var"] = rv[i * c:(i + 1) * c]
            m._buffers["num_batches_tracked"] = nbt[i]
        self.bound = [(m._buffers["running_mean"], m._buffers["running_var"], m._buffers["num_batches_tracked"])
                      for m in ms]
        self.flat = (rm, rv, nbt)
        return self.flat

    def __call__(self, z: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Train-mode BN of ``z`` (channels = the modules' channels, in order), times ``weight``."""
        if not self.tracked:
            return F.batch_norm(z, None, None, weight, None, True, 0.0, self.eps)
        rm, rv, nbt = self._stats()
        out = F.batch_norm(z, rm, rv, weight, None, True, self.momentum, self.eps)
        nbt.add_(1)
        return out

    def shared(self, z: torch.Tensor) -> torch.Tensor:
        """BN(z) where every module sees the same ``z`` (trick 6): one BN call, then each
        module's running statistics take this batch's mean and unbiased variance."""
        if not self.tracked:
            return F.batch_norm(z, None, None, None, None, True, 0.0, self.eps)
        rm, rv, nbt = self._stats()
        # momentum 1: the "running" buffers come back holding the batch statistics
        mean, var = torch.zeros_like(rm[:self.c]), torch.ones_like(rv[:self.c])
        out = F.batch_norm(z, mean, var, None, None, True, 1.0, self.eps)
        with torch.no_grad():
            k = len(self.mods)
            rm.view(k, -1).mul_(1.0 - self.momentum).add_(mean, alpha=self.momentum)
            rv.view(k, -1).mul_(1.0 - self.momentum).add_(var, alpha=self.momentum)
            nbt.add_(1)
        return out
