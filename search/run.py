"""A search run: config -> run directory (log, checkpoints, plots, result.json).

The run directory holds ``config.json`` (resolved), ``log.jsonl`` (one line a
step), ``checkpoint.pt`` (end of each epoch; tensors only, loaded with
``weights_only=True``), ``alphas.jsonl`` (softmax(alpha) per epoch), plots and,
at the end, ``result.json``. ``--resume`` restarts from the last checkpoint;
with the same seed the result equals an uninterrupted run's (each epoch's
data order and RNG are seeded from (seed, stage, epoch), not from the history).

Progressive strategies (P-DARTS, RAPDARTS; :mod:`search.progressive`) run
``epochs`` epochs per stage, each stage a fresh, deeper supernet holding the
ops the last stage kept; the checkpoint stores the stage and the op subsets.
DCA-NAS (:mod:`search.dcanas`) is the same loop on a supernet with shared
weights, a channel bottleneck and derived cells.

Data-parallel (``torchrun --nproc_per_node K -m hwcost.cli search ...``, gloo:
the search runs on CPU processes): every process draws the same global
batches (same seeds) and keeps its contiguous 1/K (``--batch-size`` is the
global batch and must be divisible by K); the supernet is broadcast from rank
0 after every build; its BatchNorms become :class:`search.distributed.SyncBatchNorm2d`
(global batch statistics, forward and backward); weight gradients are averaged
after ``backward()`` and before clipping, the architecture gradients inside
:class:`Architect` (first and second order) before clipping and Adam; the
logged losses are global means. Each process thus takes the step one process
takes with the whole batch, up to the order of floating-point sums. The fused
CPU cell (``fast``) calls ``F.batch_norm`` directly, so it is off under K > 1.
Only rank 0 writes the run directory and shows a progress bar.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces.errors import HwcostError

from . import distributed as D
from .data import load_data, search_loaders
from .derive import constrained_derive, derived_costs
from .objective import Objective, attainable_range, check_attainable, parse_term
from .progress import Progress
from .progressive import PDARTS_MAX_SKIPS, mask_of, subsets_of
from .schedules import SCHEDULES
from .strategies import dca_options, get_strategy
from .supernet import SupernetConfig, build_supernet
from .train import check_same_settings, restore_checkpoint


@dataclass
class SearchConfig:
    space: str = "darts"
    strategy: str = "darts"
    data: str = "digits"
    network: str = "cifar10"             # the target (deployed) network: cifar10 | imagenet (nb201: its own)
    table: str | None = None             # device table (path or bundled name) for latency
    devices: list[str] = field(default_factory=list)     # several devices: ["raspi4=raspi4", "gpu=t.json"]
    surrogate: str | None = None
    budgets: list[str] = field(default_factory=list)     # e.g. ["latency=4ms", "params=1.5M"]
    penalties: list[str] = field(default_factory=list)   # e.g. ["params=1e-7"]
    cost_mode: str = "derived"           # "derived" (value = derived network's cost) | "expected"
    budget_floor: float = 0.85           # keep a hard-budgeted cost >= floor * budget (0 disables)
    confidence: float | None = None      # latency budgets hold at this confidence (calibrated table; default 0.9)
    dual_lr: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    steps_per_epoch: int | None = None
    C: int = 8
    layers: int = 5
    partial_k: int | None = None         # default from the strategy (PC-DARTS: 4)
    max_w: bool = False
    fast: bool = True                    # fused CPU forward of the darts cell (search/fast.py); same values
    arch_lr: float | None = None
    weight_lr: float | None = None
    lr_schedule: str = "cosine"          # weight lr: cosine | cpa (sharpDARTS Cosine Power Annealing, eq. 2)
    lr_power: float = 2.0                # CPA's p (paper: 2 on CIFAR-10, 10 in its ImageNet figure)
    warmup_epochs: int | None = None     # progressive strategies: per stage
    grad_clip: float = 5.0
    seed: int = 0
    threads: int | None = None
    # P-DARTS / RAPDARTS (progressive strategies only); epochs are per stage
    stages: list[int] | None = None      # cells per stage; default layers, layers + 6, layers + 12 (5, 11, 17)
    stage_ops: list[int] | None = None   # ops per edge in each stage; default 8, 5, 3 (as shares of the op list)
    skip_dropout: list[float] | None = None  # skip-connect dropout per stage; default 0.1, 0.4, 0.7
    max_skips: int = PDARTS_MAX_SKIPS    # skip connects the final normal cell may keep
    # DCA-NAS supernet options; None = the strategy's default (on for dcanas, off otherwise)
    share_weights: bool | None = None
    bottleneck: int | None = None
    derived_cells: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_config(cfg: SearchConfig) -> None:
    """Combinations that cannot apply: one clear error before anything runs (the strategy's own: its ``check``)."""
    spec = get_strategy(cfg.strategy)
    if cfg.lr_schedule not in SCHEDULES:
        raise HwcostError(f"unknown lr schedule {cfg.lr_schedule!r}; known: {', '.join(SCHEDULES)}")
    if not cfg.lr_power > 0:
        raise HwcostError(f"--lr-power must be positive, got {cfg.lr_power}")
    if cfg.epochs < 1:
        raise HwcostError(f"--epochs must be at least 1, got {cfg.epochs}")
    spec.check(cfg)
    flags = spec.supernet_flags(cfg)
    dca = dca_options(flags)
    k = flags["partial_k"]
    if dca and k > 1:
        raise HwcostError(f"DCA-NAS options ({', '.join(dca)}) do not combine with PC-DARTS partial channels "
                          f"(K={k}); use --partial-k 1 or turn them off")
    if flags["bottleneck"] < 1:
        raise HwcostError(f"--bottleneck must be >= 1 (1 = off), got {flags['bottleneck']}")
    if cfg.C % flags["bottleneck"]:
        raise HwcostError(f"--bottleneck {flags['bottleneck']} must divide the supernet channels --C {cfg.C}")


# What a resumed run may change: speed only (threads; the fused cell computes the textbook cell's values).
RESUME_FREE = ("threads", "fast")
_FLAGS = {"budgets": "--budget", "penalties": "--penalty"}


def _canonical(name: str, value):
    """A setting as it acts: budgets and penalties by metric and value, in any order and spelling."""
    if name in ("budgets", "penalties") and isinstance(value, list):
        try:
            return sorted((t.metric, t.value) for t in (parse_term(v, "hard" if name == "budgets" else "soft")
                                                         for v in value))
        except HwcostError:
            return value
    return value


def run_settings(out: str | os.PathLike) -> dict | None:
    """The search settings a run directory was started with (its config.json), None when it has none."""
    path = Path(out) / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())["search"]
        if not isinstance(saved, dict):
            raise TypeError("not an object")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise HwcostError(f"cannot resume {out}: its config.json is unreadable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no search settings'})") from None
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return {k: v for k, v in saved.items() if k in names}


def resume_config(out: str | os.PathLike, given: dict) -> SearchConfig:
    """The settings to resume run directory ``out`` with: those it was started with (its
    config.json), so that ``--resume --out DIR`` alone continues the run. ``given`` holds the
    settings the user gave explicitly: they may restate the run's, or change what does not
    change the result (:data:`RESUME_FREE`); any other is one error naming each contradiction.
    Without a config.json (nothing to continue) the settings are ``given`` and the defaults."""
    saved = run_settings(out)
    if saved is None:
        return SearchConfig(**given)
    differ = [k for k, v in given.items()
              if k not in RESUME_FREE and k in saved and _canonical(k, v) != _canonical(k, saved[k])]
    if differ:
        def show(k, v):
            if isinstance(v, bool):
                return "on" if v else "off"
            if isinstance(v, list):
                return ",".join(map(str, v)) or "none"
            return "default" if v is None else str(v)
        what = ", ".join(f"{_FLAGS.get(k, '--' + k.replace('_', '-'))} {show(k, given[k])} (the run's: "
                         f"{show(k, saved[k])})" for k in differ)
        raise HwcostError(f"cannot resume {out} with other settings: {what} contradict{'s' if len(differ) == 1 else ''} "
                          f"its config.json; leave {'it' if len(differ) == 1 else 'them'} out to resume with the "
                          f"run's settings, or choose another --out")
    return SearchConfig(**{**saved, **{k: v for k, v in given.items() if k in RESUME_FREE or k not in saved}})


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _entropy(alphas: torch.Tensor) -> float:
    p = F.softmax(alphas.detach(), dim=-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


class SearchRun:
    def __init__(self, cfg: SearchConfig, out: str | os.PathLike, resume: bool = False,
                 correction: dict | None = None):
        check_config(cfg)
        self.cfg, self.out = cfg, Path(out)
        self.dist = D.init(device="cpu")       # no-op without torchrun; the search runs on CPU (gloo)
        k = D.world_size()
        if k > 1 and cfg.batch_size % k:
            raise HwcostError(f"--batch-size {cfg.batch_size} is the global batch, split across {k} processes: "
                              f"it must be divisible by {k} (e.g. {cfg.batch_size - cfg.batch_size % k or k})")
        if self.out.exists() and any(self.out.iterdir()) and not resume:   # every rank decides alike
            raise HwcostError(f"run directory {self.out} is not empty; pass --resume to continue it "
                              f"or choose another --out")
        if resume:                             # the run's settings, or one line naming what differs
            check_same_settings(self.out, "search", cfg.to_dict(), RESUME_FREE, _canonical)
        D.barrier()                            # every rank has checked --out before rank 0 writes there
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.spec = get_strategy(cfg.strategy)
        self.terms = [parse_term(b, "hard") for b in cfg.budgets] + [parse_term(p, "soft") for p in cfg.penalties]
        _seed_all(cfg.seed)
        self.data = load_data(cfg.data)
        self.ops = SupernetConfig(space=cfg.space).ops()
        self.stages = self.spec.plan_stages(cfg, len(self.ops))   # None: one supernet for the whole search
        self.stage, self.op_subsets = 0, None
        self._build()
        from .costs import apply_margin, confidence_margin, device_cost_tensor, latency_tables
        self.tables = latency_tables(cfg.table, cfg.devices)      # latency metric -> device table
        self.cost_tensor, notes = device_cost_tensor(cfg.space, cfg.network, self.ops, self.tables, cfg.surrogate)
        self.cost_notes = json.loads(json.dumps(notes, default=str))   # a copy: the cached notes stay as built
        from costmodels.expected_cost import ExpectedCost
        self.expected = ExpectedCost(self.cost_tensor, mode=cfg.cost_mode)
        if cfg.devices:                         # several devices: each latency budget aims by its table's margin
            self.margin = {m: confidence_margin(p, cfg.confidence) for m, p in self.tables.items()}
            for m, margin in self.margin.items():
                apply_margin(self.terms, margin, cfg.budget_floor, metric=m)
        else:
            latency = "latency_ms" in self.cost_tensor.metrics
            self.margin = confidence_margin(cfg.table, cfg.confidence) if latency else None
            if correction is not None and latency and correction.get("basis") == "nodes":
                # a space node table: the model scaled to the derived network's own node price, the
                # budget still aimed at the table's confidence (hwcost.verify.price_by_nodes)
                from .costs import scale_latency
                self.cost_tensor = scale_latency(self.cost_tensor, float(correction["scale"]))
                self.expected = ExpectedCost(self.cost_tensor, mode=cfg.cost_mode)
                apply_margin(self.terms, self.margin, cfg.budget_floor)
            elif correction is not None and latency:  # hardware in the loop: re-derive around a measured network
                from .costs import local_correction
                self.cost_tensor, self.margin = local_correction(self.cost_tensor, self.terms, correction,
                                                                 cfg.budget_floor)
                self.expected = ExpectedCost(self.cost_tensor, mode=cfg.cost_mode)
            else:
                apply_margin(self.terms, self.margin, cfg.budget_floor)
        self.objective = Objective(self.terms, self.cost_tensor.metrics, cfg.dual_lr, cfg.budget_floor)
        self.attainable = None
        if any(t.kind == "hard" for t in self.terms):   # a budget no derivable network meets: stop now
            from .costs import enumerate_nb201_costs
            self.attainable = attainable_range(self.expected, enumerate_nb201_costs(self.tables, self.cost_tensor))
            check_attainable(self.terms, self.attainable, f"the {cfg.space} space ({self.cost_notes['target']} "
                                                          f"network{', table ' + cfg.table if cfg.table else ''}"
                                                          f"{', tables ' + ', '.join(cfg.devices) if cfg.devices else ''})")
        if D.is_main():                        # nothing is written before every input has been checked
            self.out.mkdir(parents=True, exist_ok=True)
        self.epoch, self.step = 0, 0
        if resume and (self.out / "checkpoint.pt").exists():
            self._load_checkpoint()            # every rank loads it; rank 0 truncates the logs
        if D.is_main():
            self._write_config()
        D.barrier()

    # --- the supernet of the current stage ---------------------------------
    def _build(self) -> None:
        """Supernet, weight optimiser and architect for the current stage (one stage unless progressive)."""
        cfg = self.cfg
        layers = self.stages[self.stage].layers if self.stages else cfg.layers
        self.net_cfg = SupernetConfig(
            space=cfg.space, C=cfg.C, layers=layers, num_classes=self.data.num_classes,
            in_channels=self.data.in_channels, max_w=cfg.max_w,
            nb201_N=max(1, layers // 3) if cfg.space == "nb201" else 5, op_subsets=self.op_subsets,
            **self.spec.supernet_flags(cfg))
        self.model = build_supernet(self.net_cfg)
        plain_cell = self.op_subsets is None and not self.stages and type(self.model).__name__ == "DartsSupernet"
        # The fused cell runs F.batch_norm on the modules' buffers itself: not with synchronised BN.
        if cfg.fast and cfg.space == "darts" and plain_cell and not D.is_distributed():
            from .fast import accelerate
            accelerate(self.model)
        D.broadcast_module(self.model)         # the same start on every process
        D.convert_sync_batchnorm(self.model)   # K > 1: BN statistics of the global batch
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.weight_lr or self.spec.weight_lr,
                                     momentum=0.9, weight_decay=3e-4)
        self.architect = self.spec.architect(self.model, self.w_opt, self._penalty, cfg.arch_lr,
                                             reduce_grads=D.allreduce_tensors if D.is_distributed() else None)

    def _next_stage(self) -> None:
        """The strategy picks the next stage's ops (P-DARTS: each edge's strongest); build its supernet."""
        nxt = self.stages[self.stage + 1]
        self.op_subsets = self.spec.next_op_subsets(self.model, nxt)
        self.stage += 1
        self.epoch = 0
        _seed_all(self.cfg.seed + 7919 * self.stage)   # the new supernet's initial weights and alpha
        self._build()
        self._log("stages.jsonl", {"stage": self.stage, "layers": nxt.layers, "ops_per_edge": nxt.ops_per_edge,
                                   "op_subsets": self.named_subsets(), "step": self.step})
        self._checkpoint()

    def named_subsets(self) -> dict | None:
        if self.op_subsets is None:
            return None
        return {t: [[self.ops[i] for i in idx] for idx in per_type]
                for t, per_type in zip(self.model.cell_types, self.op_subsets)}

    # --- costs ---------------------------------------------------------
    def costs(self) -> torch.Tensor:
        return self.expected(self.model.arch_logits(), self.model.betas)

    def _penalty(self) -> torch.Tensor:
        return self.objective.penalty(self.costs())

    # --- bookkeeping ---------------------------------------------------
    def _write_config(self) -> None:
        doc = {"search": self.cfg.to_dict(), "supernet": self.net_cfg.to_dict(), "strategy": self.spec.to_dict(),
               "terms": [t.to_dict() for t in self.terms], "cost": self.cost_notes,
               "metrics": list(self.cost_tensor.metrics), "ops": list(self.ops), "world_size": D.world_size()}
        (self.out / "config.json").write_text(json.dumps(doc, indent=1, default=str))

    def _checkpoint(self) -> None:
        """Rank 0 writes; every rank waits for it (a resume then finds what every rank held)."""
        if D.is_main():
            self._save_checkpoint()
        D.barrier()

    def _save_checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(),
                 "a_opt": self.architect.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                 "stage": self.stage,
                 "multipliers": torch.tensor([t.multiplier for t in self.terms], dtype=torch.float64)}
        if self.op_subsets is not None:
            state["op_mask"] = mask_of(self.op_subsets, len(self.ops))
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")

    def _load_checkpoint(self) -> None:
        path = self.out / "checkpoint.pt"
        restore_checkpoint(path, lambda state: self._restore(path, state))
        self._truncate_log("log.jsonl", lambda d: d["step"] <= self.step)
        at = (self.stage, self.epoch)
        self._truncate_log("alphas.jsonl", lambda d: (d.get("stage", 0), d["epoch"]) <= at)
        self._truncate_log("stages.jsonl", lambda d: d["stage"] <= self.stage)

    def _restore(self, path: Path, state: dict) -> None:
        """The run as ``state`` (a checkpoint) holds it: stage, weights, optimisers, multipliers."""
        stage = int(state.get("stage", 0))
        if stage and not self.stages:
            raise HwcostError(f"{path} is from a progressive search (stage {stage}); "
                              f"resume it with the same --strategy")
        if stage:
            if stage >= len(self.stages):
                raise HwcostError(f"{path} is at stage {stage}, but only "
                                  f"{len(self.stages)} stage(s) are configured; resume with the same --stages")
            self.stage, self.op_subsets = stage, subsets_of(state["op_mask"])
            self._build()
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.architect.optimizer.load_state_dict(state["a_opt"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        for t, m in zip(self.terms, state["multipliers"].tolist()):
            t.multiplier = m

    def _truncate_log(self, name: str, keep) -> None:
        path = self.out / name
        if not D.is_main() or not path.exists():
            return
        lines = []
        for line in path.read_text().splitlines():
            try:
                if keep(json.loads(line)):
                    lines.append(line)
            except json.JSONDecodeError:
                break  # a line cut by the kill
        path.write_text("".join(x + "\n" for x in lines))

    def _log(self, name: str, record: dict) -> None:
        if not D.is_main():
            return
        with open(self.out / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- the loop --------------------------------------------------------
    def _epoch_seed(self, epoch: int) -> int:
        return self.cfg.seed * 1000 + epoch + 100_000 * self.stage

    def run(self, progress: bool = True, finetune: int = 0) -> dict:
        cfg = self.cfg
        bar = None
        if progress and D.is_main():
            per_epoch = cfg.steps_per_epoch or len(search_loaders(self.data, cfg.batch_size, 0)[0])
            bar = Progress("search", cfg.epochs * per_epoch * (len(self.stages) if self.stages else 1), self.step)
        t0 = time.perf_counter()
        self.train(bar)
        if bar is not None:
            bar.close()
        tuned = self.finetune(finetune) if finetune else None
        return self.finish(time.perf_counter() - t0, tuned)

    def finetune(self, steps: int) -> dict:
        """``steps`` more search steps (architecture and weights, as in the last epoch) under the costs
        this run was built with -- in the verify loop, the model corrected by a measured network -- so
        that the architecture weights answer those costs before the derivation. Nothing is
        checkpointed: the run's checkpoint stays the search's own, and each fine-tuning starts from
        it. Each step is logged to ``finetune.jsonl``. Returns the expected costs before and after,
        the budgets' multipliers and the largest change of an architecture logit."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise HwcostError(f"fine-tuning steps must be a non-negative integer, got {steps!r}")
        cfg = self.cfg
        with torch.no_grad():
            before = self.objective.report(self.costs())
            logits = self.model.arch_logits().detach().clone()
        lr = self.spec.weight_lr_at(cfg, max(0, self.epoch - 1))
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        seed = self._epoch_seed(self.epoch) + 7_919      # batches the last epoch did not draw in this order
        _seed_all(seed)
        done = 0
        if D.is_main():
            (self.out / "finetune.jsonl").write_text("")  # this fine-tuning's steps only
        while done < steps:
            train, val = search_loaders(self.data, cfg.batch_size, seed + done)
            if min(len(train), len(val)) == 0:
                raise HwcostError(f"fine-tuning needs one batch of {cfg.batch_size} from each half of the search "
                                  f"data; the data set is smaller")
            for (xt, yt), (xv, yv) in zip(train, val):
                if done >= steps:
                    break
                rec = self._step(xt, yt, xv, yv, lr, True)
                rec.update(finetune_step=done, lr=lr)
                self._log("finetune.jsonl", rec)
                done += 1
        with torch.no_grad():
            after = self.objective.report(self.costs())
            moved = self.model.arch_logits().detach() - logits
            finite = torch.isfinite(moved)     # ops a stage dropped stay at -inf
        return {"steps": steps, "expected_before": before, "expected_after": after,
                "alpha_change_max": float(moved[finite].abs().max()) if finite.any() else 0.0,
                "multipliers": {t.metric: float(t.multiplier) for t in self.terms if t.kind == "hard"}}

    def train(self, bar: Progress | None = None) -> None:
        """Every (remaining) epoch of every (remaining) stage; :meth:`finish` derives and reports."""
        while True:
            self._train_stage(bar)
            if not self.stages or self.stage == len(self.stages) - 1:
                break
            self._next_stage()

    def _train_stage(self, bar: Progress | None = None) -> None:
        cfg = self.cfg
        warmup = self.spec.warmup_epochs(cfg)
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            _seed_all(self._epoch_seed(epoch))
            lr = self.spec.weight_lr_at(cfg, epoch)
            for g in self.w_opt.param_groups:
                g["lr"] = lr
            extra = self.spec.start_epoch(self, epoch, warmup)
            train, val = search_loaders(self.data, cfg.batch_size, self._epoch_seed(epoch))
            rec = None
            for i, ((xt, yt), (xv, yv)) in enumerate(zip(train, val)):
                if cfg.steps_per_epoch and i >= cfg.steps_per_epoch:
                    break
                rec = self._step(xt, yt, xv, yv, lr, epoch >= warmup)
                rec.update(epoch=epoch, step=self.step, lr=lr, **extra)
                self._log("log.jsonl", rec)
                if bar is not None:
                    bar.step(loss=f"{rec['loss_train']:.3f}", **{k: f"{v:.3g}" for k, v in rec["costs"].items()
                                                                if k in ("latency_ms",)})
            self.epoch += 1
            if bar is not None and rec is not None:
                stage = f" (stage {self.stage + 1}/{len(self.stages)})" if self.stages else ""
                costs = "".join(f", {k} {v:.4g}" for k, v in rec["costs"].items())
                bar.epoch(f"epoch {self.epoch}/{cfg.epochs}{stage}: step {self.step}, loss_train "
                          f"{rec['loss_train']:.4f}, loss_val {rec['loss_val']:.4f}{costs}")
            rec = {"epoch": self.epoch, "weights": F.softmax(self.model.arch_logits().detach(), -1).tolist()}
            if self.stages:
                rec["stage"] = self.stage
            self._log("alphas.jsonl", rec)
            self._checkpoint()

    def _step(self, xt, yt, xv, yv, lr, arch_on: bool) -> dict:
        self.model.train()
        distributed = D.is_distributed()
        if distributed:   # every rank holds the same global batches: keep this rank's part
            k = D.world_size()
            if len(yt) % k or len(yv) % k:
                raise HwcostError(f"a batch of {len(yt)} (train) / {len(yv)} (val) samples does not split across "
                                  f"{k} processes; the data set is smaller than --batch-size "
                                  f"{self.cfg.batch_size}: choose a batch size divisible by {k} that it fills")
            xt, yt = D.shard(xt, yt)
            xv, yv = D.shard(xv, yv)
        loss_val = torch.tensor(float("nan"))
        costs = None
        if arch_on:
            loss_val = self.architect.step(xt, yt, xv, yv, lr)
            with torch.no_grad():
                costs = self.costs()   # alpha does not change again this step: also the step's record
                self.objective.dual_step(costs)
        self.w_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(xt), yt)
        if distributed:   # equal shards: the mean of the shard means is the global mean
            loss_train_g, loss_val_g = (D.allreduce_sum([loss.item(), loss_val.item()]) / D.world_size()).tolist()
            loss_val = torch.tensor(loss_val_g)
        if not torch.isfinite(loss) or (arch_on and not torch.isfinite(loss_val)) or (
                distributed and not math.isfinite(loss_train_g)):
            raise HwcostError(f"non-finite loss at step {self.step} (epoch {self.epoch}); stopped. The last good "
                              f"checkpoint is {self.out / 'checkpoint.pt'} (epoch {self.epoch}); lower the "
                              f"learning rates and --resume, or start again")
        loss.backward()
        D.allreduce_grads(self.model.weight_parameters())   # K > 1: the gradient of the global mean loss
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.cfg.grad_clip)
        self.w_opt.step()
        self.step += 1
        if costs is None:
            with torch.no_grad():
                costs = self.costs()
        return {"loss_train": loss_train_g if distributed else loss.item(), "loss_val": loss_val.item(),
                "costs": self.objective.report(costs),
                "entropy": _entropy(self.model.arch_logits())}

    @torch.no_grad()
    def accuracy(self, loader) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            correct += int((self.model(x).argmax(1) == y).sum())
            total += len(y)
        return correct / max(1, total)

    def finish(self, seconds: float, finetuned: dict | None = None) -> dict:
        val_loader = search_loaders(self.data, 256, self.cfg.seed)[1]
        from .costs import enumerate_nb201_costs, exact_cost_fn
        # The derivation sees alpha with dropped ops at -inf (P-DARTS subsets, the skip cap).
        logits, notes = self.spec.derivation_logits(self)
        view = SimpleNamespace(alphas=logits, betas=self.model.betas, config=self.model.config)
        # a measured network's latency, aimed as a prediction: u per latency metric
        u = ({m: (v or {}).get("upper_factor", 1.0) for m, v in self.margin.items()} if self.cfg.devices else
             self.margin["upper_factor"] if self.margin else 1.0)
        derived = constrained_derive(view, self.expected, self.objective, self.ops,
                                     exact_cost=exact_cost_fn(self.cfg.space, self.tables, self.cost_tensor,
                                                              self.cfg.network, u),
                                     all_costs=enumerate_nb201_costs(self.tables, self.cost_tensor, u))
        costs = derived_costs(self.cfg.space, self.cfg.network, derived["arch"], self.cost_tensor, self.expected,
                              view, self.tables)
        budgets = {t.metric: t.value for t in self.terms if t.kind == "hard"}
        result = {
            "space": self.cfg.space, "strategy": self.cfg.strategy,
            ("arch" if self.cfg.space == "nb201" else "genotype"): (
                str(derived["arch"]) if self.cfg.space == "nb201" else derived["arch"].to_dict()),
            "budgets": budgets, "penalties": {t.metric: t.value for t in self.terms if t.kind == "soft"},
            "derived": costs, "within_budget": {m: costs.get(m, math.inf) <= b for m, b in budgets.items()},
            "attainable": {m: list(self.attainable[m]) for m in budgets} if self.attainable else {},
            "budgets_given": {t.metric: t.given if t.given is not None else t.value for t in self.terms
                              if t.kind == "hard"},
            "confidence": self.margin,
            "latency_basis": (None if "latency_ms" not in self.cost_tensor.metrics else
                              "in-context model of the calibrated table" if self.cost_notes.get("calibration")
                              else "uncalibrated sum of the table's ops (hwcost calibrate TABLE for budgets that "
                                   "hold on the device)"),
            "repaired_edges": derived["repaired"], "table": self.cfg.table,
            **({"devices": {m.partition("@")[2]: p for m, p in self.tables.items()}} if self.cfg.devices else {}),
            "target": self.cost_notes["target"],
            "supernet_val_accuracy": self.accuracy(val_loader), "epochs": self.epoch, "steps": self.step,
            "search_seconds": round(seconds, 2), "lr_schedule": self.cfg.lr_schedule, "max_w": self.cfg.max_w,
        }
        if finetuned is not None:
            result["finetune"] = finetuned
        if D.is_distributed():
            result["world_size"] = D.world_size()
        self.spec.report(self, result, derived["arch"], notes)
        if self.net_cfg.share_weights or self.net_cfg.bottleneck > 1 or self.net_cfg.derived_cells:
            result["dcanas"] = {"share_weights": self.net_cfg.share_weights, "bottleneck": self.net_cfg.bottleneck,
                                "derived_cells": self.net_cfg.derived_cells}
        if D.is_main():
            (self.out / "result.json").write_text(json.dumps(result, indent=1))
            if plots_wanted():
                try:
                    from .plots import plot_run
                    plot_run(self.out)
                except ImportError:  # matplotlib missing: plots are optional
                    pass
        D.barrier()   # the run directory is complete when any rank returns
        return result


def plots_wanted() -> bool:
    """Whether a finished search draws its run directory's plots (``alphas.png``, ``costs.png``; about 1 s):
    yes unless the environment sets ``HWCOST_PLOTS=0`` (batch jobs, the test suite)."""
    return os.environ.get("HWCOST_PLOTS", "1").strip().lower() not in ("0", "no", "false", "off")


def run_search(cfg: SearchConfig, out: str, resume: bool = False, progress: bool = True,
               correction: dict | None = None, finetune: int = 0) -> dict:
    """Run (or resume) a search; ``correction`` (hardware in the loop, see
    :func:`search.costs.local_correction`) re-derives with the latency model scaled to a measured network,
    after ``finetune`` more search steps under those costs (:meth:`SearchRun.finetune`) when asked."""
    return SearchRun(cfg, out, resume, correction).run(progress, finetune)
