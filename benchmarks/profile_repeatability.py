"""Repeatability of a profile: the same keys measured by two separate profile runs.

    .venv/bin/python benchmarks/profile_repeatability.py [--backend ort-cpu] [--keys 30] [--pairs 3] [--passes 10]

Takes ``--keys`` keys spread evenly over the darts table (cifar10-search +
cifar10 shapes) and profiles them twice, each time in a fresh process (new
sessions, new allocations); the figure is the median and the maximum relative
difference between the two runs' medians. ``--pairs`` repeats the comparison,
and the summary is the median over pairs with its range. ``--passes`` is the
profile's (default 10 interleaved passes, each key keeping its quietest; 1 =
one window per key, as before 2026-11-30).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def chosen_keys(n: int):
    from profilers.shapes import space_keys
    keys = space_keys("darts", "cifar10-search,cifar10")
    step = len(keys) / n
    return [keys[int(i * step)] for i in range(n)]


def run_once(out: str, backend_name: str, n: int, rel_ci: float, max_time: float, passes: int) -> None:
    from profilers.backends import get_backend
    from profilers.measure import Settings
    from profilers.profile import Job, profile
    from profilers.shapes import key_module
    jobs = [Job(k, (lambda k=k: key_module(k))) for k in chosen_keys(n)]
    profile(jobs, get_backend(backend_name), out, spaces=["darts"],
            settings=Settings(rel_ci=rel_ci, max_time_s=max_time, passes=passes), progress=False,
            provenance={"benchmark": "profile_repeatability"})


def compare_pair(args, tmp: str, pair: int) -> tuple[list, object]:
    from device_tables import load_table
    tables = []
    for run in (1, 2):
        out = str(Path(tmp) / f"pair{pair}_run{run}.json")
        subprocess.run([sys.executable, __file__, "--run-once", out, "--backend", args.backend,
                        "--keys", str(args.keys), "--rel-ci", str(args.rel_ci),
                        "--max-time", str(args.max_time), "--passes", str(args.passes)], check=True)
        tables.append(load_table(out))
    a, b = tables
    diffs = sorted((abs(e.median_ms - b.get(e.key).median_ms) / min(e.median_ms, b.get(e.key).median_ms),
                    e.key.to_str(), e.median_ms, b.get(e.key).median_ms) for e in a.entries)
    return diffs, a


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--keys", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rel-ci", type=float, default=0.02)
    ap.add_argument("--max-time", type=float, default=2.0)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--run-once", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_once:
        run_once(args.run_once, args.backend, args.keys, args.rel_ci, args.max_time, args.passes)
        return 0

    from profilers.environment import device_info
    medians, maxima = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            diffs, table = compare_pair(args, tmp, pair)
            rel = [d[0] for d in diffs]
            medians.append(statistics.median(rel))
            maxima.append(rel[-1])
            print(f"pair {pair + 1}: median {medians[-1]:.2%}, p90 {rel[int(0.9 * (len(rel) - 1))]:.2%}, "
                  f"max {rel[-1]:.2%} (largest: {diffs[-1][1]} {diffs[-1][2]:.4g} vs {diffs[-1][3]:.4g} ms); "
                  f"load average {os.getloadavg()[0]:.2f}")
    dev = device_info()
    rt = table.runtime
    print(f"machine: {dev['cpu']}, {dev['logical_cores']} logical cores, {dev['os']}, python {dev['python']}")
    print(f"backend: {rt['backend']} {rt['backend_version']}, {rt['threads']} thread, batch {rt['batch']}; "
          f"rel_ci {args.rel_ci}, max_time {args.max_time} s, {args.passes} pass(es); {args.keys} darts keys "
          f"(cifar10-search + cifar10)")
    print(f"relative difference of the medians between two separate runs, over {args.pairs} pairs: "
          f"median {statistics.median(medians):.2%} (range {min(medians):.2%}-{max(medians):.2%}); "
          f"max {statistics.median(maxima):.2%} (range {min(maxima):.2%}-{max(maxima):.2%})")
    print(json.dumps({"median_rel_diff": medians, "max_rel_diff": maxima, "keys": args.keys, "passes": args.passes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
