"""The alpha step (the DARTS ``architect``); the strategy computes the task gradient."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .base import Strategy


class Architect:
    """One alpha step per iteration, before the weight step (as in DARTS).

    ``spec.alpha_grads`` sets the gradient of the task loss (first order, or
    DARTS's unrolled second order); the resource penalty depends on alpha
    only, so its gradient is added directly, whatever the order.

    ``reduce_grads`` (data-parallel search, :mod:`search.distributed`): a function
    that averages a list of gradient tensors over the processes, each of which
    holds its shard of the batches. It is applied to every gradient of the task
    loss -- first order: grad_alpha L_val; second order: grad_w L_train of the
    virtual step, (grad_alpha, grad_w') L_val(w') and both finite-difference
    gradients grad_alpha L_train(w+-) -- so every process computes the same
    unrolled step one process computes with the whole batches. The resource
    penalty depends on alpha only (the same on every process) and is added
    after. None (one process): the gradients are used as computed.
    """

    def __init__(self, model: nn.Module, spec: Strategy, w_optimizer: torch.optim.SGD,
                 penalty: Callable[[], torch.Tensor], arch_lr: float | None = None, grad_clip: float | None = None,
                 reduce_grads: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None):
        self.model, self.spec, self.w_opt, self.penalty = model, spec, w_optimizer, penalty
        self.reduce_grads = reduce_grads
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr or spec.arch_lr,
                                          betas=(0.5, 0.999), weight_decay=1e-3)
        self.grad_clip = grad_clip

    def loss(self, x, y) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def reduce(self, grads):
        """Gradients averaged over the processes (as computed with one process)."""
        return grads if self.reduce_grads is None else self.reduce_grads(list(grads))

    def step(self, x_train, y_train, x_val, y_val, eta: float) -> torch.Tensor:
        """Update alpha; returns the validation loss (task part) before the step."""
        self.optimizer.zero_grad(set_to_none=True)
        arch = self.model.arch_parameters()
        loss_val = self.spec.alpha_grads(self, x_train, y_train, x_val, y_val, eta)
        pen = self.penalty()
        if pen.requires_grad:
            pen_grads = torch.autograd.grad(pen, arch, allow_unused=True)
            for p, g in zip(arch, pen_grads):
                if g is not None:
                    p.grad = p.grad + g
        if self.grad_clip:
            nn.utils.clip_grad_norm_(arch, self.grad_clip)
        self.optimizer.step()
        return loss_val.detach()
