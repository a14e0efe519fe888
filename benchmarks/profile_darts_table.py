"""Wall time of a full darts device table (search + eval shapes) on one backend.

    .venv/bin/python benchmarks/profile_darts_table.py [--backend ort-cpu] [--repeats 3]

Runs the user's command, ``hwcost profile --space darts --networks
cifar10-search,cifar10 --backend ort-cpu --out T.json``, in a fresh process
``--repeats`` times and prints the median wall time (with min/max), the
number of keys, the quality flags and the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def hwcost_command() -> list[str]:
    """The ``hwcost`` command of this interpreter."""
    return [sys.executable, "-m", "hwcost.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--networks", default="cifar10-search,cifar10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-time", default="2")
    args = ap.parse_args()

    from device_tables import load_table
    from profilers.environment import device_info
    walls, table = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = str(Path(tmp) / f"darts_{r}.json")
            cmd = hwcost_command() + ["profile", "--space", "darts", "--networks", args.networks,
                                      "--backend", args.backend, "--max-time", args.max_time,
                                      "--out", out, "--no-progress"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            table = load_table(out)
            print(f"run {r + 1}: {walls[-1]:.1f} s", file=sys.stderr)
    dev = device_info()
    q = {k: sum(e.quality == k for e in table.entries) for k in ("ok", "noisy", "capped")}
    print(f"machine: {dev['cpu']}, {dev['logical_cores']} logical cores, {dev['os']}, python {dev['python']}; "
          f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"command: hwcost profile --space darts --networks {args.networks} --backend {args.backend} "
          f"--max-time {args.max_time} --out T.json")
    print(f"keys: {len(table)}; {table.runtime['backend']} {table.runtime['backend_version']}, "
          f"{table.runtime['threads']} thread, batch {table.runtime['batch']}, "
          f"{table.measurement.get('passes', 1)} interleaved pass(es); quality (last run): "
          + ", ".join(f"{k} {v}" for k, v in q.items()))
    print(f"wall time (process start to table written), {len(walls)} runs: median "
          f"{statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
