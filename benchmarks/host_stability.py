"""Is this machine stable enough to profile? A fixed op, timed in short windows.

    .venv/bin/python benchmarks/host_stability.py [--seconds 12] [--window 0.25]

Runs one 3x3 convolution (72 channels, 16x16, batch 1; ~0.4 ms, the size of a
typical DARTS op) back to back on one thread and prints the median of each
``--window``-second window, then the spread of those medians. On a dedicated
board the window medians agree within a few percent; on a shared VM whose host
is busy they move together in phases of a second or so, which no per-key
statistic can see (every sample of a key falls in one phase) -- profile such a
machine twice and compare (benchmarks/profile_repeatability.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--window", type=float, default=0.25)
    args = ap.parse_args()
    import torch

    from profilers.environment import cpu_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(72, 72, 3, padding=1).eval()
    x = torch.randn(1, 72, 16, 16)
    medians = []
    end = time.perf_counter() + args.seconds
    with torch.no_grad():
        while time.perf_counter() < end:
            samples, stop = [], time.perf_counter() + args.window
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                conv(x)
                samples.append(time.perf_counter() - t0)
            medians.append(statistics.median(samples) * 1e6)
    lo, hi = min(medians), max(medians)
    mid = statistics.median(medians)
    print(f"{cpu_model()}, {os.cpu_count()} logical cores; load average {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"window medians (us, {args.window:g} s each): " + " ".join(f"{m:.0f}" for m in medians))
    print(f"median of windows {mid:.0f} us; min {lo:.0f}, max {hi:.0f} ({100 * (hi - lo) / mid:.0f}% of the median); "
          f"p90/p10 {statistics.quantiles(medians, n=10)[-1] / statistics.quantiles(medians, n=10)[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
