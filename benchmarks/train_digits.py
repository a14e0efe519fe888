"""Train DARTS_V2 and a random DARTS-space genotype on digits, on this CPU.

    .venv/bin/python benchmarks/train_digits.py [--epochs 10] [--C 8] [--layers 5] [--seeds 0 1 2]
                                                [--threads 1] [--json OUT.json]

Prints, per network: held-out top-1 accuracy (median and range over seeds),
parameters and MACs of the trained network (aux head excluded), and wall time,
with the machine (CPU model, cores, threads, load average before and after):
accuracy on a 359-image test split moves by a few points with the seed, and
wall time with whatever else the machine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profilers.environment import cpu_model  # noqa: E402

from spaces import Genotype, get_space  # noqa: E402


def random_genotype(seed: int, space: str = "darts") -> Genotype:
    """Each node takes two distinct earlier states, each through a random non-none op."""
    rng = random.Random(seed)
    ops = [o for o in get_space(space).searchable_ops() if o != "none"]

    def cell():
        edges = []
        for node in range(4):
            for src in rng.sample(range(node + 2), 2):
                edges.append((rng.choice(ops), src))
        return tuple(edges)
    return Genotype(cell(), (2, 3, 4, 5), cell(), (2, 3, 4, 5)).validate(space)




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random-genotype-seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    import torch
    from search.train import TrainConfig, run_train
    torch.set_num_threads(args.threads)
    rnd = random_genotype(args.random_genotype_seed)
    with tempfile.TemporaryDirectory() as tmp:
        gfile = Path(tmp) / "random.json"
        gfile.write_text(json.dumps(rnd.to_dict()))
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
                   "torch": torch.__version__, "python": platform.python_version(),
                   "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
        rows = []
        for name, genotype in (("DARTS_V2", "DARTS_V2"), (f"random(seed={args.random_genotype_seed})", str(gfile))):
            accs, secs, r = [], [], None
            for seed in args.seeds:
                cfg = TrainConfig(genotype=genotype, data="digits", C=args.C, layers=args.layers, epochs=args.epochs,
                                  batch_size=args.batch_size, seed=seed, threads=args.threads, network=None,
                                  device="cpu")
                t0 = time.perf_counter()
                r = run_train(cfg, Path(tmp) / f"{len(rows)}_{seed}", progress=False)
                secs.append(time.perf_counter() - t0)
                accs.append(r["test_accuracy"])
            rows.append({"network": name, "genotype": r["genotype"], "seeds": args.seeds,
                         "top1": accs, "top1_median": statistics.median(accs),
                         "params": r["trained"]["params"], "params_with_aux": r["trained"]["params_with_aux"],
                         "macs": r["trained"]["macs"], "wall_s": [round(s, 1) for s in secs],
                         "wall_s_median": round(statistics.median(secs), 1)})
        machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    print(f"digits (8x8, 1,438 train / 359 held-out), C={args.C}, {args.layers} cells, {args.epochs} epochs, "
          f"batch {args.batch_size}, seeds {args.seeds}; DARTS recipe (aux 0.4, drop-path 0.2, cutout 4)")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s), torch {machine['torch']}, "
          f"load average {machine['loadavg_before']} -> {machine['loadavg_after']}")
    print(f"{'network':<18} {'top-1 (median, range)':>24} {'params':>9} {'MACs':>9} {'wall s (median)':>16}")
    for row in rows:
        lo, hi = min(row["top1"]), max(row["top1"])
        print(f"{row['network']:<18} {100 * row['top1_median']:>9.2f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
              f"{row['params']:>9,} {row['macs']:>9,} {row['wall_s_median']:>16.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
