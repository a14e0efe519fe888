"""Search speed on CPU: time of a first-order DARTS step, plain vs MixedOp vs fast path.

    .venv/bin/python benchmarks/search_speed.py [--threads 2] [--steps 5] [--warmup 2]
                     [--configs large,small] [--variants plain,mixedop,fast] [--extras]
                     [--mmap-threshold 131072]

A first-order step is what ``search/run.py`` does per batch: one alpha step
(``Architect.step``: forward + backward of the validation loss w.r.t. alpha,
Adam) and one weight step (forward + backward of the training loss, gradient
clipping at 5, SGD with momentum and weight decay). Variants:

* ``plain``   -- ``model(x, plain=True)``: the textbook sum over every op, ``none`` included;
* ``mixedop`` -- ``search.supernet.MixedOp`` as the repository runs it (skips ``none``);
* ``fast``    -- ``search.fast.accelerate(model)``.

Configs (the issue's): ``large`` = C=16, 8 cells, batch 16, 32x32 (the original
DARTS code: 7.2 s a step, 2.7 GB peak RSS, 2 threads); ``small`` = C=8, 5 cells,
batch 64, 8x8 (1.1 s). Each (config, variant) runs in its own process, so its
peak RSS (``ru_maxrss``) is its own; the median is reported with the spread
(min-max and IQR) because the machine is shared. ``--extras`` adds, for the
fast path: second- vs first-order step time (small config; ``Architect`` of
``search/strategies.py``), and PC-DARTS (K=4) vs DARTS at the same batch and
config (step time and peak RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name: (supernet kwargs, batch, image size, original DARTS seconds/step)
    "large": (dict(C=16, layers=8), 16, 32, 7.2),
    "small": (dict(C=8, layers=5), 64, 8, 1.1),
}
ORIGINAL_RSS_GB = {"large": 2.7}


def run_one(config: str, variant: str, steps: int, warmup: int, threads: int, strategy: str, seed: int) -> dict:
    """Time ``steps`` search steps in this process (after ``warmup``); return the raw samples."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from search.fast import accelerate
    from search.strategies import Architect, get_strategy
    from search.supernet import SupernetConfig, build_supernet

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    kwargs, batch, size, _ = CONFIGS[config]
    spec = get_strategy(strategy)
    model = build_supernet(SupernetConfig(num_classes=10, partial_k=spec.partial_k, **kwargs))
    if variant == "fast":
        accelerate(model)
    plain = variant == "plain"
    if plain:  # the textbook forward everywhere, the architect's losses included
        model.forward = lambda x, _f=model.forward: _f(x, plain=True)
    model.train()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=spec.weight_lr, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, spec, w_opt, lambda: torch.zeros(()))
    data = [(torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))) for _ in range(4)]

    def step(i: int) -> None:
        (xt, yt), (xv, yv) = data[i % 2], data[2 + i % 2]
        architect.step(xt, yt, xv, yv, spec.weight_lr)            # alpha step (DARTS: before w)
        w_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xt), yt)                       # weight step
        loss.backward()
        nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
        w_opt.step()

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"config": config, "variant": variant, "strategy": strategy, "times": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": threads}


def in_subprocess(config, variant, args, strategy="darts") -> dict:
    cmd = [sys.executable, __file__, "--one", f"{config},{variant},{strategy}", "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = dict(os.environ)
    if args.mmap_threshold:
        # a fixed glibc mmap threshold returns large freed blocks to the OS at once, so
        # peak RSS is the working set rather than the working set plus heap fragmentation
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    load0 = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["load"] = (load0, os.getloadavg()[0])
    return res


def summary(times: list[float]) -> str:
    """Median, IQR and min-max: the median is robust to the other jobs on a shared machine."""
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [med, med, med]
    flag = "  (IQR/median > 10%: noisy)" if (q[2] - q[0]) > 0.1 * med else ""
    return (f"median {med:7.3f} s  IQR {q[0]:.3f}-{q[2]:.3f}  min-max {min(times):.3f}-{max(times):.3f}"
            f"  n={len(times)}{flag}")


def machine() -> str:
    import torch
    from profilers.environment import cpu_model
    cpu = cpu_model()
    return (f"CPU {cpu}, {os.cpu_count()} logical cores; load average {os.getloadavg()}; "
            f"torch {torch.__version__}; python {platform.python_version()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="large,small")
    ap.add_argument("--variants", default="plain,mixedop,fast")
    ap.add_argument("--extras", action="store_true", help="second order and PC-DARTS figures (fast path)")
    ap.add_argument("--mmap-threshold", type=int, default=0, metavar="BYTES",
                    help="run each measurement with MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072): "
                         "peak RSS then shows the working set, not glibc heap fragmentation")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        config, variant, strategy = args.one.split(",")
        print(json.dumps(run_one(config, variant, args.steps, args.warmup, args.threads, strategy, args.seed)))
        return 0

    print(machine())
    print(f"threads {args.threads}; {args.warmup} warm-up + {args.steps} timed first-order steps "
          f"(alpha step + weight step) per run, each run in its own process"
          + (f"; MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else "") + "\n")
    for config in args.configs.split(","):
        kwargs, batch, size, original = CONFIGS[config]
        print(f"== {config}: {kwargs}, batch {batch}, {size}x{size}; original DARTS {original} s/step"
              + (f", {ORIGINAL_RSS_GB[config]} GB peak RSS" if config in ORIGINAL_RSS_GB else ""))
        for variant in args.variants.split(","):
            r = in_subprocess(config, variant, args)
            med = statistics.median(r["times"])
            print(f"  {variant:8s} {summary(r['times'])}  peak RSS {r['peak_rss_mb'] / 1024:5.2f} GB"
                  f"  x{med / original:.2f} of original  (load {r['load'][0]:.2f}->{r['load'][1]:.2f})",
                  flush=True)
    if args.extras:
        print("\n== extras (fast path)")
        first = in_subprocess("small", "fast", args, "darts")
        second = in_subprocess("small", "fast", args, "darts-2nd")
        print(f"  small, first order  {summary(first['times'])}")
        print(f"  small, second order {summary(second['times'])}  ratio "
              f"{statistics.median(second['times']) / statistics.median(first['times']):.2f}")
        for config in args.configs.split(","):
            d = in_subprocess(config, "fast", args, "darts")
            pc = in_subprocess(config, "fast", args, "pcdarts")
            print(f"  {config}, DARTS        {summary(d['times'])}  peak RSS {d['peak_rss_mb'] / 1024:.2f} GB")
            print(f"  {config}, PC-DARTS K=4 {summary(pc['times'])}  peak RSS {pc['peak_rss_mb'] / 1024:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
