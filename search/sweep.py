"""Many searches at once: RAPDARTS lambda sweeps, budget sweeps, DCA-NAS look-up graphs.

A sweep plans :class:`Task` s (one :class:`~search.run.SearchConfig` each), runs
them on a backend -- a local Ray by default, ``address=`` for an existing Ray
cluster, else a process pool, or serially -- each in its own run directory
``OUT/runs/<name>``, and gathers one row per search into ``OUT/sweep.csv`` /
``OUT/sweep.json`` with a Pareto plot ``OUT/pareto.png`` (derived cost against
supernet validation accuracy). A search that fails is a row with its message;
the sweep goes on. ``resume=True`` keeps every run whose ``result.json`` exists
and continues the others from their checkpoints.

Kinds:

* ``lambda`` -- RAPDARTS section IV's coarse-to-fine search for lambda_1 (eq. 13,
  ``L = L_1 + lambda_1 C_1``): sample lambda log-uniformly over a range, run
  soft-penalty searches, narrow the range to the bracket where the derived cost
  crosses the budget (:func:`narrow_lambda_range`), repeat; report the best
  network under the budget.
* ``budgets`` -- hard budgets at several values: a cost/accuracy Pareto front.
* ``lookup`` -- DCA-NAS's look-up graph (section 3, Algorithm 1): searches at
  several *search* constraints K_d' record the *evaluation*-size cost K_d of
  their derived networks; the monotone fit (:class:`LookupGraph`) then gives
  the K_d' to search with for a wanted K_d -- inside the measured range of a
  rising curve only; any other target is a refused pick, with its reason.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from spaces.errors import HwcostError

from .objective import METRICS, parse_term
from .run import SearchConfig

KINDS = ("lambda", "budgets", "lookup")
BACKENDS = ("ray", "process", "serial")


# ---------------------------------------------------------------------------
# Budget strings


def split_spec(text: str) -> tuple[str, str]:
    """``"params=1.5M"`` -> ``("params", "1.5M")`` (the name checked against the known resources)."""
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or not value.strip():
        raise HwcostError(f"bad budget {text!r}: write NAME=VALUE[UNIT], e.g. params=1.5M, latency=4ms")
    if name not in METRICS:
        raise HwcostError(f"unknown resource {name!r} in {text!r}; known: {', '.join(METRICS)}")
    return name, value.strip()


def budget_text(name: str, value: float) -> str:
    """A budget in base units written so that :func:`parse_term` reads it back exactly."""
    return f"{name}={value!r}{METRICS[name][1]}"


def spread(range_text: str, count: int, log: bool = False) -> list[str]:
    """``"params=1M:4M"``, 4 -> ``count`` budgets spread evenly (or log-evenly) over the range."""
    name, value = split_spec(range_text)
    lo_text, sep, hi_text = value.partition(":")
    if not sep:
        raise HwcostError(f"bad range {range_text!r}: write NAME=LOW:HIGH, e.g. params=1M:4M")
    lo = parse_term(f"{name}={lo_text}", "hard").value
    hi = parse_term(f"{name}={hi_text}", "hard").value
    if not lo < hi:
        raise HwcostError(f"range {range_text!r}: LOW must be below HIGH")
    if count < 2:
        raise HwcostError(f"--count must be at least 2 to spread over a range, got {count}")
    values = np.geomspace(lo, hi, count) if log else np.linspace(lo, hi, count)
    return [budget_text(name, float(v)) for v in values]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "", text.replace("+", ""))


# ---------------------------------------------------------------------------
# Pure logic: lambda narrowing, Pareto front, look-up graph


def narrow_lambda_range(points: Iterable[tuple[float, float]], budget: float,
                        lo: float, hi: float) -> tuple[float, float]:
    """RAPDARTS's coarse-to-fine step: the next lambda range from (lambda, derived cost) points.

    The cost falls as lambda grows, so the points split at one lambda into
    "over the budget" (left) and "under" (right). The split is the one that
    misclassifies fewest points (searches are noisy, the trend need not be
    monotone); the new range is the bracket between the two points beside it.
    If every point is over the budget the range moves up by its own width (in
    decades), if every point is under it moves down, starting at the last point.
    """
    pts = sorted((float(l), float(c)) for l, c in points if l > 0 and c is not None and math.isfinite(c))
    if not pts:
        return lo, hi
    over = [c > budget for _, c in pts]
    # errors(k): points left of the split that are under + points right of it that are over
    errors = [sum(not o for o in over[:k]) + sum(over[k:]) for k in range(len(pts) + 1)]
    k = int(np.argmin(errors))
    width = math.log10(hi / lo) if hi > lo > 0 else 1.0
    if k == 0:                       # everything under: cheaper than needed, look at smaller lambda
        new = (pts[0][0] / 10 ** width, pts[0][0])
    elif k == len(pts):              # everything over: look at larger lambda
        new = (pts[-1][0], pts[-1][0] * 10 ** width)
    else:
        new = (pts[k - 1][0], pts[k][0])
    if not new[0] < new[1]:          # two searches at one lambda: keep a sliver around it
        new = (new[0] / 10 ** 0.05, new[1] * 10 ** 0.05)
    return new


def pareto_front(costs: list[float], accuracies: list[float]) -> list[int]:
    """Indices of the points no other point beats (cost <=, accuracy >=, one of them strictly)."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return sorted(front)


def _isotonic(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit (pool adjacent violators); equal x are pooled first."""
    blocks: list[list[float]] = []           # [x, mean y, weight]
    for x, y in sorted(zip(xs, ys)):
        if blocks and blocks[-1][0] == x:
            b = blocks[-1]
            b[1], b[2] = (b[1] * b[2] + y) / (b[2] + 1), b[2] + 1
        else:
            blocks.append([x, y, 1.0])
    pooled: list[list] = []                  # [[xs], mean y, weight]
    for x, y, w in blocks:
        pooled.append([[x], y, w])
        while len(pooled) > 1 and pooled[-2][1] > pooled[-1][1]:
            b = pooled.pop()
            a = pooled[-1]
            a[0] += b[0]
            a[1], a[2] = (a[1] * a[2] + b[1] * b[2]) / (a[2] + b[2]), a[2] + b[2]
    fx = [x for p in pooled for x in p[0]]
    fy = [p[1] for p in pooled for _ in p[0]]
    return fx, fy


@dataclass
class LookupGraph:
    """DCA-NAS's look-up graph: search constraint K_d' -> evaluation-size cost K_d of the derived network.

    The fit is monotone (isotonic, then piecewise linear), so a larger search
    constraint never predicts a smaller network; it passes through every point
    of monotone data. It only answers inside what was measured: a constraint
    outside the searched ones, a target outside the derived costs, or a curve
    that does not rise (every search derived the same network, or the cost
    fell as the constraint grew) is refused with a :class:`HwcostError` that
    says why -- never turned into a number.
    """

    metric: str
    points: list[tuple[float, float]]        # (constraint, eval cost) as measured
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def __post_init__(self):
        pts = [(float(x), float(y)) for x, y in self.points]
        if not pts:
            raise HwcostError(f"look-up graph for {self.metric}: no finished search to build it from")
        if any(not (x > 0 and y > 0) for x, y in pts):
            raise HwcostError(f"look-up graph for {self.metric}: constraints and costs must be positive")
        self.points = sorted(pts)
        self.xs, self.ys = _isotonic([x for x, _ in pts], [y for _, y in pts])

    def check_invertible(self) -> None:
        """Refuse a curve that ties no constraint to a cost: one constraint, flat, or falling."""
        m, xs, ys = self.metric, self.xs, self.ys
        if len(set(xs)) < 2:
            raise HwcostError(f"the look-up graph needs finished searches at 2 different search constraints; "
                              f"it has {len(self.points)} at {xs[0]:.6g}")
        if ys[-1] > ys[0]:
            return
        raw = [y for _, y in self.points]
        if len(set(raw)) == 1:
            raise HwcostError(f"the look-up graph is flat: every search ({xs[0]:.6g} .. {xs[-1]:.6g}) derived "
                              f"{m} {raw[0]:.6g}, so no search constraint is tied to a target; search a wider "
                              f"range of constraints (or longer)")
        (x0, y0), (x1, y1) = self.points[0], self.points[-1]
        raise HwcostError(f"the look-up graph does not increase: constraint {x0:.6g} derived {m} {y0:.6g}, "
                          f"{x1:.6g} derived {y1:.6g}; no search constraint can be read off it (searches this "
                          f"short are noisy: search longer or over a wider range)")

    def _outside(self, what: str, value: float, lo: float, hi: float, hint: str) -> HwcostError:
        return HwcostError(f"{what} {self.metric} {value:.6g} is outside the measured range {lo:.6g} .. {hi:.6g} "
                           f"of the look-up graph; {hint}")

    def predict(self, constraint: float) -> float:
        """The evaluation-size cost a search at ``constraint`` should derive (inside the searched range)."""
        xs, ys = self.xs, self.ys
        if not xs[0] <= constraint <= xs[-1]:
            raise self._outside("search constraint", constraint, xs[0], xs[-1],
                                "search at it to know what it derives")
        return float(np.interp(constraint, xs, ys))

    def constraint_for(self, target: float) -> float:
        """The largest search constraint whose predicted cost is ``target`` (inside the measured range)."""
        self.check_invertible()
        xs, ys = self.xs, self.ys
        if not ys[0] <= target <= ys[-1]:
            side = (f"add search constraints above {xs[-1]:.6g}" if target > ys[-1]
                    else f"add search constraints below {xs[0]:.6g}")
            raise self._outside("target", target, ys[0], ys[-1], f"{side} to reach it")
        for i in range(len(xs) - 1, 0, -1):  # from the right: on a flat stretch take its right end
            if ys[i - 1] <= target <= ys[i]:
                if ys[i] == ys[i - 1]:
                    return xs[i]
                return xs[i - 1] + (target - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1])
        return xs[0]                         # unreachable: the target is inside [ys[0], ys[-1]]

    def pick(self, target: float) -> dict:
        """A pick for ``target``: its constraint and prediction, or ``refused`` with the reason (both None)."""
        try:
            k = self.constraint_for(target)
        except HwcostError as e:
            return {"target": target, "constraint": None, "predicted": None, "refused": str(e)}
        return {"target": target, "constraint": k, "predicted": self.predict(k)}

    def to_dict(self) -> dict:
        return {"metric": self.metric, "points": [list(p) for p in self.points],
                "fit": [[x, y] for x, y in zip(self.xs, self.ys)]}

    @classmethod
    def from_dict(cls, d: dict) -> "LookupGraph":
        return cls(d["metric"], [tuple(p) for p in d["points"]])


# ---------------------------------------------------------------------------
# One search, anywhere (a worker process, a Ray task, this process)


@dataclass
class Task:
    name: str
    config: SearchConfig
    meta: dict = field(default_factory=dict)   # columns of its row: round, lambda, budget, constraint


def execute(doc: dict, search_fn: Callable | None = None) -> dict:
    """Run one search described by ``doc``; never raises: a failure comes back as a status and a message."""
    t0 = time.perf_counter()
    result, status, error = None, "ok", None
    try:
        import torch
        torch.set_num_threads(doc["threads"])
        cfg = SearchConfig(**{**doc["config"], "threads": doc["threads"]})
        if search_fn is None:
            from .run import run_search as search_fn
        result = search_fn(cfg, doc["run_dir"], resume=doc["resume"], progress=False)
    except Exception as e:  # noqa: BLE001 -- one failed search is a row of the table, not the end of the sweep
        status = "failed"
        error = _last_line(e) if isinstance(e, HwcostError) else f"{type(e).__name__}: {_last_line(e)}"
    wall = round(time.perf_counter() - t0, 2)
    info = {"status": status, "error": error, "wall_seconds": wall, "host": socket.gethostname()}
    try:
        Path(doc["run_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(doc["run_dir"]) / "sweep_task.json").write_text(json.dumps(info, indent=1))
    except OSError:
        pass
    return {**info, "result": result}


def _last_line(e: BaseException) -> str:
    """A message fit for one table cell: the last non-empty line (Ray errors carry a traceback)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


# ---------------------------------------------------------------------------
# Backends: run task docs, call on_done(index, outcome) as each finishes


class SerialBackend:
    name = "serial"

    def __init__(self, search_fn: Callable | None = None):
        self.search_fn = search_fn

    def run(self, docs: list[dict], on_done) -> None:
        for i, doc in enumerate(docs):
            on_done(i, execute(doc, self.search_fn))

    def close(self) -> None:
        pass


class ProcessBackend:
    """``concurrent.futures`` process pool (spawned workers: no forked torch state)."""
    name = "process"

    def __init__(self, workers: int, search_fn: Callable | None = None):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        self.search_fn = search_fn
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))

    def run(self, docs: list[dict], on_done) -> None:
        from concurrent.futures import as_completed
        futures = {self.pool.submit(execute, doc, self.search_fn): i for i, doc in enumerate(docs)}
        for f in as_completed(futures):
            try:
                outcome = f.result()
            except Exception as e:  # noqa: BLE001 -- a worker that died (e.g. out of memory)
                outcome = {"status": "failed", "error": f"worker died: {type(e).__name__}: {_last_line(e)}",
                           "wall_seconds": None, "result": None}
            on_done(futures[f], outcome)

    def close(self) -> None:
        self.pool.shutdown()


class RayBackend:
    """Ray tasks, at most ``workers`` in flight, each reserving ``threads`` CPUs.

    Without ``address`` a local Ray is started with ``workers * threads`` CPUs
    and stopped at the end; with one, the sweep joins that cluster (its nodes
    need hwcost installed; run directories are written where each task runs and
    the results also come back to ``OUT``).
    """
    name = "ray"

    def __init__(self, workers: int, threads: int, address: str | None = None, search_fn: Callable | None = None):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no phoning home
        import ray
        self.ray, self.workers, self.threads, self.search_fn = ray, workers, threads, search_fn
        self.started = False
        if not ray.is_initialized():
            kw = dict(logging_level="ERROR", log_to_driver=False)
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=workers * threads, include_dashboard=False, **kw)
            except Exception as e:  # noqa: BLE001
                raise HwcostError(f"could not start Ray{' at ' + address if address else ''}: {e}; "
                                  f"use --backend process to run without Ray") from e
            self.started = True
        self.remote = ray.remote(num_cpus=threads, max_retries=0)(execute)

    def run(self, docs: list[dict], on_done) -> None:
        ray = self.ray
        queue, pending = list(enumerate(docs)), {}
        while queue or pending:
            while queue and len(pending) < self.workers:
                i, doc = queue.pop(0)
                pending[self.remote.remote(doc, self.search_fn)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- the task's worker died
                    outcome = {"status": "failed", "error": f"Ray task failed: {type(e).__name__}: {_last_line(e)}",
                               "wall_seconds": None, "result": None}
                on_done(i, outcome)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------
# The sweep: plan -> run -> gather


@dataclass
class SweepOptions:
    out: str
    workers: int = 2
    threads_per_search: int = 1
    backend: str | None = None       # ray | process | serial; None: ray when importable, else process
    address: str | None = None       # an existing Ray cluster
    resume: bool = False
    progress: bool = True            # one line per finished search


ROW_FIRST = ["name", "status", "round", "lambda", "budget", "constraint", "target", "metric", "cost",
             "within_budget", "supernet_val_accuracy", "search_seconds", "wall_seconds", "pareto"]


class Sweep:
    """Runs batches of tasks under one output directory and keeps the gathered rows."""

    def __init__(self, kind: str, base: SearchConfig, opts: SweepOptions, search_fn: Callable | None = None):
        if kind not in KINDS:
            raise HwcostError(f"unknown sweep kind {kind!r}; known: {', '.join(KINDS)}")
        if opts.workers < 1 or opts.threads_per_search < 1:
            raise HwcostError(f"--workers and --threads-per-search must be at least 1 "
                              f"(got {opts.workers} and {opts.threads_per_search})")
        backend = opts.backend or ("ray" if ray_available() else "process")
        if backend not in BACKENDS:
            raise HwcostError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        if backend == "ray" and not ray_available():
            raise HwcostError("Ray is not installed (pip install ray); or use --backend process")
        if opts.address and backend != "ray":
            raise HwcostError("--address names a Ray cluster; it needs --backend ray")
        self.kind, self.base, self.opts, self.search_fn = kind, base, opts, search_fn
        self.backend_name = backend
        self.out = Path(opts.out)
        self.runs = self.out / "runs"
        if self.runs.exists() and any(self.runs.iterdir()) and not opts.resume:
            raise HwcostError(f"sweep directory {self.out} already has runs; pass --resume to continue it "
                              f"or choose another --out")
        self.runs.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self._backend = None
        self.started = time.perf_counter()

    def _get_backend(self):
        if self._backend is None:
            o = self.opts
            if self.backend_name == "ray":
                self._backend = RayBackend(o.workers, o.threads_per_search, o.address, self.search_fn)
            elif self.backend_name == "process":
                self._backend = ProcessBackend(o.workers, self.search_fn)
            else:
                self._backend = SerialBackend(self.search_fn)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, tasks: list[Task]) -> list[dict]:
        """Run ``tasks`` (finished ones skipped when resuming); return their rows, in task order."""
        names = [t.name for t in tasks]
        if len(set(names)) != len(names) or set(names) & {r["name"] for r in self.rows}:
            raise HwcostError(f"two searches of this sweep would share a run directory: {names}")
        rows: list[dict | None] = [None] * len(tasks)
        docs, where = [], []
        for i, t in enumerate(tasks):
            run_dir = self.runs / t.name
            done = run_dir / "result.json"
            if self.opts.resume and done.exists():
                prev = _read_json(run_dir / "sweep_task.json") or {}
                rows[i] = make_row(t, json.loads(done.read_text()), "ok", None, prev.get("wall_seconds"))
                rows[i]["resumed"] = True
                continue
            has_checkpoint = (run_dir / "checkpoint.pt").exists()
            if run_dir.exists() and not has_checkpoint:
                shutil.rmtree(run_dir)           # a run that failed before its first epoch: start afresh
            docs.append({"name": t.name, "config": t.config.to_dict(), "run_dir": str(run_dir.resolve()),
                         "resume": has_checkpoint, "threads": self.opts.threads_per_search})
            where.append(i)

        def on_done(j: int, outcome: dict) -> None:
            i = where[j]
            t = tasks[i]
            result = outcome.get("result")
            if result is not None and not (self.runs / t.name / "result.json").exists():
                (self.runs / t.name).mkdir(parents=True, exist_ok=True)   # ran on another node
                (self.runs / t.name / "result.json").write_text(json.dumps(result, indent=1))
            rows[i] = make_row(t, result, outcome["status"], outcome.get("error"), outcome.get("wall_seconds"))
            if self.opts.progress:
                r = rows[i]
                what = (f"{r['metric']}={r['cost']:.6g} acc={r['supernet_val_accuracy']:.3f}"
                        if r["status"] == "ok" and r.get("cost") is not None else (r.get("error") or ""))
                print(f"[{sum(x is not None for x in rows)}/{len(rows)}] {t.name}: {r['status']} {what} "
                      f"({r['wall_seconds']}s)", flush=True)

        if docs:
            self._get_backend().run(docs, on_done)
        self.rows.extend(rows)
        return rows  # type: ignore[return-value]

    def write(self, summary: dict, budget_lines: list[float] = ()) -> dict:
        """Write sweep.json, sweep.csv and pareto.png from the rows so far; return the sweep document."""
        ok = [r for r in self.rows if r["status"] == "ok" and r.get("cost") is not None
              and r.get("supernet_val_accuracy") is not None]
        front = {ok[i]["name"] for i in pareto_front([r["cost"] for r in ok], [r["supernet_val_accuracy"] for r in ok])}
        for r in self.rows:
            r["pareto"] = r["name"] in front
        doc = {"kind": self.kind, "backend": self.backend_name, "workers": self.opts.workers,
               "threads_per_search": self.opts.threads_per_search, "address": self.opts.address,
               "base_config": self.base.to_dict(), "summary": summary,
               "searches": len(self.rows), "failed": sum(r["status"] != "ok" for r in self.rows),
               "wall_seconds": round(time.perf_counter() - self.started, 2),
               "pareto": [r["name"] for r in self.rows if r["pareto"]], "rows": self.rows}
        _write_atomic(self.out / "sweep.json", json.dumps(doc, indent=1, default=str))
        write_csv(self.out / "sweep.csv", self.rows)
        try:
            plot_pareto(self.rows, self.out / "pareto.png", budget_lines)
        except ImportError:  # matplotlib missing: the table is the result, the plot optional
            pass
        return doc


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_row(task: Task, result: dict | None, status: str, error: str | None, wall) -> dict:
    """One table row: the task's sweep columns, its config, and what its result.json says."""
    cfg = task.config
    row: dict = {"name": task.name, "status": status, "error": error, **task.meta,
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
        if "budget" in task.meta and row["cost"] is not None:   # the sweep's own budget (lambda, budgets)
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


def plot_pareto(rows: list[dict], path: Path, budget_lines: Iterable[float] = ()) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "ok" and r.get("cost") is not None
          and r.get("supernet_val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if ok:
        ax.scatter([r["cost"] for r in ok], [r["supernet_val_accuracy"] for r in ok], c="0.6", s=18,
                   label="searches")
        front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["cost"])
        ax.plot([r["cost"] for r in front], [r["supernet_val_accuracy"] for r in front], "o-", c="C3",
                label="Pareto front")
        metric = ok[0].get("metric", "cost")
        ax.set_xlabel(f"derived {metric} (target network)")
    for b in budget_lines:
        ax.axvline(b, ls="--", c="k", lw=1)
    ax.set_ylabel("supernet validation accuracy")
    failed = sum(r["status"] != "ok" for r in rows)
    ax.set_title(f"{len(ok)} searches" + (f", {failed} failed" if failed else ""))
    if ok:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_lookup(graph: LookupGraph, path: Path, picks: list[dict] = ()) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(*zip(*graph.points), "o", label="searches")
    ax.plot(graph.xs, graph.ys, "-", c="C1", label="monotone fit")
    lo, hi = min(graph.xs + graph.ys), max(graph.xs + graph.ys)
    ax.plot([lo, hi], [lo, hi], ":", c="0.5", label="eval cost = constraint")
    for p in picks:
        if p.get("constraint") is not None:   # a refused pick has no constraint to mark
            ax.plot([p["constraint"]], [p["target"]], "x", c="C3", ms=8)
    ax.set_xlabel(f"search constraint K_d' ({graph.metric})")
    ax.set_ylabel(f"derived network's {graph.metric} K_d")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The three kinds


def lambda_sweep(base: SearchConfig, opts: SweepOptions, budget: str, lambda_range: tuple[float, float] | None = None,
                 per_round: int = 4, rounds: int = 2, seed: int = 0, search_fn: Callable | None = None) -> dict:
    """RAPDARTS coarse-to-fine lambda search for one budget; the best network under it.

    Round r samples ``per_round`` lambdas log-uniformly over the current range
    (seeded by (seed, r), so a resumed sweep plans the same searches), runs
    soft-penalty searches ``NAME=lambda`` and narrows the range to where the
    derived cost of all searches so far crosses the budget. The best network is
    the one with the highest supernet validation accuracy under the budget
    (ties: the larger); ``largest`` is the largest under it (RAPDARTS trains
    the largest, since capacity tends to pay).
    """
    name, _ = split_spec(budget)
    term = parse_term(budget, "hard")
    if per_round < 1 or rounds < 1:
        raise HwcostError(f"--per-round and --rounds must be at least 1 (got {per_round}, {rounds})")
    lo, hi = lambda_range or (1e-4 / term.value, 10.0 / term.value)
    if not 0 < lo < hi:
        raise HwcostError(f"lambda range must be 0 < LOW < HIGH, got {lo:g}:{hi:g}")
    if any(split_spec(x)[0] == name for x in list(base.budgets) + list(base.penalties)):
        raise HwcostError(f"a lambda sweep sets the {name} penalty itself; drop --budget/--penalty {name} from "
                          f"the search options")
    history = []
    with Sweep("lambda", base, opts, search_fn) as sweep:
        for r in range(rounds):
            rng = np.random.default_rng([seed, r])
            lams = sorted(float(10 ** x) for x in rng.uniform(math.log10(lo), math.log10(hi), per_round))
            tasks = [Task(_safe(f"r{r}-{i:02d}-lambda{lam:.4g}"),
                          replace(base, penalties=list(base.penalties) + [f"{name}={lam:.6g}"]),
                          {"round": r, "lambda": float(f"{lam:.6g}"), "budget": term.value, "metric": term.metric})
                     for i, lam in enumerate(lams)]
            rows = sweep.run(tasks)
            # every search so far, not only this round's: the crossing stays bracketed by what is known
            pts = [(x["lambda"], x["cost"]) for x in sweep.rows if x["status"] == "ok"]
            new = narrow_lambda_range(pts, term.value, lo, hi)
            history.append({"round": r, "range": [lo, hi], "lambdas": [t.meta["lambda"] for t in tasks],
                            "under_budget": sum(bool(x["within_budget"]) for x in rows), "next_range": list(new)})
            lo, hi = new
            summary = _lambda_summary(sweep.rows, term, history)
            doc = sweep.write(summary, [term.value])
    return doc


def _lambda_summary(rows: list[dict], term, history: list[dict]) -> dict:
    under = [r for r in rows if r["status"] == "ok" and r["within_budget"]]
    best = max(under, key=lambda r: (r["supernet_val_accuracy"], r["cost"]), default=None)
    largest = max(under, key=lambda r: (r["cost"], r["supernet_val_accuracy"]), default=None)
    keys = ("name", "lambda", "cost", "supernet_val_accuracy")
    return {"metric": term.metric, "budget": term.value, "rounds": history, "under_budget": len(under),
            "best": None if best is None else {k: best[k] for k in keys},
            "largest": None if largest is None else {k: largest[k] for k in keys}}  # RAPDARTS trains the largest


def budget_sweep(base: SearchConfig, opts: SweepOptions, budgets: list[str],
                 search_fn: Callable | None = None) -> dict:
    """Hard-budget searches at each of ``budgets`` (one resource): a cost/accuracy Pareto front."""
    if not budgets:
        raise HwcostError("give budgets: --budget NAME=VALUE (repeatable) or --range NAME=LOW:HIGH --count N")
    terms = [parse_term(b, "hard") for b in budgets]
    if len({t.metric for t in terms}) != 1:
        raise HwcostError(f"a budget sweep varies one resource; got {', '.join(sorted({t.metric for t in terms}))}")
    name = split_spec(budgets[0])[0]
    tasks = [Task(_safe(f"budget-{name}{t.value:.6g}"), replace(base, budgets=list(base.budgets) + [b]),
                  {"budget": t.value, "metric": t.metric}) for b, t in zip(budgets, terms)]
    with Sweep("budgets", base, opts, search_fn) as sweep:
        rows = sweep.run(tasks)
        ok = [r for r in rows if r["status"] == "ok"]
        summary = {"metric": terms[0].metric, "budgets": [t.value for t in terms],
                   "under_budget": sum(bool(r["within_budget"]) for r in ok)}
        return sweep.write(summary, [t.value for t in terms])


def lookup_sweep(base: SearchConfig, opts: SweepOptions, constraints: list[str], targets: list[str] = (),
                 verify: bool = False, search_fn: Callable | None = None) -> dict:
    """DCA-NAS look-up graph: search constraints -> derived eval-size costs; pick constraints for targets.

    Writes ``OUT/lookup.json`` (points, monotone fit, picks) and ``OUT/lookup.png``.
    With ``verify`` one more search runs at each picked constraint and its
    derived cost is reported against the target.
    """
    if len(constraints) < 2:
        raise HwcostError("a look-up graph needs at least 2 search constraints (--constraint ... or --range --count)")
    terms = [parse_term(c, "hard") for c in constraints]
    goals = [parse_term(t, "hard") for t in targets]
    metrics = {t.metric for t in terms + goals}
    if len(metrics) != 1:
        raise HwcostError(f"constraints and targets must name one resource; got {', '.join(sorted(metrics))}")
    name = split_spec(constraints[0])[0]
    metric = terms[0].metric
    tasks = [Task(_safe(f"lookup-{name}{t.value:.6g}"), replace(base, budgets=list(base.budgets) + [c]),
                  {"constraint": t.value, "metric": metric}) for c, t in zip(constraints, terms)]
    with Sweep("lookup", base, opts, search_fn) as sweep:
        rows = sweep.run(tasks)
        pts = [(r["constraint"], r["cost"]) for r in rows if r["status"] == "ok" and r["cost"] is not None]
        try:
            graph = LookupGraph(metric, pts)
        except HwcostError as e:             # every search failed: the table of what happened is still written
            sweep.write({"metric": metric, "error": str(e)})
            raise
        # a target the graph cannot answer (flat or falling curve, outside the measured range) is a
        # refused pick with its reason, never an extrapolated number; no verify search runs for it
        picks = [graph.pick(g.value) for g in goals]
        chosen = [p for p in picks if p["constraint"] is not None]
        if verify and chosen:
            vtasks = [Task(_safe(f"pick-{name}{p['target']:.6g}"),
                           replace(base, budgets=list(base.budgets) + [budget_text(name, p["constraint"])]),
                           {"constraint": p["constraint"], "target": p["target"], "metric": metric})
                      for p in chosen]
            for p, r in zip(chosen, sweep.run(vtasks)):
                p["actual"] = r["cost"]
                p["status"] = r["status"]
                if r["cost"] is not None:
                    p["relative_error"] = (r["cost"] - p["target"]) / p["target"]
        lookup = {**graph.to_dict(), "cost_mode": base.cost_mode, "picks": picks,
                  "refused": sum(p["constraint"] is None for p in picks)}
        _write_atomic(sweep.out / "lookup.json", json.dumps(lookup, indent=1))
        try:
            plot_lookup(graph, sweep.out / "lookup.png", picks)
        except ImportError:
            pass
        return sweep.write({"metric": metric, "lookup": lookup}, [p["target"] for p in picks])
