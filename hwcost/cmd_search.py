"""``hwcost search``: a constraint-aware DARTS-family search into a run directory.

Data-parallel on several processes: ``torchrun --nproc_per_node K -m hwcost.cli search ...``
(gloo; the search runs on CPU). ``--batch-size`` stays the *global* batch: each process
takes a contiguous 1/K of every batch, so it must be divisible by K. BatchNorm
statistics and all gradients are synchronised, so K processes take the steps one
process takes with the same ``--batch-size`` (up to the order of floating-point sums).
Only rank 0 writes the run directory and prints.
"""
from __future__ import annotations

import argparse
import json
import sys

from device_tables.errors import HwcostError


def add_search_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "search", help="search a space under budgets/penalties against a device table",
        description="Search a space under budgets/penalties against a device table. Data-parallel: "
                    "torchrun --nproc_per_node K -m hwcost.cli search ... (gloo, CPU processes); --batch-size "
                    "is the global batch, split across the K processes (it must be divisible by K); the K "
                    "processes take the steps one process takes with that batch (synchronised BatchNorm and "
                    "gradients); only rank 0 writes --out and prints.")
    p.add_argument("--space", help="darts | sharpdarts | nb201 (default darts)")
    p.add_argument("--strategy",
                   help="darts | darts-2nd | pcdarts | pdarts | rapdarts (pdarts + budgets/penalties) | dcanas "
                        "(default darts)")
    p.add_argument("--data", help="digits | synthetic | cifar10:DIR | imagefolder:DIR (default digits)")
    p.add_argument("--network", help="the deployed network whose costs count: cifar10 | imagenet (default cifar10)")
    p.add_argument("--table", action="append", metavar="[NAME=]TABLE",
                   help="device table (path or bundled name) for latency terms; several devices: --table NAME=TABLE "
                        "each, with budgets latency@NAME=20ms (repeatable)")
    p.add_argument("--surrogate", help="op-level surrogate for keys the table lacks")
    p.add_argument("--budget", action="append", metavar="NAME=VALUE",
                   help="hard budget, e.g. latency=4ms, params=1.5M, macs=300M, memory=12MiB (repeatable)")
    p.add_argument("--penalty", action="append", metavar="NAME=LAMBDA",
                   help="soft term lambda * E[cost], e.g. params=1e-7 (repeatable)")
    p.add_argument("--cost-mode", choices=("derived", "expected"),
                   help="derived: the cost of the network derivation gives now (default); "
                        "expected: RAPDARTS's plain expectation")
    p.add_argument("--budget-floor", type=float,
                   help="keep each budgeted cost above this share of its budget (default 0.85; 0 = upper bound only)")
    p.add_argument("--confidence", type=float,
                   help="a latency budget holds on the device at this confidence: the search aims under it by the "
                        "margin the calibrated table's residuals need (default 0.9 with a calibrated table)")
    g = p.add_argument_group("hardware in the loop")
    g.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the derived network on the table's backend here; outside [floor, budget], add it "
                        "to the table's calibration and derive again (default: on when the table was profiled on "
                        "this machine)")
    g.add_argument("--verify-rounds", type=int, default=None, help="re-derivations at most (default 3)")
    g.add_argument("--verify-finetune", type=int, default=None, metavar="STEPS",
                   help="when a re-derivation leads back to a network measured already, train the architecture "
                        "weights this many steps more under the corrected costs and derive again (default 10; 0: "
                        "stop there)")
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int,
                   help="global batch, default 64 (under torchrun: split across the processes; divisible by their number)")
    p.add_argument("--C", type=int, help="supernet channels (default 8; DARTS paper: 16)")
    p.add_argument("--layers", type=int, help="supernet cells (default 5; DARTS paper: 8)")
    p.add_argument("--partial-k", type=int, help="PC-DARTS K (default 4 for pcdarts)")
    p.add_argument("--max-w", action="store_true", default=None,
                   help="sharpDARTS Max-W weighting (eq. 3: w_i -> 1 - max(w) + w_i), with any strategy")
    p.add_argument("--lr-schedule", choices=("cosine", "cpa"),
                   help="weight learning-rate schedule: cosine (DARTS, the default) or cpa (sharpDARTS Cosine Power Annealing)")
    p.add_argument("--lr-power", type=float,
                   help="Cosine Power Annealing's p (default 2; sharpDARTS: 2 on CIFAR-10, 10 on ImageNet; 1 = cosine)")
    p.add_argument("--weight-lr", type=float, help="initial weight learning rate (default: the strategy's)")
    p.add_argument("--arch-lr", type=float, help="alpha (Adam) learning rate (default: the strategy's)")
    p.add_argument("--warmup-epochs", type=int,
                   help="epochs with alpha frozen (default: the strategy's; per stage for pdarts/rapdarts)")
    g = p.add_argument_group("P-DARTS / RAPDARTS (--strategy pdarts | rapdarts; --epochs is per stage)")
    g.add_argument("--stages", metavar="N,N,..",
                   help="cells of each stage's supernet (default LAYERS, LAYERS+6, LAYERS+12: 5,11,17)")
    g.add_argument("--stage-ops", metavar="N,N,..",
                   help="ops per edge in each stage, strongest kept (default 8,5,3 in darts; 9,6,3 sharpdarts; "
                        "5,3,2 nb201)")
    g.add_argument("--skip-dropout", metavar="P,P,..",
                   help="dropout on skip-connect outputs per stage, decaying within it (default 0.1,0.4,0.7)")
    g.add_argument("--max-skips", type=int,
                   help="skip connects the final normal cell may keep (default 2)")
    g = p.add_argument_group("DCA-NAS (--strategy dcanas turns these on; any strategy may set them)")
    g.add_argument("--share-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="one op per (source node, op type), shared by the edges leaving the node (DCA-NAS eq. 5)")
    g.add_argument("--bottleneck", type=int, metavar="B",
                   help="1x1 convs shrink the channels through the ops to C/B (dcanas default 4; 1 = off)")
    g.add_argument("--derived-cells", action=argparse.BooleanOptionalAction, default=None,
                   help="only the first normal and reduction cell are mixed; the others run the derived cell")
    p.add_argument("--plain", action="store_true", default=None,
                   help="run the textbook mixed op instead of the fused CPU cell (same values, slower)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the settings it was started with "
                        "(its config.json; options that contradict them are refused)")
    p.add_argument("--json", action="store_true", help="print result.json")
    p.set_defaults(func=cmd_search)
    return p


def _list(text: str | None, kind, flag: str) -> list | None:
    """``"5,11,17"`` -> [5, 11, 17]; a bad list is one clear error."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise HwcostError(f"{flag} {text!r}: write comma-separated {'integers' if kind is int else 'numbers'}, "
                          f"e.g. {'5,11,17' if kind is int else '0.1,0.4,0.7'}") from None


# Options that set a SearchConfig field of the same name (the others: _given_settings).
_SETTINGS = ("space", "strategy", "data", "network", "surrogate", "cost_mode", "budget_floor", "confidence",
             "epochs",
             "steps_per_epoch", "batch_size", "C", "layers", "partial_k", "max_w", "seed", "threads", "lr_schedule",
             "lr_power", "weight_lr", "arch_lr", "warmup_epochs", "max_skips", "share_weights", "bottleneck",
             "derived_cells")


def _given_settings(args) -> dict:
    """The SearchConfig fields the command line set explicitly (every option defaults to None, so an
    option left out is absent here and SearchConfig's default -- or, on --resume, the run's -- holds)."""
    given = {f: getattr(args, f) for f in _SETTINGS if getattr(args, f) is not None}
    from search.costs import table_fields
    given.update(table_fields(args.table))
    for flag, field in (("budget", "budgets"), ("penalty", "penalties")):
        if getattr(args, flag) is not None:
            given[field] = getattr(args, flag)
    for flag, kind in (("stages", int), ("stage_ops", int), ("skip_dropout", float)):
        if getattr(args, flag) is not None:
            given[flag] = _list(getattr(args, flag), kind, "--" + flag.replace("_", "-"))
    if args.plain:
        given["fast"] = False
    return given


def cmd_search(args) -> int:
    from search.run import SearchConfig, resume_config, run_search
    given = _given_settings(args)
    cfg = resume_config(args.out, given) if args.resume else SearchConfig(**given)
    from search import distributed as D

    from .verify import DEFAULT_FINETUNE, DEFAULT_ROUNDS, check_verifiable, verify_default
    verify, why = args.verify, ""
    tuning = [f for f, v in (("--verify-rounds", args.verify_rounds), ("--verify-finetune", args.verify_finetune))
              if v is not None]
    if args.verify_finetune is not None and args.verify_finetune < 0:
        raise HwcostError(f"--verify-finetune must be a non-negative number of steps, got {args.verify_finetune}")
    if cfg.devices:
        if tuning:
            raise HwcostError(f"{tuning[0]} re-derives for one device's table; with several devices the derived "
                              "network is measured on each device profiled here, without re-deriving")
    elif verify:
        check_verifiable(cfg.table)            # before training: one error if this machine cannot verify
    elif verify is None:
        verify, why = verify_default(cfg.table)
    if tuning and not verify:
        raise HwcostError(f"{tuning[0]} goes with --verify (the table must be profiled on this machine)")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        r = run_search(cfg, args.out, resume=args.resume, progress=not args.json)
        main = D.is_main()
    finally:
        D.shutdown()
    if not main:
        return 0
    if (r.get("latency_basis") or "").startswith("uncalibrated"):
        log(f"note: the latency budget is on the {r['latency_basis']}")
    from .verify import price_by_nodes
    r = price_by_nodes(cfg, args.out, r, log=log)       # a space node table: the network's own nodes
    if cfg.devices and verify is not False:
        from .verify import measure_devices
        r = measure_devices(cfg, args.out, r, log=log)
    elif verify and "latency_ms" in r["derived"]:
        from .verify import verify_search
        rounds = DEFAULT_ROUNDS if args.verify_rounds is None else args.verify_rounds
        log(f"verify: measuring the derived network on the backend of {r.get('table')} ({rounds} re-derivations "
            f"at most)")
        r = verify_search(cfg, args.out, r, rounds, log=log,
                          finetune=DEFAULT_FINETUNE if args.verify_finetune is None else args.verify_finetune)
    elif args.verify is None and cfg.table is not None and not args.json:
        print(f"(not verified on this machine: {why.replace('RUN', str(args.out))})")
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"derived {'arch' if 'arch' in r else 'genotype'}: {r.get('arch', r.get('genotype'))}")
    given = r.get("budgets_given") or {}
    margins = (r.get("confidence") or {}) if r.get("devices") else {"latency_ms": r.get("confidence")}
    for m, b in r["budgets"].items():
        v = r["derived"].get(m)
        aim = (f", aimed at {b:.6g} for {margins[m]['confidence']:.0%} confidence on the device"
               if (margins.get(m) or {}).get("confidence") and given.get(m, b) != b else "")
        print(f"  {m}: {v:.6g} (budget {given.get(m, b):.6g}{aim}, "
              f"{'met' if r['within_budget'][m] else 'NOT met'})")
    if r.get("verify"):
        last = r["verify"]["rounds"][-1]
        print(f"  measured on this machine: {last['measured_ms']:.6g} ms after {r['verify']['rounds_used']} "
              f"re-derivation(s): {'inside' if r['verify']['met'] else 'OUTSIDE'} [floor, budget]")
    for name, d in (r.get("measured") or {}).items():
        if d["measured_ms"] is None:
            print(f"  {name}: not measured here ({d['not_measured']}); its table's figure stands")
        else:
            band = "" if d["in_band"] is None else f": {'inside' if d['in_band'] else 'OUTSIDE'} [floor, budget]"
            print(f"  {name}: measured on this machine {d['measured_ms']:.6g} ms (predicted {d['predicted_ms']:.6g})"
                  f"{band}")
    for m in ("latency_ms", *(f"latency_ms@{d}" for d in r.get("devices", {})), "params", "macs"):
        if m in r["derived"] and m not in r["budgets"]:
            print(f"  {m}: {r['derived'][m]:.6g}")
    print(f"run directory: {args.out} (result.json, log.jsonl, alphas.png, costs.png)")
    return 0
