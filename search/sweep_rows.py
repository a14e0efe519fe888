"""A sweep's table (search/sweep.py): one row per search, written as CSV and JSON."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .run import SearchConfig

ROW_FIRST = ["name", "status", "round", "lambda", "budget", "constraint", "target", "metric", "cost",
             "within_budget", "supernet_val_accuracy", "search_seconds", "wall_seconds", "pareto"]


@dataclass
class Task:
    name: str
    config: SearchConfig
    meta: dict = field(default_factory=dict)   # columns of its row: round, lambda, budget, constraint


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_row(task: Task, result: dict | None, status: str, error: str | None, wall) -> dict:
    """One table row: the task's sweep columns, its config, and what its result.json says."""
    cfg = task.config
    grid = task.meta.get("grid") or {}
    row: dict = {"name": task.name, "status": status, "error": error,
                 **{k: v for k, v in task.meta.items() if k != "grid"},
                 **{f"budget@{m}": b for m, b in grid.items()}, **{f"cost@{m}": None for m in grid},
                 "space": cfg.space, "strategy": cfg.strategy, "data": cfg.data, "seed": cfg.seed,
                 "epochs": cfg.epochs, "C": cfg.C, "layers": cfg.layers, "cost_mode": cfg.cost_mode,
                 "budgets": ";".join(cfg.budgets), "penalties": ";".join(cfg.penalties),
                 "wall_seconds": wall, "cost": None, "within_budget": None,
                 "supernet_val_accuracy": None, "search_seconds": None}
    if result is not None:
        derived = result.get("derived", {})
        row.update({f"derived_{k}": v for k, v in derived.items()})
        row["supernet_val_accuracy"] = result.get("supernet_val_accuracy")
        row["search_seconds"] = result.get("search_seconds")
        metric = task.meta.get("metric")
        row["cost"] = derived.get(metric) if metric else None
        if grid:                                                 # several swept budgets: one cost column each
            for m in grid:
                row[f"cost@{m}"] = derived.get(m)
            costs = [derived.get(m) for m in grid]
            row["within_budget"] = (None if any(c is None for c in costs) else
                                    all(c <= b for c, b in zip(costs, grid.values())))
        elif "budget" in task.meta and row["cost"] is not None:   # the sweep's own budget (lambda, budgets)
            row["within_budget"] = row["cost"] <= task.meta["budget"]
        elif result.get("within_budget"):
            row["within_budget"] = all(result["within_budget"].values())
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols = [k for k in ROW_FIRST if k in keys] + sorted(k for k in keys if k not in ROW_FIRST)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})
    os.replace(tmp, path)
