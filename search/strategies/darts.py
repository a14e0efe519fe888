"""DARTS (Liu et al. 2019), first and second order.

* ``darts`` -- first order: grad_alpha L_val(w, alpha).
* ``darts-2nd`` -- second order (DARTS eq. 7-8): the virtual step
  w' = w - xi (momentum + grad_w L_train + wd w), then
  grad_alpha L_val(w') - xi (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2R,
  w+- = w +- R grad_w' L_val(w'), R = 0.01 / ||grad_w' L_val(w')||.

Max-W (sharpDARTS eq. 3) is a supernet option (``max_w``) and Cosine Power
Annealing (sharpDARTS eq. 2) a schedule (``lr_schedule="cpa"``) of every strategy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .architect import Architect
from .base import Strategy, register_strategy


@dataclass(frozen=True, kw_only=True)
class UnrolledDarts(Strategy):
    """DARTS's second-order alpha gradient."""
    second_order: bool = True

    def alpha_grads(self, arch: Architect, x_train, y_train, x_val, y_val, eta: float) -> torch.Tensor:
        model, alphas = arch.model, arch.model.arch_parameters()
        weights = model.weight_parameters()
        wd = arch.w_opt.param_groups[0]["weight_decay"]
        mom = arch.w_opt.param_groups[0]["momentum"]
        backup = [w.detach().clone() for w in weights]
        # virtual step w' = w - eta * (momentum buffer + grad_w L_train + wd * w)
        g_train = torch.autograd.grad(arch.loss(x_train, y_train), weights, allow_unused=True)
        if arch.reduce_grads is not None:
            g_train = arch.reduce([torch.zeros_like(w) if g is None else g for w, g in zip(weights, g_train)])
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                g = torch.zeros_like(w) if g is None else g
                buf = arch.w_opt.state.get(w, {}).get("momentum_buffer")
                m = mom * buf if buf is not None else 0.0
                w.sub_(eta * (m + g + wd * w))
        loss_val = arch.loss(x_val, y_val)
        grads = torch.autograd.grad(loss_val, alphas + weights, allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[:len(alphas)])]
        d_w = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads[len(alphas):])]
        if arch.reduce_grads is not None:
            reduced = arch.reduce(d_alpha + d_w)
            d_alpha, d_w = reduced[:len(alphas)], reduced[len(alphas):]
        # finite-difference Hessian-vector product around the original w (eq. 8)
        R = 0.01 / torch.cat([g.flatten() for g in d_w]).norm().clamp_min(1e-12)
        hvp_pos = _grad_alpha_at(arch, backup, d_w, R, x_train, y_train)
        hvp_neg = _grad_alpha_at(arch, backup, d_w, -R, x_train, y_train)
        if arch.reduce_grads is not None:
            reduced = arch.reduce(hvp_pos + hvp_neg)
            hvp_pos, hvp_neg = reduced[:len(alphas)], reduced[len(alphas):]
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        for a, da, gp, gn in zip(alphas, d_alpha, hvp_pos, hvp_neg):
            a.grad = da - eta * (gp - gn) / (2 * R)
        return loss_val


def _grad_alpha_at(arch: Architect, backup, d_w, r, x, y) -> list[torch.Tensor]:
    """grad_alpha L_train at w = backup + r d_w."""
    alphas = arch.model.arch_parameters()
    with torch.no_grad():
        for w, b, v in zip(arch.model.weight_parameters(), backup, d_w):
            w.copy_(b + r * v)
    g = torch.autograd.grad(arch.loss(x, y), alphas, allow_unused=True)
    return [torch.zeros_like(a) if gi is None else gi for a, gi in zip(alphas, g)]


register_strategy(Strategy(name="darts", arch_lr=3e-4, weight_lr=0.025, weight_lr_min=0.001,
                           doc="DARTS, first order"))
register_strategy(UnrolledDarts(name="darts-2nd", arch_lr=3e-4, weight_lr=0.025, weight_lr_min=0.001,
                                doc="DARTS, second order (unrolled)"))
