"""Is this machine stable enough to profile? The host's reference kernel, timed in short windows.

    .venv/bin/python benchmarks/host_stability.py [--seconds 12] [--window 0.25]

The same check as ``hwcost host`` (``profilers.host``): the reference kernel a
profile times beside its passes (a 3x3 conv, 64 channels at 32x32, BN, ReLU;
about 1 ms on host F) runs back to back on one thread; the script prints each window's
median, their spread, whether slow phases are steal or contention (the
thread's CPU time per call and ``/proc/stat``), and a verdict. Until
2026-12-04 this script timed its own conv (72 channels at 16x16); its figures
in benchmarks/README.md before that date are of that kernel.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--window", type=float, default=0.25)
    args = ap.parse_args()
    from profilers.host import check_host
    print("\n".join(check_host(args.seconds, args.window).lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
