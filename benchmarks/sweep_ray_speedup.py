"""Ray sweep speed-up: 8 small searches on Ray vs the same 8 one after another.

    .venv/bin/python benchmarks/sweep_ray_speedup.py [--searches 8] [--workers 2] [--threads-per-search 1]
                     [--serial-threads 1,2] [--epochs 1] [--steps 5] [--out DIR]

The 8 searches are a budget sweep (darts space, digits, C=4, 3 cells, hard
params budgets spread over 1.5M-3.5M). The Ray run starts a local Ray with
``workers * threads`` CPUs (start-up included in its wall time); the serial
runs execute the same configs in this process, once per ``--serial-threads``
value (1: the same threads per search as Ray; 2: one search using both cores).
Each figure is one run on a shared machine: read them with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    from profilers.environment import cpu_model
    cpu = cpu_model()
    return f"CPU {cpu}, {os.cpu_count()} logical cores, load average {tuple(round(x, 2) for x in os.getloadavg())}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searches", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-search", type=int, default=1)
    ap.add_argument("--serial-threads", default="1,2", help="threads of the serial runs (comma-separated)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", help="directory for the sweeps (default: a temporary one)")
    a = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "benchmarks/sweep_ray_speedup.py", *sys.argv[1:]]))
    print("machine:", machine())

    from search.run import SearchConfig
    from search.sweep import SweepOptions, budget_sweep, spread
    base = SearchConfig(space="darts", data="digits", epochs=a.epochs, steps_per_epoch=a.steps, batch_size=32,
                        C=4, layers=3)
    budgets = spread("params=1.5M:3.5M", a.searches)
    out = Path(a.out or tempfile.mkdtemp(prefix="sweep_ray_speedup_"))
    print(f"{a.searches} searches: darts, digits, C=4, 3 cells, {a.epochs} epoch(s) x {a.steps} steps, batch 32, "
          f"params budgets 1.5M..3.5M; sweep directories under {out}")

    runs = [("ray", a.threads_per_search, a.workers)] + [("serial", int(t), 1) for t in a.serial_threads.split(",") if t]
    figures = {}
    for backend, threads, workers in runs:
        label = f"{backend} ({workers} worker(s) x {threads} thread(s))"
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        doc = budget_sweep(base, SweepOptions(out=str(out / f"{backend}-{threads}t"), workers=workers,
                                              threads_per_search=threads, backend=backend, progress=False), budgets)
        wall = time.perf_counter() - t0
        searched = sum(r["search_seconds"] or 0 for r in doc["rows"])
        figures[label] = {"wall_s": round(wall, 1), "failed": doc["failed"], "sum_search_s": round(searched, 1),
                          "load": (round(load0, 2), round(os.getloadavg()[0], 2))}
        print(f"{label:<40} wall {wall:7.1f} s  ({doc['failed']} failed; sum of the searches' own training "
              f"time {searched:.1f} s; load {load0:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    ray_wall = figures[next(iter(figures))]["wall_s"]
    for label, f in list(figures.items())[1:]:
        print(f"speed-up of Ray over {label}: {f['wall_s'] / ray_wall:.2f}x")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
