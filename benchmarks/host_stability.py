"""Is this machine stable enough to profile? A fixed op, timed in short windows.

    .venv/bin/python benchmarks/host_stability.py [--seconds 12] [--window 0.25]

Runs one 3x3 convolution (72 channels, 16x16, batch 1; ~0.4 ms, the size of a
typical DARTS op) back to back on one thread and prints the median of each
``--window``-second window, then the spread of those medians. On a dedicated
board the window medians agree within a few percent; on a shared VM whose host
is busy they move together in phases of a second or so, which no per-key
statistic can see (every sample of a key falls in one phase) -- profile such a
machine twice and compare (benchmarks/profile_repeatability.py).

It also says what a slow phase is made of. Each call is timed twice, by the
wall clock and by the thread's CPU time, and on Linux the VM's steal time
(``/proc/stat``) is read around each window. If the hypervisor takes the vCPU
away (steal), or another process of the machine does, the CPU time stays put
while the wall clock runs on: a CPU-time clock would take such phases out. If
the CPU time moves with the wall clock, the vCPU ran the whole time, only
slower (a busy sibling hyperthread, shared cache or memory bandwidth, a lower
clock): no clock takes that out; measure in the quiet phases, or on a quieter
host.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def steal_ms() -> float | None:
    """The VM's steal time so far (``/proc/stat``, all CPUs), ms; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1e3 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--window", type=float, default=0.25)
    args = ap.parse_args()
    import torch

    from profilers.environment import cpu_model
    from profilers.measure import QUIET_SPREAD
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(72, 72, 3, padding=1).eval()
    x = torch.randn(1, 72, 16, 16)
    medians, cpu_medians, steals = [], [], []
    end = time.perf_counter() + args.seconds
    with torch.no_grad():
        while time.perf_counter() < end:
            samples, cpu, stop = [], [], time.perf_counter() + args.window
            s0 = steal_ms()
            while time.perf_counter() < stop:
                t0, c0 = time.perf_counter(), time.thread_time()
                conv(x)
                cpu.append(time.thread_time() - c0)
                samples.append(time.perf_counter() - t0)
            s1 = steal_ms()
            medians.append(statistics.median(samples) * 1e6)
            cpu_medians.append(statistics.median(cpu) * 1e6)
            steals.append(s1 - s0 if s0 is not None and s1 is not None else None)
    lo, hi = min(medians), max(medians)
    mid = statistics.median(medians)
    print(f"{cpu_model()}, {os.cpu_count()} logical cores; load average {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"window medians (us, {args.window:g} s each): " + " ".join(f"{m:.0f}" for m in medians))
    print(f"median of windows {mid:.0f} us; min {lo:.0f}, max {hi:.0f} ({100 * (hi - lo) / mid:.0f}% of the median); "
          f"p90/p10 {statistics.quantiles(medians, n=10)[-1] / statistics.quantiles(medians, n=10)[0]:.2f}")
    if min(cpu_medians) <= 0:   # a coarse thread clock (some platforms tick in ms): no per-call CPU time
        print("the thread's CPU clock is too coarse here to time one call: no check of what the phases are")
        return 0
    ratio = [w / c for w, c in zip(medians, cpu_medians)]
    print(f"the thread's CPU time per call: window medians {min(cpu_medians):.0f}-{max(cpu_medians):.0f} us; "
          f"wall / CPU time per window {min(ratio):.3f}-{max(ratio):.3f}")
    if None not in steals:
        print(f"steal time (the hypervisor ran something else on this VM's vCPUs; /proc/stat, all "
              f"{os.cpu_count()} CPUs together): {sum(steals):.0f} ms over {args.seconds:g} s, at most "
              f"{max(steals):.0f} ms in a window")
    if hi / lo > QUIET_SPREAD:
        cpu_lo, cpu_hi = min(cpu_medians), max(cpu_medians)
        if cpu_hi / cpu_lo - 1 > (hi / lo - 1) / 2:
            print(f"so the slow windows ran on the CPU the whole time, only slower (per call, its CPU time moved "
                  f"{cpu_hi / cpu_lo - 1:.0%}, its wall time {hi / lo - 1:.0%}): contention for the core's caches "
                  f"or memory, or its clock, not steal; no clock takes it out")
        else:
            print(f"so the slow windows lost the CPU (per call, its CPU time moved only {cpu_hi / cpu_lo - 1:.0%}, "
                  f"its wall time {hi / lo - 1:.0%}): taken by the hypervisor (steal, above) or by another process "
                  f"of this machine; a CPU-time clock would leave it out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
