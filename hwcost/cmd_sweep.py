"""``hwcost sweep {lambda,budgets,lookup}``: many searches in parallel (Ray), one table and a Pareto plot."""
from __future__ import annotations

import argparse
import json


def _search_options(p: argparse.ArgumentParser, cost_mode_default: str) -> None:
    """The options of ``hwcost search`` that every search of the sweep shares."""
    g = p.add_argument_group("search (as hwcost search)")
    g.add_argument("--space", default="darts", help="darts | sharpdarts | nb201")
    g.add_argument("--strategy", default="darts", help="darts | darts-2nd | pcdarts")
    g.add_argument("--data", default="digits", help="digits | synthetic | cifar10:DIR | imagefolder:DIR")
    g.add_argument("--network", default="cifar10", help="the deployed network whose costs count: cifar10 | imagenet")
    g.add_argument("--table", action="append", metavar="[NAME=]TABLE",
                   help="device table (path or bundled name) for latency terms; several devices: --table NAME=TABLE "
                        "(repeatable) and budgets latency@NAME=...")
    g.add_argument("--surrogate", help="op-level surrogate for keys the table lacks")
    g.add_argument("--penalty", action="append", default=[], metavar="NAME=LAMBDA",
                   help="an extra soft term every search carries (repeatable)")
    g.add_argument("--cost-mode", choices=("derived", "expected"), default=cost_mode_default,
                   help=f"cost the searches see (default here: {cost_mode_default})")
    g.add_argument("--budget-floor", type=float, default=0.85)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--C", type=int, default=8, help="supernet channels")
    g.add_argument("--layers", type=int, default=5, help="supernet cells")
    g.add_argument("--partial-k", type=int)
    g.add_argument("--max-w", action="store_true")
    g.add_argument("--plain", action="store_true", help="textbook mixed op instead of the fused CPU cell")
    g.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("sweep")
    s.add_argument("--out", required=True, help="sweep directory (runs/, sweep.csv, sweep.json, pareto.png)")
    s.add_argument("--workers", type=int, default=2, help="searches at once (default 2)")
    s.add_argument("--threads-per-search", type=int, default=1, help="torch threads (and Ray CPUs) per search")
    s.add_argument("--backend", choices=("ray", "process", "serial"),
                   help="default: ray when installed, else a process pool")
    s.add_argument("--address", help="an existing Ray cluster (e.g. ray://head:10001 or auto)")
    s.add_argument("--resume", action="store_true", help="keep finished runs, continue the others")
    s.add_argument("--json", action="store_true", help="print sweep.json's summary")


def _range_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--range", action="append", metavar="NAME=LOW:HIGH",
                   help=f"spread {what} over a range, e.g. params=1M:4M" + (
                       "; repeat it for a second resource (a grid of searches, a 2-D Pareto front), e.g. "
                       "--range latency@pi=5ms:9ms --range latency@gpu=1ms:2ms" if what == "budgets" else ""))
    p.add_argument("--count", type=int, default=5, help="how many values --range spreads (default 5)")
    p.add_argument("--log", action="store_true", help="spread log-evenly")


def add_sweep_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="many searches in parallel: lambda sweep, budget sweep, DCA-NAS look-up graph")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    k = kinds.add_parser("lambda", help="RAPDARTS coarse-to-fine lambda search for one budget")
    k.add_argument("--budget", required=True, metavar="NAME=VALUE", help="e.g. params=3M")
    k.add_argument("--lambda-range", metavar="LOW:HIGH", help="first range (default 1e-4/B : 10/B)")
    k.add_argument("--per-round", type=int, default=4, help="searches per round (default 4)")
    k.add_argument("--rounds", type=int, default=2, help="coarse, then finer rounds (default 2)")
    _search_options(k, "derived")

    k = kinds.add_parser("budgets", help="hard budgets at several values: a Pareto front (two resources: a grid)")
    k.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                   help="repeatable; values of two resources (e.g. latency@pi and latency@gpu) make a grid")
    _range_options(k, "budgets")
    _search_options(k, "derived")

    k = kinds.add_parser("lookup", help="DCA-NAS look-up graph: search constraint -> eval-size cost")
    k.add_argument("--constraint", action="append", default=[], metavar="NAME=VALUE",
                   help="search-size constraint (repeatable)")
    _range_options(k, "constraints")
    k.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                   help="eval-size budget to pick a search constraint for (repeatable)")
    k.add_argument("--verify", action="store_true", help="run a search at each picked constraint")
    _search_options(k, "expected")
    p.set_defaults(func=cmd_sweep)
    return p


def _lambda_range(text: str | None):
    if not text:
        return None
    from device_tables.errors import HwcostError
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise HwcostError(f"bad --lambda-range {text!r}: write LOW:HIGH, e.g. 1e-10:1e-6") from None
    return lo, hi


def cmd_sweep(args) -> int:
    from search.costs import table_fields
    from search.run import SearchConfig
    from search.sweep import SweepOptions, budget_sweep, lambda_sweep, lookup_sweep, spread
    from device_tables.errors import HwcostError
    base = SearchConfig(space=args.space, strategy=args.strategy, data=args.data, network=args.network,
                        **table_fields(args.table), surrogate=args.surrogate, penalties=args.penalty,
                        cost_mode=args.cost_mode, budget_floor=args.budget_floor, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, C=args.C,
                        layers=args.layers, partial_k=args.partial_k, max_w=args.max_w, seed=args.seed,
                        fast=not args.plain)
    search_fn = None
    if base.table is not None and not base.devices:
        from costmodels.node_tensor import is_space_node_table
        from search.costs import _table
        if is_space_node_table(_table(base.table)):       # each derived network priced by its own nodes
            from .verify import search_priced_by_nodes as search_fn
    opts = SweepOptions(out=args.out, workers=args.workers, threads_per_search=args.threads_per_search,
                        backend=args.backend, address=args.address, resume=args.resume, progress=not args.json)
    if args.kind == "lambda":
        doc = lambda_sweep(base, opts, args.budget, _lambda_range(args.lambda_range), args.per_round,
                           args.rounds, seed=args.seed, search_fn=search_fn)
    else:
        values = args.budget if args.kind == "budgets" else args.constraint
        if args.range:
            from search.sweep import split_spec
            flag = "budget" if args.kind == "budgets" else "constraint"
            if args.kind != "budgets" and (values or len(args.range) > 1):
                raise HwcostError("a look-up graph varies one search constraint: give either --range once or "
                                  "--constraint values")
            both = {split_spec(r)[0] for r in args.range} & {split_spec(v)[0] for v in values}
            if both:
                raise HwcostError(f"give either --range or --{flag} for {', '.join(sorted(both))}, not both")
            values = list(values) + [v for r in args.range for v in spread(r, args.count, args.log)]
        if args.kind == "budgets":
            doc = budget_sweep(base, opts, values, search_fn=search_fn)
        else:
            doc = lookup_sweep(base, opts, values, args.target, args.verify, search_fn=search_fn)
    if args.json:
        print(json.dumps({k: v for k, v in doc.items() if k != "rows"}, indent=1, default=str))
        _refuse_unanswered(args, doc)
        return 0
    s = doc["summary"]
    print(f"{doc['searches']} searches ({doc['failed']} failed) on {doc['backend']} with {doc['workers']} workers "
          f"x {doc['threads_per_search']} threads in {doc['wall_seconds']:.1f} s")
    if args.kind == "lambda":
        for h in s["rounds"]:
            print(f"  round {h['round']}: lambda in [{h['range'][0]:.3g}, {h['range'][1]:.3g}], "
                  f"{h['under_budget']}/{len(h['lambdas'])} under budget -> next [{h['next_range'][0]:.3g}, "
                  f"{h['next_range'][1]:.3g}]")
        b = s["best"]
        print(f"  best under {s['metric']} <= {s['budget']:.6g}: " + (
            "none" if b is None else f"{b['name']} (lambda {b['lambda']:.3g}, {s['metric']} {b['cost']:.6g}, "
                                     f"supernet val acc {b['supernet_val_accuracy']:.3f})"))
        if s["largest"] is not None:
            print(f"  largest under it: {s['largest']['name']} ({s['metric']} {s['largest']['cost']:.6g})")
    elif args.kind == "budgets":
        print(f"  {s['under_budget']}/{doc['searches']} searches met their budget"
              f"{'s' if s.get('metrics') else ''}; Pareto front: {', '.join(doc['pareto']) or 'none'}")
        if s.get("metrics"):
            from search.objective import user_name
            ms = s["metrics"]
            print("  " + "  ".join(f"{'budget ' + user_name(m):>20}" for m in ms) + "  "
                  + "  ".join(f"{'derived ' + user_name(m):>20}" for m in ms) + "  accuracy  front")
            for r in doc["rows"]:
                costs = [r.get(f"cost@{m}") for m in ms]
                print("  " + "  ".join(f"{r[f'budget@{m}']:>20.6g}" for m in ms) + "  "
                      + "  ".join(f"{c:>20.6g}" if c is not None else f"{r['status']:>20}" for c in costs)
                      + (f"  {r['supernet_val_accuracy']:8.3f}" if r.get("supernet_val_accuracy") is not None
                         else f"{'':>10}") + ("  *" if r.get("pareto") else ""))
    else:
        g = s["lookup"]
        for x, y in g["points"]:
            print(f"  search constraint {x:.6g} -> derived {g['metric']} {y:.6g}")
        for p in g["picks"]:
            if p["constraint"] is None:
                print(f"  for {g['metric']} {p['target']:.6g}: no search constraint (see below)")
                continue
            line = f"  for {g['metric']} {p['target']:.6g}: search with {p['constraint']:.6g}"
            if p.get("actual") is not None:
                line += f"; got {p['actual']:.6g} ({100 * p['relative_error']:+.1f}%)"
            print(line)
    print(f"sweep directory: {args.out} (sweep.csv, sweep.json, pareto.png, runs/)")
    _refuse_unanswered(args, doc)
    return 0


def _refuse_unanswered(args, doc: dict) -> None:
    """A look-up target the graph could not answer is an error (one line, exit 2), after the sweep
    and lookup.json -- every search kept -- have been written and reported."""
    if args.kind != "lookup":
        return
    from device_tables.errors import HwcostError
    picks = doc["summary"]["lookup"]["picks"]
    refused = [p for p in picks if p["constraint"] is None]
    if refused:
        first = refused[0]["refused"]
        raise HwcostError(f"no search constraint for {len(refused)} of {len(picks)} target(s): {first} "
                          f"(the {doc['searches']} searches are kept in {args.out}: sweep.json, lookup.json)")
