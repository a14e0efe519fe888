"""``make demo``: the main job on embedded defaults.

Today: cost the published genotypes (params as the papers count them, MACs,
memory), export DARTS_V2 to ONNX, check it against PyTorch on ONNX Runtime,
and time the exported network on this CPU. It grows into the whole chain
(profile -> fit -> search -> export -> measure) as the toolkit does.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

PAPER_PARAMS_M = {"DARTS_V2": 3.3, "PC_DARTS_CIFAR": 3.6, "PDARTS": 3.4, "SHARP_DARTS": 1.98,
                  "SHARPSEPCONV_DARTS": 3.6}
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _time_onnx(path: str, shape, runs: int = 30) -> tuple[float, float, float]:
    import numpy as np

    from profilers.export import ort_session
    sess = ort_session(path, threads=1)
    x = {sess.get_inputs()[0].name: np.random.rand(*shape).astype("float32")}
    for _ in range(5):
        sess.run(None, x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, x)
        t.append((time.perf_counter() - t0) * 1e3)
    p10, med, p90 = np.percentile(t, [10, 50, 90])
    return float(med), float(p10), float(p90)


def run_demo(out_dir: str = "out/demo") -> int:
    from .api import cost, export
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    print(f"hwcost demo on {platform.machine()} / {platform.processor() or platform.system()}, "
          f"{os.cpu_count()} cores\n")
    print("1. Published genotypes, CIFAR-10 eval network (C=36, 20 cells), auxiliary head excluded:")
    print(f"   {'genotype':<20} {'params':>9} {'paper':>7} {'MACs':>9} {'activations':>12}")
    for name, paper in PAPER_PARAMS_M.items():
        space = "sharpdarts" if name.startswith("SHARP") else "darts"
        d = cost(space, name, network="cifar10")
        print(f"   {name:<20} {d['params'] / 1e6:>8.2f}M {paper:>6}M {d['macs'] / 1e6:>8.1f}M "
              f"{d['activation_bytes'] / 2**20:>9.1f} MiB")
    d = cost("nb201", arch=NB201_BEST)
    print(f"   {'NB201 (best arch)':<20} {d['params'] / 1e6:>8.2f}M {'':>7} {d['macs'] / 1e6:>8.1f}M "
          f"{d['activation_bytes'] / 2**20:>9.1f} MiB")

    print("\n2. Export DARTS_V2 (CIFAR-10) to ONNX and check it against PyTorch:")
    onnx_path = str(Path(out_dir) / "darts_v2_cifar10.onnx")
    e = export(onnx_path, "darts", "DARTS_V2", network="cifar10")
    print(f"   wrote {e['onnx']} ({e['nodes']} nodes); onnx.checker ok; "
          f"max |ORT - PyTorch| = {e['max_abs_diff']:.2e}")

    print("\n3. Measure the exported network on ONNX Runtime CPU, 1 thread, batch 1:")
    med, p10, p90 = _time_onnx(onnx_path, (1, 3, 32, 32))
    print(f"   median {med:.2f} ms (p10 {p10:.2f}, p90 {p90:.2f}; 30 runs after 5 warm-up)")
    return 0
