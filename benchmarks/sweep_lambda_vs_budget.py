"""RAPDARTS lambda sweep vs one hard-budget search, for the same params budget.

    .venv/bin/python benchmarks/sweep_lambda_vs_budget.py [--budget params=2.5M] [--per-round 4] [--rounds 2]
                     [--epochs 2] [--steps 5] [--workers 2] [--out DIR]

Both approaches search the darts space on digits with a small supernet (C=4,
3 cells, batch 32) and count the cost of the deployed CIFAR-10 network (C=36,
20 cells), derived the usual way:

* lambda sweep (RAPDARTS section IV): soft-penalty searches ``params=lambda``,
  lambda log-uniform over [1e-4/B, 10/B], narrowed to the budget crossing each
  round (``hwcost sweep lambda``), on Ray with ``--workers`` x 1 thread;
* hard budget (DCA-NAS-style dual ascent, derivation-aware cost): one search
  with ``params<=B`` (``hwcost search --budget``), 1 thread.

Reported: searches run, searches that landed under the budget, the best
network under it (derived params, supernet validation accuracy), wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sweep_ray_speedup import machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="params=2.5M")
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="directory for the runs (default: a temporary one)")
    a = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "benchmarks/sweep_lambda_vs_budget.py", *sys.argv[1:]]))
    print("machine:", machine())

    from search.objective import parse_term
    from search.run import SearchConfig, run_search
    from search.sweep import SweepOptions, lambda_sweep
    budget = parse_term(a.budget, "hard")
    base = SearchConfig(space="darts", data="digits", epochs=a.epochs, steps_per_epoch=a.steps, batch_size=32,
                        C=4, layers=3)
    out = Path(a.out or tempfile.mkdtemp(prefix="sweep_lambda_vs_budget_"))
    print(f"darts space, digits, C=4, 3 cells, {a.epochs} epochs x {a.steps} steps, batch 32; budget {a.budget} "
          f"on the CIFAR-10 eval network; runs under {out}")

    t0 = time.perf_counter()
    doc = lambda_sweep(base, SweepOptions(out=str(out / "lambda"), workers=a.workers, threads_per_search=1,
                                          progress=False), a.budget, per_round=a.per_round, rounds=a.rounds)
    lam_wall = time.perf_counter() - t0
    s = doc["summary"]
    for r in doc["rows"]:
        params = "-" if r["cost"] is None else f"{r['cost']:.4g}"
        print(f"  lambda {r['lambda']:.3g} (round {r['round']}): {r['status']}, params {params}, "
              f"supernet val acc {r['supernet_val_accuracy']}, {r['wall_seconds']} s")
    for h in s["rounds"]:
        print(f"  round {h['round']}: lambda range [{h['range'][0]:.3g}, {h['range'][1]:.3g}] -> "
              f"[{h['next_range'][0]:.3g}, {h['next_range'][1]:.3g}], {h['under_budget']}/{len(h['lambdas'])} under")
    best = s["best"]
    print(f"lambda sweep: {doc['searches']} searches ({doc['failed']} failed), {s['under_budget']} under the budget, "
          f"wall {lam_wall:.1f} s on {doc['backend']} ({a.workers} workers x 1 thread); best under budget: "
          + ("none" if best is None else f"params {best['cost']:.4g}, supernet val acc {best['supernet_val_accuracy']:.3f}")
          + ("" if s["largest"] is None else f"; largest under budget: params {s['largest']['cost']:.4g}"))

    t0 = time.perf_counter()
    r = run_search(SearchConfig(**{**base.to_dict(), "budgets": [a.budget], "threads": 1}), str(out / "hard"),
                   progress=False)
    hard_wall = time.perf_counter() - t0
    p = r["derived"]["params"]
    print(f"hard budget: 1 search, {int(p <= budget.value)} under the budget, wall {hard_wall:.1f} s (1 thread); "
          f"params {p:.4g}, supernet val acc {r['supernet_val_accuracy']:.3f}")
    print(json.dumps({"lambda": {"searches": doc["searches"], "under": s["under_budget"], "wall_s": round(lam_wall, 1),
                                 "best": best},
                      "hard": {"searches": 1, "under": int(p <= budget.value), "wall_s": round(hard_wall, 1),
                               "params": p, "acc": r["supernet_val_accuracy"]},
                      "load_end": os.getloadavg()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
