"""The host's weight-streaming bandwidth against the matrix's size: where the cache ends.

    .venv/bin/python benchmarks/stream_probe.py [--backends ort-cpu,torch-cpu] [--mib 16,64,128,256,512,1024]

Times ``profilers.stream.stream_probe`` (a 1x4096 by 4096xN float32
matrix-vector product, one thread) at each matrix size: small matrices stay in
the cache between calls (the rate an op timed alone sees), large ones stream
from memory (what a network whose other layers evicted them pays).  ``hwcost
profile`` measures the 1 GiB point once per table (``measurement.weight_stream``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info, host_label  # noqa: E402
from profilers.stream import stream_probe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="ort-cpu,torch-cpu")
    ap.add_argument("--mib", default="16,64,128,256,512,1024")
    args = ap.parse_args()
    print(f"machine: {host_label()}, {device_info()['logical_cores']} logical cores; load "
          f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    sizes = [int(v) for v in args.mib.split(",")]
    print(f"{'backend':<10} " + " ".join(f"{s:>8} MiB" for s in sizes) + "   (GB/s)")
    for name in args.backends.split(","):
        backend = get_backend(name, threads=1)
        t0 = time.perf_counter()
        with backend.active():
            rates = [stream_probe(backend, s << 20)["gbps"] for s in sizes]
        print(f"{name:<10} " + " ".join(f"{r:12.1f}" for r in rates) + f"   ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
