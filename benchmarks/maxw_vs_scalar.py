"""Max-W vs scalar weighting (sharpDARTS Sec. 4.3): share of parametric ops in the derived cells.

    .venv/bin/python benchmarks/maxw_vs_scalar.py [--space darts] [--seeds 0,1,2] [--epochs 6]
                     [--C 8] [--layers 5] [--steps-per-epoch N] [--threads 1] [--json OUT]

sharpDARTS argues that scalar DARTS weighting (``w_i * op_i(x)``) drifts to the
ops whose gradient is largest early on -- small, parameter-free ones -- and that
Max-W (``(1 - max(w) + w_i) * op_i(x)``, eq. 3) corrects that bias, so Max-W
searches derive cells with more parametric ops. This runs the same first-order
DARTS search on digits (8x8, CPU) with both weightings for a few seeds and
prints, for each run, the share of the 16 derived edges (8 normal + 8 reduce)
whose op has weights (convs; also skip_connect at stride 2, a FactorizedReduce),
the derived target network's parameters, and the mean over seeds, with the exact
command and the machine (CPU model, cores, load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profilers.environment import cpu_model  # noqa: E402




def parametric_share(genotype: dict, space: str) -> float:
    """Share of the derived edges whose op (at that edge's stride) has parameters."""
    from spaces import build_op
    n = has = 0
    for cell in ("normal", "reduce"):
        for op, src in genotype[cell]:
            stride = 2 if cell == "reduce" and src < 2 else 1
            has += any(True for _ in build_op(space, op, 8, 8, stride, affine=True).parameters())
            n += 1
    return has / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="darts", choices=("darts", "sharpdarts"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--steps-per-epoch", type=int)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import torch
    from search.run import SearchConfig, run_search

    load_before = os.getloadavg()
    print("command:", shlex.join([".venv/bin/python", "benchmarks/maxw_vs_scalar.py", *sys.argv[1:]]))
    print(f"machine: {cpu_model()}; {os.cpu_count()} logical cores; torch {torch.__version__}, "
          f"{args.threads} thread(s); load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for max_w in (False, True):
            cfg = SearchConfig(space=args.space, strategy="darts", data="digits", epochs=args.epochs,
                               steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, C=args.C,
                               layers=args.layers, max_w=max_w, seed=seed, threads=args.threads)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                r = run_search(cfg, Path(d) / "run", progress=False)
            row = {"seed": seed, "weighting": "max-w" if max_w else "scalar",
                   "parametric_share": parametric_share(r["genotype"], args.space),
                   "params": r["derived"]["params"], "supernet_val_accuracy": r["supernet_val_accuracy"],
                   "seconds": round(time.perf_counter() - t0, 1), "genotype": r["genotype"]}
            rows.append(row)
            print(f"seed {seed} {row['weighting']:>6}: parametric ops {row['parametric_share']:.3f} "
                  f"({round(16 * row['parametric_share'])}/16), target params {row['params'] / 1e6:.3f} M, "
                  f"supernet val acc {row['supernet_val_accuracy']:.3f}, {row['seconds']} s", flush=True)
    print("mean over seeds (min-max):")
    summary = {}
    for w in ("scalar", "max-w"):
        share = [r["parametric_share"] for r in rows if r["weighting"] == w]
        params = [r["params"] for r in rows if r["weighting"] == w]
        summary[w] = {"parametric_share_mean": statistics.mean(share), "parametric_share_min": min(share),
                      "parametric_share_max": max(share), "params_mean": statistics.mean(params)}
        print(f"  {w:>6}: parametric ops {statistics.mean(share):.3f} ({min(share):.3f}-{max(share):.3f}), "
              f"target params {statistics.mean(params) / 1e6:.3f} M")
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": cpu_model(), "cores": os.cpu_count(),
                                               "load_before": load_before, "load_after": load_after,
                                               "runs": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
