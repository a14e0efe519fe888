"""``hwcost search``: a constraint-aware DARTS-family search into a run directory."""
from __future__ import annotations

import argparse
import json


def add_search_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="search a space under budgets/penalties against a device table")
    p.add_argument("--space", default="darts", help="darts | sharpdarts | nb201")
    p.add_argument("--strategy", default="darts", help="darts | darts-2nd | pcdarts")
    p.add_argument("--data", default="digits", help="digits | synthetic | cifar10:DIR | imagefolder:DIR")
    p.add_argument("--network", default="cifar10", help="the deployed network whose costs count: cifar10 | imagenet")
    p.add_argument("--table", help="device table (path or bundled name) for latency terms")
    p.add_argument("--surrogate", help="op-level surrogate for keys the table lacks")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                   help="hard budget, e.g. latency=4ms, params=1.5M, macs=300M, memory=12MiB (repeatable)")
    p.add_argument("--penalty", action="append", default=[], metavar="NAME=LAMBDA",
                   help="soft term lambda * E[cost], e.g. params=1e-7 (repeatable)")
    p.add_argument("--cost-mode", choices=("derived", "expected"), default="derived",
                   help="derived: the cost of the network derivation gives now (default); "
                        "expected: RAPDARTS's plain expectation")
    p.add_argument("--budget-floor", type=float, default=0.85,
                   help="keep each budgeted cost above this share of its budget (0 = upper bound only)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--C", type=int, default=8, help="supernet channels (DARTS paper: 16)")
    p.add_argument("--layers", type=int, default=5, help="supernet cells (DARTS paper: 8)")
    p.add_argument("--partial-k", type=int, help="PC-DARTS K (default 4 for pcdarts)")
    p.add_argument("--max-w", action="store_true", help="sharpDARTS Max-W weighting")
    p.add_argument("--plain", action="store_true",
                   help="run the textbook mixed op instead of the fused CPU cell (same values, slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print result.json")
    p.set_defaults(func=cmd_search)
    return p


def cmd_search(args) -> int:
    from search.run import SearchConfig, run_search
    cfg = SearchConfig(space=args.space, strategy=args.strategy, data=args.data, network=args.network,
                       table=args.table, surrogate=args.surrogate, budgets=args.budget, penalties=args.penalty,
                       cost_mode=args.cost_mode, budget_floor=args.budget_floor, epochs=args.epochs,
                       steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, C=args.C,
                       layers=args.layers, partial_k=args.partial_k, max_w=args.max_w, seed=args.seed,
                       threads=args.threads, fast=not args.plain)
    r = run_search(cfg, args.out, resume=args.resume, progress=not args.json)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"derived {'arch' if 'arch' in r else 'genotype'}: {r.get('arch', r.get('genotype'))}")
    for m, b in r["budgets"].items():
        v = r["derived"].get(m)
        print(f"  {m}: {v:.6g} (budget {b:.6g}, {'met' if r['within_budget'][m] else 'NOT met'})")
    for m in ("latency_ms", "params", "macs"):
        if m in r["derived"] and m not in r["budgets"]:
            print(f"  {m}: {r['derived'][m]:.6g}")
    print(f"run directory: {args.out} (result.json, log.jsonl, alphas.png, costs.png)")
    return 0
