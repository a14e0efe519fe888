"""What a few alpha fine-tuning steps under corrected costs do (the verify loop's ``--verify-finetune``).

A tiny NB201 search (synthetic data) against the bundled ort-cpu table with a hard latency budget; then,
from its checkpoint, the latency model is scaled by ``--scale`` (what a measured network that ran slower
than predicted does to the costs in the verify loop) and the search trains ``N`` more steps under it, for
each N of ``--steps``. Prints, per N: the expected latency before and after, the budget's multiplier,
the largest change of an architecture logit and the network derived. Nothing is measured: the figures
are of the search's own arithmetic; the machine is printed for the timing column only.

    .venv/bin/python benchmarks/verify_finetune.py [--scale 1.6] [--steps 0,4,10,30]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.6, help="the corrected costs: the latency model x this")
    ap.add_argument("--steps", default="0,4,10,30", help="fine-tuning steps to try, comma-separated")
    ap.add_argument("--quantile", type=float, default=0.5, help="the budget: this quantile of random networks x 1.1")
    args = ap.parse_args()
    import numpy as np

    from hwcost.pipeline import random_derived_costs
    from profilers.environment import cpu_model
    from search.costs import search_cost_tensor
    from search.run import SearchConfig, run_search
    from spaces import NB201_OPS
    table = str(ROOT / "device_tables/data/nb201_ort-cpu.json")
    ct, _ = search_cost_tensor("nb201", "cifar10", tuple(NB201_OPS), table)
    lat = random_derived_costs(ct, 200, 0)[:, ct.index("latency_ms")].numpy()
    budget = 1.1 * float(np.quantile(lat, args.quantile))
    cfg = SearchConfig(space="nb201", table=table, budgets=[f"latency={budget}ms"], data="synthetic", epochs=2,
                       steps_per_epoch=3, batch_size=16, C=4, layers=3, threads=1)
    print(f"{cpu_model()}, {os.cpu_count()} logical cores; NB201, bundled ort-cpu table, budget {budget:.3f} ms, "
          f"latency model x {args.scale}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        r = run_search(cfg, out, progress=False)
        print(f"search: {r['steps']} steps, derived {r['arch']} at {r['derived']['latency_ms']:.3f} ms")
        print(f"{'steps':>5}  {'expected before':>15}  {'after':>8}  {'multiplier':>10}  {'max |d alpha|':>13}  "
              f"{'seconds':>7}  derived network (its latency under the corrected costs)")
        for n in (int(s) for s in args.steps.split(",")):
            t0 = time.perf_counter()
            t = run_search(cfg, out, resume=True, progress=False, correction={"scale": args.scale, "margin": 0.0},
                           finetune=n)
            secs = time.perf_counter() - t0
            f = t.get("finetune") or {"expected_before": {}, "expected_after": {}, "multipliers": {},
                                      "alpha_change_max": 0.0}
            before, after = f["expected_before"].get("latency_ms"), f["expected_after"].get("latency_ms")
            print(f"{n:>5}  {before if before is not None else float('nan'):>15.3f}  "
                  f"{after if after is not None else float('nan'):>8.3f}  "
                  f"{f['multipliers'].get('latency_ms', float('nan')):>10.3f}  {f['alpha_change_max']:>13.5f}  "
                  f"{secs:>7.1f}  {t['arch']} ({t['derived']['latency_ms']:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
