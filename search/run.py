"""A search run: config -> run directory (log, checkpoints, plots, result.json).

The run directory holds ``config.json`` (resolved), ``log.jsonl`` (one line a
step), ``checkpoint.pt`` (end of each epoch; tensors only, loaded with
``weights_only=True``), ``alphas.jsonl`` (softmax(alpha) per epoch), plots and,
at the end, ``result.json``. ``--resume`` restarts from the last checkpoint;
with the same seed the result equals an uninterrupted run's (each epoch's
data order and RNG are seeded from (seed, epoch), not from the history).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces.errors import HwcostError

from .costs import search_cost_tensor
from .data import load_data, search_loaders
from .derive import constrained_derive, derived_costs
from .objective import Objective, parse_term
from .strategies import Architect, get_strategy
from .supernet import SupernetConfig, build_supernet


@dataclass
class SearchConfig:
    space: str = "darts"
    strategy: str = "darts"
    data: str = "digits"
    network: str = "cifar10"             # the target (deployed) network: cifar10 | imagenet (nb201: its own)
    table: str | None = None             # device table (path or bundled name) for latency
    surrogate: str | None = None
    budgets: list[str] = field(default_factory=list)     # e.g. ["latency=4ms", "params=1.5M"]
    penalties: list[str] = field(default_factory=list)   # e.g. ["params=1e-7"]
    cost_mode: str = "derived"           # "derived" (value = derived network's cost) | "expected"
    budget_floor: float = 0.85           # keep a hard-budgeted cost >= floor * budget (0 disables)
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
    warmup_epochs: int | None = None
    grad_clip: float = 5.0
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _entropy(alphas: torch.Tensor) -> float:
    p = F.softmax(alphas.detach(), dim=-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


class SearchRun:
    def __init__(self, cfg: SearchConfig, out: str | os.PathLike, resume: bool = False):
        self.cfg, self.out = cfg, Path(out)
        if self.out.exists() and any(self.out.iterdir()) and not resume:
            raise HwcostError(f"run directory {self.out} is not empty; pass --resume to continue it "
                              f"or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.spec = get_strategy(cfg.strategy)
        self.terms = [parse_term(b, "hard") for b in cfg.budgets] + [parse_term(p, "soft") for p in cfg.penalties]
        _seed_all(cfg.seed)
        self.data = load_data(cfg.data)
        k = cfg.partial_k or self.spec.partial_k
        self.net_cfg = SupernetConfig(space=cfg.space, C=cfg.C, layers=cfg.layers, num_classes=self.data.num_classes,
                                      in_channels=self.data.in_channels, partial_k=k, max_w=cfg.max_w,
                                      nb201_N=max(1, cfg.layers // 3) if cfg.space == "nb201" else 5)
        self.model = build_supernet(self.net_cfg)
        if cfg.fast and cfg.space == "darts":
            from .fast import accelerate
            accelerate(self.model)
        self.ops = self.net_cfg.ops()
        self.cost_tensor, self.cost_notes = search_cost_tensor(cfg.space, cfg.network, self.ops, cfg.table, cfg.surrogate)
        from costmodels.expected_cost import ExpectedCost
        self.expected = ExpectedCost(self.cost_tensor, mode=cfg.cost_mode)
        self.objective = Objective(self.terms, self.cost_tensor.metrics, cfg.dual_lr, cfg.budget_floor)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.weight_lr or self.spec.weight_lr,
                                     momentum=0.9, weight_decay=3e-4)
        self.architect = Architect(self.model, self.spec, self.w_opt, self._penalty, cfg.arch_lr, grad_clip=None)
        self.epoch, self.step = 0, 0
        if resume and (self.out / "checkpoint.pt").exists():
            self._load_checkpoint()
        self._write_config()

    # --- costs ---------------------------------------------------------
    def costs(self) -> torch.Tensor:
        return self.expected(self.model.alphas, self.model.betas)

    def _penalty(self) -> torch.Tensor:
        return self.objective.penalty(self.costs())

    # --- bookkeeping ---------------------------------------------------
    def _write_config(self) -> None:
        doc = {"search": self.cfg.to_dict(), "supernet": self.net_cfg.to_dict(), "strategy": asdict(self.spec),
               "terms": [t.to_dict() for t in self.terms], "cost": self.cost_notes,
               "metrics": list(self.cost_tensor.metrics), "ops": list(self.ops)}
        (self.out / "config.json").write_text(json.dumps(doc, indent=1, default=str))

    def _checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(),
                 "a_opt": self.architect.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                 "multipliers": torch.tensor([t.multiplier for t in self.terms], dtype=torch.float64)}
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")

    def _load_checkpoint(self) -> None:
        state = torch.load(self.out / "checkpoint.pt", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.architect.optimizer.load_state_dict(state["a_opt"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        for t, m in zip(self.terms, state["multipliers"].tolist()):
            t.multiplier = m
        self._truncate_log("log.jsonl", lambda d: d["step"] <= self.step)
        self._truncate_log("alphas.jsonl", lambda d: d["epoch"] <= self.epoch)

    def _truncate_log(self, name: str, keep) -> None:
        path = self.out / name
        if not path.exists():
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
        with open(self.out / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- the loop --------------------------------------------------------
    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        lr_max = cfg.weight_lr or self.spec.weight_lr
        warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else round(self.spec.warmup_frac * cfg.epochs)
        bar = None
        if progress:
            from tqdm import tqdm
            total = cfg.epochs * (cfg.steps_per_epoch or len(search_loaders(self.data, cfg.batch_size, 0)[0]))
            bar = tqdm(total=total, initial=min(total, self.step), desc="search", unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            _seed_all(cfg.seed * 1000 + epoch)
            lr = self.spec.weight_lr_min + 0.5 * (lr_max - self.spec.weight_lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for g in self.w_opt.param_groups:
                g["lr"] = lr
            train, val = search_loaders(self.data, cfg.batch_size, cfg.seed * 1000 + epoch)
            for i, ((xt, yt), (xv, yv)) in enumerate(zip(train, val)):
                if cfg.steps_per_epoch and i >= cfg.steps_per_epoch:
                    break
                rec = self._step(xt, yt, xv, yv, lr, epoch >= warmup)
                rec.update(epoch=epoch, step=self.step, lr=lr)
                self._log("log.jsonl", rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss_train']:.3f}", **{k: f"{v:.3g}" for k, v in rec["costs"].items()
                                                                          if k in ("latency_ms",)})
            self.epoch += 1
            self._log("alphas.jsonl", {"epoch": self.epoch, "weights": F.softmax(self.model.alphas.detach(), -1).tolist()})
            self._checkpoint()
        if bar is not None:
            bar.close()
        return self.finish(time.perf_counter() - t0)

    def _step(self, xt, yt, xv, yv, lr, arch_on: bool) -> dict:
        self.model.train()
        loss_val = torch.tensor(float("nan"))
        if arch_on:
            loss_val = self.architect.step(xt, yt, xv, yv, lr)
            with torch.no_grad():
                self.objective.dual_step(self.costs())
        self.w_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(xt), yt)
        if not torch.isfinite(loss) or (arch_on and not torch.isfinite(loss_val)):
            raise HwcostError(f"non-finite loss at step {self.step} (epoch {self.epoch}); stopped. The last good "
                              f"checkpoint is {self.out / 'checkpoint.pt'} (epoch {self.epoch}); lower the "
                              f"learning rates and --resume, or start again")
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.cfg.grad_clip)
        self.w_opt.step()
        self.step += 1
        with torch.no_grad():
            costs = self.costs()
        return {"loss_train": loss.item(), "loss_val": loss_val.item(), "costs": self.objective.report(costs),
                "entropy": _entropy(self.model.alphas)}

    @torch.no_grad()
    def accuracy(self, loader) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            correct += int((self.model(x).argmax(1) == y).sum())
            total += len(y)
        return correct / max(1, total)

    def finish(self, seconds: float) -> dict:
        val_loader = search_loaders(self.data, 256, self.cfg.seed)[1]
        from .costs import enumerate_nb201_costs, exact_cost_fn
        derived = constrained_derive(self.model, self.expected, self.objective, self.ops,
                                     exact_cost=exact_cost_fn(self.cfg.space, self.cfg.table, self.cost_tensor),
                                     all_costs=enumerate_nb201_costs(self.cfg.table, self.cost_tensor))
        costs = derived_costs(self.cfg.space, self.cfg.network, derived["arch"], self.cost_tensor, self.expected,
                              self.model, self.cfg.table)
        budgets = {t.metric: t.value for t in self.terms if t.kind == "hard"}
        result = {
            "space": self.cfg.space, "strategy": self.cfg.strategy,
            ("arch" if self.cfg.space == "nb201" else "genotype"): (
                str(derived["arch"]) if self.cfg.space == "nb201" else derived["arch"].to_dict()),
            "budgets": budgets, "penalties": {t.metric: t.value for t in self.terms if t.kind == "soft"},
            "derived": costs, "within_budget": {m: costs.get(m, math.inf) <= b for m, b in budgets.items()},
            "repaired_edges": derived["repaired"], "table": self.cfg.table, "target": self.cost_notes["target"],
            "supernet_val_accuracy": self.accuracy(val_loader), "epochs": self.epoch, "steps": self.step,
            "search_seconds": round(seconds, 2),
        }
        (self.out / "result.json").write_text(json.dumps(result, indent=1))
        try:
            from .plots import plot_run
            plot_run(self.out)
        except ImportError:  # matplotlib missing: plots are optional
            pass
        return result


def run_search(cfg: SearchConfig, out: str, resume: bool = False, progress: bool = True) -> dict:
    return SearchRun(cfg, out, resume).run(progress)
