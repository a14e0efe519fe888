"""``hwcost fit TABLE --out S.json``: fit a latency surrogate to a device table.

An architecture-level table (NB201 latencies of a Pi, a phone ...) gets an
architecture surrogate fitted on ``--samples`` random architectures and scored
(Spearman rho, Kendall tau) on all the others. An op-level table gets one
regressor per op type, scored on held-out keys (MAPE, share within 5/10%).
"""
from __future__ import annotations

import argparse
import json

from device_tables.errors import HwcostError


def add_fit_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("fit", help="fit a latency surrogate to a device table and report held-out accuracy")
    p.add_argument("table", metavar="TABLE", help="a table path or a bundled name (e.g. raspi4)")
    p.add_argument("--out", required=True, help="surrogate file (JSON; loads without executing code)")
    p.add_argument("--samples", type=int, help="architecture-level: architectures to fit on (default: 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit)
    return p


def cmd_fit(args) -> int:
    from device_tables import bundled_table_path, load_table
    table = load_table(bundled_table_path(args.table))
    if table.kind == "arch":
        report = fit_arch_table(table, args.samples or 50, args.seed, args.out)
    else:
        if args.samples is not None:
            raise HwcostError("--samples is for architecture-level tables; an op-level table fits on all its keys "
                              "with a held-out split")
        from costmodels.surrogate import fit_op_table
        report = fit_op_table(table, args.out, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in report.items():
            print(f"{k:<14} {v:.4f}" if isinstance(v, float) else f"{k:<14} {v}")
    return 0


def fit_arch_table(table, samples: int, seed: int, out: str) -> dict:
    from costmodels.arch_surrogate import fit_holdout
    if "nb201" not in table.spaces:
        raise HwcostError(f"architecture surrogates exist for nb201 tables; this table holds {table.spaces}")
    keys = table.keys()
    if not 2 <= samples < len(keys):
        raise HwcostError(f"--samples must be between 2 and {len(keys) - 1} for a table of {len(keys)} architectures")
    archs = [k.arch for k in keys]
    lat = [table.get(k).median_ms for k in keys]
    prov = {"table": str(table.source), "device": table.device.get("name"), "kind": table.kind}
    est, scores = fit_holdout(archs, lat, samples, seed, table=prov)
    est.save(out)
    return {"surrogate": out, "device": table.device.get("name"), **scores}
