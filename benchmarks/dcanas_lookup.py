"""DCA-NAS look-up graph vs the derivation-aware expected cost: how well each predicts the eval-size cost.

    .venv/bin/python benchmarks/dcanas_lookup.py [--metrics params,latency] [--epochs 2] [--steps 5]
                     [--workers 2] [--params-range 1M:4M] [--latency-range 4ms:16ms] [--out DIR]

Search: darts space, digits, C=4, 3 cells, batch 32; costs are those of the
deployed CIFAR-10 network (C=36, 20 cells); latency from the bundled table
``darts_ort-cpu``. For each metric:

1. DCA-NAS look-up graph: hard-constraint searches with RAPDARTS's plain
   expected cost (``cost_mode="expected"``, the softmax-weighted cost DCA-NAS
   constrains) at 5 search constraints K_d' spread over the range; each
   derived network's cost K_d is a point of the graph (``hwcost sweep lookup``).
2. 5 budgets B spread inside the span of the graph's K_d (10% in from its ends,
   so no pick is extrapolated). The graph picks K_d' for each B and predicts
   K_d = B; a search at that K_d' gives the actual derived cost.
3. Derivation-aware expected cost (``cost_mode="derived"``): one search per B
   with the budget itself; its prediction is the cost the search saw at its
   last step (the network derivation would give then, ``log.jsonl``); the
   actual is the derived network after the constrained derivation.

Error = (actual - predicted) / predicted. Also printed: the look-up searches'
own gap (the K_d a search at K_d' = B gives when no graph is used).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sweep_ray_speedup import machine  # noqa: E402


def last_cost(run_dir: Path, metric: str) -> float | None:
    lines = [x for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    return json.loads(lines[-1])["costs"].get(metric) if lines else None


def one_metric(name: str, range_text: str, base, out: Path, workers: int) -> dict:
    from search.sweep import SweepOptions, budget_sweep, budget_text, lookup_sweep, spread
    from dataclasses import replace
    unit = {"params": 1e6, "latency": 1.0}[name]
    label = {"params": "M params", "latency": " ms"}[name]

    def opts(sub, resume=False):
        return SweepOptions(out=str(out / sub), workers=workers, threads_per_search=1, resume=resume, progress=False)

    t0 = time.perf_counter()
    constraints = spread(f"{name}={range_text}", 5)
    graph_doc = lookup_sweep(replace(base, cost_mode="expected"), opts(f"{name}-lookup"), constraints)
    pts = graph_doc["summary"]["lookup"]["points"]
    lo, hi = min(y for _, y in pts), max(y for _, y in pts)
    margin = 0.1 * (hi - lo)
    budgets = [budget_text(name, lo + margin + i * (hi - lo - 2 * margin) / 4) for i in range(5)]
    picked = lookup_sweep(replace(base, cost_mode="expected"), opts(f"{name}-lookup", resume=True), constraints,
                          budgets, verify=True)
    lug_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    derived = budget_sweep(replace(base, cost_mode="derived"), opts(f"{name}-derived"), budgets)
    der_wall = time.perf_counter() - t0
    metric = picked["summary"]["metric"]

    print(f"\n{name}: look-up graph (search constraint -> derived eval-size cost), cost_mode=expected:")
    for x, y in pts:
        print(f"  K_d' {x / unit:7.3f}{label} -> K_d {y / unit:7.3f}{label}  ({100 * (y - x) / x:+.1f}% vs K_d')")
    rows = []
    der_rows = derived["rows"]
    print(f"  {'budget B':>10} | {'LUG K_d`':>9} {'predicted':>9} {'actual':>9} {'error':>7} | "
          f"{'derived: predicted':>18} {'actual':>9} {'error':>7} {'vs B':>7}")
    for p, r in zip(picked["summary"]["lookup"]["picks"], der_rows):
        run_dir = out / f"{name}-derived" / "runs" / r["name"]
        pred = last_cost(run_dir, metric) if r["status"] == "ok" else None
        lug_err = None if p.get("actual") is None else (p["actual"] - p["predicted"]) / p["predicted"]
        der_err = None if pred is None or r["cost"] is None else (r["cost"] - pred) / pred
        vs_b = None if r["cost"] is None else (r["cost"] - p["target"]) / p["target"]
        rows.append({"budget": p["target"], "lug_constraint": p["constraint"], "lug_predicted": p["predicted"],
                     "lug_actual": p.get("actual"), "lug_error": lug_err, "derived_predicted": pred,
                     "derived_actual": r["cost"], "derived_error": der_err, "derived_vs_budget": vs_b,
                     "derived_repaired_edges": _repaired(out / f"{name}-derived" / "runs" / r["name"])})

        def f(v):
            return "      -  " if v is None else f"{v / unit:9.3f}"

        def pc(v):
            return "     - " if v is None else f"{100 * v:+6.1f}%"
        print(f"  {p['target'] / unit:10.3f} | {f(p['constraint'])} {f(p['predicted'])} {f(p.get('actual'))} "
              f"{pc(lug_err)} | {f(pred):>18} {f(r['cost'])} {pc(der_err)} {pc(vs_b)}")
    summary = {
        "lug_mean_abs_error": _mean_abs([x["lug_error"] for x in rows]),
        "derived_mean_abs_error": _mean_abs([x["derived_error"] for x in rows]),
        "no_graph_mean_abs_gap": _mean_abs([(y - x) / x for x, y in pts]),
        "lug_searches": graph_doc["searches"] + len(budgets), "derived_searches": derived["searches"],
        "lug_wall_s": round(lug_wall, 1), "derived_wall_s": round(der_wall, 1)}
    print(f"  mean |error|: look-up graph {_pct(summary['lug_mean_abs_error'])} "
          f"({summary['lug_searches']} searches, {lug_wall:.0f} s), derivation-aware "
          f"{_pct(summary['derived_mean_abs_error'])} ({summary['derived_searches']} searches, {der_wall:.0f} s); "
          f"expected cost without the graph lands {_pct(summary['no_graph_mean_abs_gap'])} off its constraint")
    return {"rows": rows, "graph": pts, "summary": summary}


def _repaired(run_dir: Path):
    try:
        return json.loads((run_dir / "result.json").read_text()).get("repaired_edges")
    except OSError:
        return None


def _mean_abs(xs):
    xs = [abs(x) for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="params,latency")
    ap.add_argument("--params-range", default="1M:4M", help="search constraints K_d' for params")
    ap.add_argument("--latency-range", default="4ms:16ms", help="search constraints K_d' for latency")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="directory for the sweeps (default: a temporary one)")
    a = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "benchmarks/dcanas_lookup.py", *sys.argv[1:]]))
    print("machine:", machine())
    from search.run import SearchConfig
    base = SearchConfig(space="darts", data="digits", epochs=a.epochs, steps_per_epoch=a.steps, batch_size=32,
                        C=4, layers=3, table="darts_ort-cpu")
    out = Path(a.out or tempfile.mkdtemp(prefix="dcanas_lookup_"))
    print(f"darts space, digits, C=4, 3 cells, {a.epochs} epochs x {a.steps} steps, batch 32, table darts_ort-cpu; "
          f"Ray, {a.workers} workers x 1 thread; sweeps under {out}")
    results = {}
    for name in a.metrics.split(","):
        results[name] = one_metric(name, getattr(a, f"{name}_range"), base, out, a.workers)
    print("\n" + json.dumps({k: v["summary"] for k, v in results.items()}))
    (out / "dcanas_lookup.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
