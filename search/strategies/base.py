"""The strategy plug-in: a record of the paper's hyper-parameters plus the hooks a search calls.

:class:`~search.run.SearchRun` owns the loop, the checkpoints and the logs; a
strategy decides the rest through these hooks (each has a plain default here):

* ``check(cfg)`` -- settings it cannot take (one clear error);
* ``supernet_flags(cfg)`` -- the supernet options it defaults (PC-DARTS's K, DCA-NAS's flags);
* ``plan_stages(cfg, n_ops)`` / ``next_op_subsets(model, stage)`` / ``start_epoch(run, epoch, warmup)``
  -- stages (progressive search) and what changes from epoch to epoch;
* ``weight_lr_at(cfg, epoch)`` -- the weight learning-rate schedule (cosine or sharpDARTS's CPA);
* ``architect(...)`` / ``alpha_grads(architect, ...)`` -- the alpha step;
* ``derivation_logits(run)`` / ``report(run, result, arch, notes)`` -- what the derivation sees, and
  what the strategy adds to result.json.

A new strategy is one file in this package that calls :func:`register_strategy`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from spaces.errors import HwcostError, unknown

from ..progressive import PDARTS_MAX_SKIPS
from ..schedules import lr_at

if TYPE_CHECKING:
    from ..progressive import Stage
    from ..run import SearchConfig, SearchRun
    from .architect import Architect

PROGRESSIVE_OPTIONS = ("stages", "stage_ops", "skip_dropout")
SUPERNET_FLAGS = {"share_weights": False, "bottleneck": 1, "derived_cells": False}


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """A strategy's defaults (the field order is config.json's "strategy" record)."""
    name: str
    second_order: bool = False
    partial_k: int = 1                      # default K of the supernet
    arch_lr: float
    weight_lr: float
    weight_lr_min: float
    warmup_frac: float = 0.0                # fraction of epochs with alpha frozen (PC-DARTS: 15 of 50)
    doc: str
    progressive: bool = False               # stages (search/progressive.py)
    arch_grad_clip: float | None = None     # clip the alpha gradient norm (P-DARTS: 5)
    needs_terms: bool = False               # asks for at least one budget or penalty (RAPDARTS)
    supernet: tuple[tuple[str, object], ...] = ()   # default SupernetConfig flags (DCA-NAS)

    def to_dict(self) -> dict:
        return asdict(self)

    # --- settings and supernet ---------------------------------------------------
    def check(self, cfg: SearchConfig) -> None:
        """Settings this strategy cannot take. The default: no stage options."""
        given = [o for o in PROGRESSIVE_OPTIONS if getattr(cfg, o)]
        if cfg.max_skips != PDARTS_MAX_SKIPS:
            given.append("max_skips")
        if given:
            progressive = [s.name for s in STRATEGIES.values() if s.progressive]
            raise HwcostError(f"{', '.join('--' + g.replace('_', '-') for g in given)} appl"
                              f"{'ies' if len(given) == 1 else 'y'} to progressive strategies only "
                              f"({', '.join(progressive)}), not to {cfg.strategy!r}")

    def supernet_flags(self, cfg: SearchConfig) -> dict:
        """partial_k, share_weights, bottleneck, derived_cells: the user's where given, else this strategy's."""
        flags = {**SUPERNET_FLAGS, **dict(self.supernet)}
        flags.update({f: getattr(cfg, f) for f in SUPERNET_FLAGS if getattr(cfg, f) is not None})
        return {"partial_k": cfg.partial_k or self.partial_k, **flags}

    # --- stages and epochs ---------------------------------------------------------
    def plan_stages(self, cfg: SearchConfig, n_ops: int) -> list[Stage] | None:
        """The stages of the search (None: one supernet for the whole search)."""
        return None

    def next_op_subsets(self, model: nn.Module, stage: Stage):
        """The op subsets (SupernetConfig.op_subsets) of ``stage``'s supernet, from the last stage's model."""
        raise NotImplementedError(f"strategy {self.name!r} has no stages")

    def warmup_epochs(self, cfg: SearchConfig) -> int:
        """Epochs (per stage) with alpha frozen."""
        return cfg.warmup_epochs if cfg.warmup_epochs is not None else round(self.warmup_frac * cfg.epochs)

    def weight_lr_at(self, cfg: SearchConfig, epoch: int) -> float:
        return lr_at(epoch, cfg.epochs, cfg.weight_lr or self.weight_lr, self.weight_lr_min, cfg.lr_schedule,
                     cfg.lr_power)

    def start_epoch(self, run: SearchRun, epoch: int, warmup: int) -> dict:
        """Set what changes per epoch on ``run.model``; returns extra fields for the epoch's log lines."""
        return {}

    # --- the alpha step --------------------------------------------------------------
    def architect(self, model: nn.Module, w_optimizer: torch.optim.SGD, penalty: Callable[[], torch.Tensor],
                  arch_lr: float | None = None,
                  reduce_grads: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None) -> Architect:
        from .architect import Architect
        return Architect(model, self, w_optimizer, penalty, arch_lr, grad_clip=self.arch_grad_clip,
                         reduce_grads=reduce_grads)

    def alpha_grads(self, arch: Architect, x_train, y_train, x_val, y_val, eta: float) -> torch.Tensor:
        """Set alpha's ``.grad`` from the task loss; return the validation loss. First order: grad_alpha L_val(w, alpha)."""
        alphas = arch.model.arch_parameters()
        loss_val = arch.loss(x_val, y_val)
        grads = arch.reduce(torch.autograd.grad(loss_val, alphas))
        for p, g in zip(alphas, grads):
            p.grad = g
        return loss_val

    # --- derivation -------------------------------------------------------------------
    def derivation_logits(self, run: SearchRun) -> tuple[torch.Tensor, object]:
        """The logits the derivation sees, and notes for :meth:`report`."""
        return run.model.arch_logits().detach(), None

    def report(self, run: SearchRun, result: dict, arch, notes) -> None:
        """Add this strategy's part to result.json (``arch``: the derived network)."""


def dca_options(flags: dict) -> list[str]:
    """The DCA-NAS supernet options that ``flags`` (:meth:`Strategy.supernet_flags`) turn on."""
    return [f for f in ("share_weights", "derived_cells") if flags[f]] + (["bottleneck"] if flags["bottleneck"] > 1
                                                                         else [])


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Make ``strategy`` searchable by its name; a name is registered once."""
    if strategy.name in STRATEGIES:
        raise HwcostError(f"strategy {strategy.name!r} is already registered "
                          f"({type(STRATEGIES[strategy.name]).__name__}); choose another name")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise unknown("strategy", name, STRATEGIES)
    return STRATEGIES[name]
