"""P-DARTS (Chen et al. 2019) and RAPDARTS (Green et al.): progressive stages (search/progressive.py).

* ``pdarts`` -- first order; ``epochs`` epochs per stage, each stage a fresh, deeper
  supernet holding the ops the last stage kept; the first 10 of each stage's 25
  epochs weights-only, skip-connect dropout, alpha gradients clipped at 5; the
  final normal cell keeps at most ``max_skips`` skip connects.
* ``rapdarts`` -- ``pdarts`` with expected-cost terms in every stage's alpha loss
  (RAPDARTS eq. 10); it asks for at least one budget or penalty.

P-DARTS: batch 96, weight lr 0.025 -> 0, alpha lr 6e-4.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from spaces.errors import HwcostError

from ..progressive import PDARTS_MAX_SKIPS, cap_skips, keep_strongest, plan_stages, skip_dropout_rate, \
    subsets_of
from .base import Strategy, dca_options, register_strategy


@dataclass(frozen=True, kw_only=True)
class Progressive(Strategy):
    progressive: bool = True
    arch_grad_clip: float | None = 5.0

    def check(self, cfg) -> None:
        if cfg.max_skips < 0:
            raise HwcostError(f"--max-skips must be >= 0, got {cfg.max_skips}")
        if cfg.space == "nb201" and cfg.max_skips != PDARTS_MAX_SKIPS:
            raise HwcostError("--max-skips limits the skip connects of a DARTS normal cell; an nb201 cell has no "
                              "such limit (P-DARTS defines it for the darts-like spaces only)")
        dca = dca_options(self.supernet_flags(cfg))
        if dca:
            raise HwcostError(f"DCA-NAS options ({', '.join(dca)}) do not combine with progressive strategy "
                              f"{cfg.strategy!r}: its per-edge op subsets need the plain DARTS cell")

    def plan_stages(self, cfg, n_ops: int):
        layers = cfg.stages or [cfg.layers, cfg.layers + 6, cfg.layers + 12]   # P-DARTS: add 0, 6, 12 cells
        return plan_stages(layers, cfg.stage_ops, cfg.skip_dropout, n_ops)

    def next_op_subsets(self, model, stage):
        """Each edge keeps its ``stage.ops_per_edge`` strongest ops."""
        return subsets_of(keep_strongest(model.arch_logits(), stage.ops_per_edge))

    def start_epoch(self, run, epoch: int, warmup: int) -> dict:
        drop = skip_dropout_rate(run.stages[run.stage].skip_dropout, epoch, run.cfg.epochs, warmup)
        run.model.set_skip_dropout(drop)
        return {"stage": run.stage, "skip_dropout": drop}

    def derivation_logits(self, run) -> tuple[torch.Tensor, object]:
        """Dropped ops at -inf (the stage subsets); darts-like spaces: at most ``max_skips`` skip connects."""
        logits = run.model.arch_logits().detach()
        if run.cfg.space == "nb201":
            return logits, None
        logits, removed, held = cap_skips(logits, run.ops, run.cfg.max_skips, run.net_cfg.steps, run.model.betas)
        return logits, {"max_skips": run.cfg.max_skips, "removed_edges": removed, "held": held}

    def report(self, run, result: dict, arch, notes) -> None:
        if notes is not None:
            notes["final_skips"] = sum(op == "skip_connect" for op, _ in arch.normal)
        result["progressive"] = {
            "stages": [dataclasses.asdict(st) for st in run.stages], "final_stage": run.stage,
            "op_subsets": run.named_subsets(), "skip_cap": notes}


@dataclass(frozen=True, kw_only=True)
class RAPDARTS(Progressive):
    needs_terms: bool = True

    def check(self, cfg) -> None:
        if not (cfg.budgets or cfg.penalties):
            raise HwcostError(f"strategy {cfg.strategy!r} searches under resource terms: give --budget or "
                              f"--penalty (without them it is pdarts)")
        super().check(cfg)


register_strategy(Progressive(
    name="pdarts", arch_lr=6e-4, weight_lr=0.025, weight_lr_min=0.0, warmup_frac=10 / 25,
    doc="P-DARTS (progressive stages 5/11/17 cells, 8/5/3 ops, skip dropout, <= 2 skips)"))
register_strategy(RAPDARTS(
    name="rapdarts", arch_lr=6e-4, weight_lr=0.025, weight_lr_min=0.0, warmup_frac=10 / 25,
    doc="RAPDARTS (P-DARTS with expected-cost terms in every stage)"))
