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
* ``budgets`` -- hard budgets at several values: a cost/accuracy Pareto front; budgets on two
  resources (the latency on two devices) give a grid of searches and a 2-D front.
* ``lookup`` -- DCA-NAS's look-up graph (section 3, Algorithm 1): searches at
  several *search* constraints K_d' record the *evaluation*-size cost K_d of
  their derived networks; the monotone fit (:class:`LookupGraph`) then gives
  the K_d' to search with for a wanted K_d -- inside the measured range of a
  rising curve only; any other target is a refused pick, with its reason.

The pure logic is in :mod:`search.sweep_math`, the backends in
:mod:`search.sweep_backends`, the table in :mod:`search.sweep_rows`, the plots in
:mod:`search.plots`; this module plans, runs and gathers.
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from spaces.errors import HwcostError

from .objective import parse_term
from .plots import plot_lookup, plot_pareto, plot_pareto_2d
from .run import SearchConfig
from .sweep_backends import ProcessBackend, RayBackend, SerialBackend, execute, ray_available
from .sweep_math import (LookupGraph, budget_text, narrow_lambda_range, pareto_front, safe_name, split_spec,
                         spread)
from .sweep_rows import ROW_FIRST, Task, make_row, read_json, write_atomic, write_csv

__all__ = ["BACKENDS", "KINDS", "ROW_FIRST", "LookupGraph", "ProcessBackend", "RayBackend", "SerialBackend",
           "Sweep", "SweepOptions", "Task", "budget_sweep", "budget_text", "execute", "lambda_sweep",
           "lookup_sweep", "make_row", "narrow_lambda_range", "pareto_front", "plot_lookup", "plot_pareto",
           "ray_available", "split_spec", "spread", "write_csv"]

KINDS = ("lambda", "budgets", "lookup")
# A search function that goes on after run_search has written result.json (hwcost's node-price rounds)
# keeps this file in the run directory until it is done: a resumed sweep runs such a search again.
PENDING = "result.pending"
BACKENDS = ("ray", "process", "serial")


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
            if self.opts.resume and done.exists() and not (run_dir / PENDING).exists():
                prev = read_json(run_dir / "sweep_task.json") or {}
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

    def write(self, summary: dict, budget_lines: list[float] = (), metrics: list[str] = ()) -> dict:
        """Write sweep.json, sweep.csv and pareto.png from the rows so far; return the sweep document.
        ``metrics``: with two or more, the front is over all of them (``cost@METRIC`` columns) and
        the plot puts the first two on its axes."""
        several = len(metrics) > 1
        ok = [r for r in self.rows if r["status"] == "ok" and r.get("supernet_val_accuracy") is not None
              and (all(r.get(f"cost@{m}") is not None for m in metrics) if several else r.get("cost") is not None)]
        costs = [tuple(r[f"cost@{m}"] for m in metrics) if several else r["cost"] for r in ok]
        front = {ok[i]["name"] for i in pareto_front(costs, [r["supernet_val_accuracy"] for r in ok])}
        for r in self.rows:
            r["pareto"] = r["name"] in front
        doc = {"kind": self.kind, "backend": self.backend_name, "workers": self.opts.workers,
               "threads_per_search": self.opts.threads_per_search, "address": self.opts.address,
               "base_config": self.base.to_dict(), "summary": summary,
               "searches": len(self.rows), "failed": sum(r["status"] != "ok" for r in self.rows),
               "wall_seconds": round(time.perf_counter() - self.started, 2),
               "pareto": [r["name"] for r in self.rows if r["pareto"]], "rows": self.rows}
        write_atomic(self.out / "sweep.json", json.dumps(doc, indent=1, default=str))
        write_csv(self.out / "sweep.csv", self.rows)
        try:
            if several:
                plot_pareto_2d(self.rows, self.out / "pareto.png", metrics[:2], summary.get("grid", {}))
            else:
                plot_pareto(self.rows, self.out / "pareto.png", budget_lines)
        except ImportError:  # matplotlib missing: the table is the result, the plot optional
            pass
        return doc


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
            tasks = [Task(safe_name(f"r{r}-{i:02d}-lambda{lam:.4g}"),
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
    """Hard-budget searches at each of ``budgets``: a cost/accuracy Pareto front.

    Budgets on one resource give one search per value. Budgets on several
    (e.g. the latency on two devices: ``latency@pi=...`` and ``latency@gpu=...``,
    with ``base.devices`` naming the tables) give one search per combination of
    their values -- a grid -- and the front is taken over every swept cost at
    once (no other search is cheaper on every device and at least as accurate).
    """
    if not budgets:
        raise HwcostError("give budgets: --budget NAME=VALUE (repeatable) or --range NAME=LOW:HIGH --count N")
    terms = [parse_term(b, "hard") for b in budgets]
    by_metric: dict[str, list[tuple[str, object]]] = {}
    for b, t in zip(budgets, terms):
        by_metric.setdefault(t.metric, []).append((b, t))
    clash = sorted(m for m in by_metric if any(parse_term(x, "hard").metric == m for x in base.budgets))
    if clash:
        raise HwcostError(f"the sweep sets the {', '.join(clash)} budget itself; drop it from the search options")
    metrics = list(by_metric)
    from .costs import latency_tables
    tables = latency_tables(base.table, base.devices)
    lacking = [m for m in metrics if m.startswith("latency_ms") and m not in tables]
    if lacking:
        from .objective import user_name
        names = ", ".join(user_name(m) for m in lacking)
        raise HwcostError(f"a budget on {names} needs its device table: " + (
            f"--table {lacking[0].partition('@')[2]}=TABLE" if "@" in lacking[0] else "--table TABLE") + (
            f" (tables given: {', '.join(user_name(m) for m in tables)})" if tables else ""))
    tasks = []
    for combo in itertools.product(*by_metric.values()):
        name = "-".join(f"{split_spec(b)[0]}{t.value:.6g}" for b, t in combo)
        meta = {"budget": combo[0][1].value, "metric": combo[0][1].metric}
        if len(metrics) > 1:
            meta["grid"] = {t.metric: t.value for _, t in combo}
        tasks.append(Task(safe_name(f"budget-{name}"), replace(base, budgets=list(base.budgets) + [b for b, _ in combo]),
                          meta))
    with Sweep("budgets", base, opts, search_fn) as sweep:
        rows = sweep.run(tasks)
        ok = [r for r in rows if r["status"] == "ok"]
        summary = {"metric": metrics[0], "budgets": [t.value for _, t in by_metric[metrics[0]]],
                   "under_budget": sum(bool(r["within_budget"]) for r in ok)}
        if len(metrics) > 1:
            summary.update(metrics=metrics, grid={m: [t.value for _, t in v] for m, v in by_metric.items()},
                           searches=len(tasks))
        return sweep.write(summary, [t.value for _, t in by_metric[metrics[0]]], metrics)


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
    tasks = [Task(safe_name(f"lookup-{name}{t.value:.6g}"), replace(base, budgets=list(base.budgets) + [c]),
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
            vtasks = [Task(safe_name(f"pick-{name}{p['target']:.6g}"),
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
        write_atomic(sweep.out / "lookup.json", json.dumps(lookup, indent=1))
        try:
            plot_lookup(graph, sweep.out / "lookup.png", picks)
        except ImportError:
            pass
        return sweep.write({"metric": metric, "lookup": lookup}, [p["target"] for p in picks])
