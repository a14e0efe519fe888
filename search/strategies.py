"""Search strategies: how alpha is updated (the DARTS ``architect``), by name.

* ``darts`` -- first order: grad_alpha L_val(w, alpha).
* ``darts-2nd`` -- second order (DARTS eq. 7-8): the virtual step
  w' = w - xi (momentum + grad_w L_train + wd w), then
  grad_alpha L_val(w') - xi (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2R,
  w+- = w +- R grad_w' L_val(w'), R = 0.01 / ||grad_w' L_val(w')||.
* ``pcdarts`` -- first order on a partial-channel supernet (K=4) with edge
  normalisation beta, alpha frozen during warm-up epochs.
* ``pdarts`` -- P-DARTS: first order, progressive stages (search/progressive.py),
  the first 10 of each stage's 25 epochs weights-only, alpha gradients clipped at 5.
* ``rapdarts`` -- ``pdarts`` with expected-cost terms in every stage's alpha loss
  (RAPDARTS eq. 10); it asks for at least one budget or penalty.
* ``dcanas`` -- DCA-NAS: first order on a supernet with shared weights, a channel
  bottleneck and derived cells (search/dcanas.py), under the hard budgets' dual ascent.

Max-W (sharpDARTS eq. 3) is a supernet option (``max_w``) of every strategy.

The resource penalty depends on alpha only, so its gradient is added to the
architecture gradient directly, whatever the order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces.errors import unknown


@dataclass(frozen=True)
class StrategySpec:
    name: str
    second_order: bool
    partial_k: int          # default K of the supernet
    arch_lr: float
    weight_lr: float
    weight_lr_min: float
    warmup_frac: float      # fraction of epochs with alpha frozen (PC-DARTS: 15 of 50)
    doc: str
    progressive: bool = False               # P-DARTS stages (search/progressive.py)
    arch_grad_clip: float | None = None     # clip the alpha gradient norm (P-DARTS: 5)
    needs_terms: bool = False               # asks for at least one budget or penalty (RAPDARTS)
    supernet: tuple[tuple[str, object], ...] = ()   # default SupernetConfig flags (DCA-NAS)


STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(spec: StrategySpec) -> None:
    STRATEGIES[spec.name] = spec


def get_strategy(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise unknown("strategy", name, STRATEGIES)
    return STRATEGIES[name]


register_strategy(StrategySpec("darts", False, 1, 3e-4, 0.025, 0.001, 0.0, "DARTS, first order"))
register_strategy(StrategySpec("darts-2nd", True, 1, 3e-4, 0.025, 0.001, 0.0, "DARTS, second order (unrolled)"))
register_strategy(StrategySpec("pcdarts", False, 4, 6e-4, 0.1, 0.0, 15 / 50, "PC-DARTS (K=4, edge normalisation, warm-up)"))
# P-DARTS: batch 96, weight lr 0.025 -> 0, alpha lr 6e-4, 10 of 25 epochs per stage weights-only, alpha grads clipped at 5
register_strategy(StrategySpec("pdarts", False, 1, 6e-4, 0.025, 0.0, 10 / 25,
                               "P-DARTS (progressive stages 5/11/17 cells, 8/5/3 ops, skip dropout, <= 2 skips)",
                               progressive=True, arch_grad_clip=5.0))
register_strategy(StrategySpec("rapdarts", False, 1, 6e-4, 0.025, 0.0, 10 / 25,
                               "RAPDARTS (P-DARTS with expected-cost terms in every stage)",
                               progressive=True, arch_grad_clip=5.0, needs_terms=True))
# DCA-NAS appendix D: weight lr 0.2 (batch 512) cosine to 0, alpha Adam lr 6e-4. The paper gives no
# bottleneck factor; 4 matches PC-DARTS's K on CIFAR.
register_strategy(StrategySpec("dcanas", False, 1, 6e-4, 0.2, 0.0, 0.0,
                               "DCA-NAS (shared weights, channel bottleneck, derived cells, hard budgets)",
                               supernet=(("share_weights", True), ("bottleneck", 4), ("derived_cells", True))))


class Architect:
    """One alpha step per iteration, before the weight step (as in DARTS).

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

    def __init__(self, model: nn.Module, spec: StrategySpec, w_optimizer: torch.optim.SGD,
                 penalty: Callable[[], torch.Tensor], arch_lr: float | None = None, grad_clip: float | None = None,
                 reduce_grads: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None):
        self.model, self.spec, self.w_opt, self.penalty = model, spec, w_optimizer, penalty
        self.reduce_grads = reduce_grads
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr or spec.arch_lr,
                                          betas=(0.5, 0.999), weight_decay=1e-3)
        self.grad_clip = grad_clip

    def loss(self, x, y) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def step(self, x_train, y_train, x_val, y_val, eta: float) -> torch.Tensor:
        """Update alpha; returns the validation loss (task part) before the step."""
        self.optimizer.zero_grad(set_to_none=True)
        arch = self.model.arch_parameters()
        if self.spec.second_order:
            loss_val = self._unrolled_grads(x_train, y_train, x_val, y_val, eta)
        else:
            loss_val = self.loss(x_val, y_val)
            grads = torch.autograd.grad(loss_val, arch)
            if self.reduce_grads is not None:
                grads = self.reduce_grads(list(grads))
            for p, g in zip(arch, grads):
                p.grad = g
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

    # --- DARTS eq. 7-8 -------------------------------------------------
    def _unrolled_grads(self, x_train, y_train, x_val, y_val, eta: float) -> torch.Tensor:
        weights = self.model.weight_parameters()
        arch = self.model.arch_parameters()
        wd = self.w_opt.param_groups[0]["weight_decay"]
        mom = self.w_opt.param_groups[0]["momentum"]
        backup = [w.detach().clone() for w in weights]
        # virtual step w' = w - eta * (momentum buffer + grad_w L_train + wd * w)
        g_train = torch.autograd.grad(self.loss(x_train, y_train), weights, allow_unused=True)
        if self.reduce_grads is not None:
            g_train = self.reduce_grads([torch.zeros_like(w) if g is None else g for w, g in zip(weights, g_train)])
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                g = torch.zeros_like(w) if g is None else g
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                m = mom * buf if buf is not None else 0.0
                w.sub_(eta * (m + g + wd * w))
        loss_val = self.loss(x_val, y_val)
        grads = torch.autograd.grad(loss_val, arch + weights, allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(arch, grads[:len(arch)])]
        d_w = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads[len(arch):])]
        if self.reduce_grads is not None:
            reduced = self.reduce_grads(d_alpha + d_w)
            d_alpha, d_w = reduced[:len(arch)], reduced[len(arch):]
        # finite-difference Hessian-vector product around the original w
        R = 0.01 / torch.cat([g.flatten() for g in d_w]).norm().clamp_min(1e-12)
        hvp_pos = self._grad_alpha_at(weights, backup, d_w, R, x_train, y_train)
        hvp_neg = self._grad_alpha_at(weights, backup, d_w, -R, x_train, y_train)
        if self.reduce_grads is not None:
            reduced = self.reduce_grads(hvp_pos + hvp_neg)
            hvp_pos, hvp_neg = reduced[:len(arch)], reduced[len(arch):]
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        for a, da, gp, gn in zip(arch, d_alpha, hvp_pos, hvp_neg):
            a.grad = da - eta * (gp - gn) / (2 * R)
        return loss_val

    def _grad_alpha_at(self, weights, backup, d_w, r, x, y):
        with torch.no_grad():
            for w, b, v in zip(weights, backup, d_w):
                w.copy_(b + r * v)
        g = torch.autograd.grad(self.loss(x, y), self.model.arch_parameters(), allow_unused=True)
        return [torch.zeros_like(a) if gi is None else gi for a, gi in zip(self.model.arch_parameters(), g)]
