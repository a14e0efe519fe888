"""``hwcost calibrate``: fit a table's in-context model on whole networks measured on its device.

    hwcost calibrate TABLE [--networks 10] [--seed 0] [--network cifar10] [--out T2.json]
    hwcost calibrate LAYER_TABLE --models torchvision:resnet18,torchvision:mobilenet_v2,... [--out T2.json]

Measures ``--networks`` networks the table can price (random derived networks
of its space, or other models for a model's layer table) on the table's
backend and settings, fits how the sum of their isolated ops becomes their
measured time (``costmodels.incontext``), reports the leave-one-out error and
writes the model, networks, residuals and date into the table (in place
unless ``--out``). ``predict``, ``search``, ``sweep`` and ``demo`` then use it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from device_tables.errors import HwcostError


def add_calibrate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="measure whole networks on a table's device and fit its in-context "
                                         "latency model (prediction intervals, budgets that hold)")
    p.add_argument("table", help="op-level device table profiled on this machine (a path)")
    p.add_argument("--networks", type=int, default=10, help="networks to measure (default 10, at least 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random calibration networks")
    p.add_argument("--skew", type=float, default=None, metavar="A",
                   help="draw each cell's ops from its own Dirichlet(A) mix (0.5: cells of mostly one or two ops, "
                        "as searches derive) instead of uniformly; with op keys this calibrates the networks a "
                        "search derives better (benchmarks/searched_keys.py)")
    p.add_argument("--network", default=None, help="network preset of a space table (default: the table's "
                                                   "deployed network, cifar10)")
    p.add_argument("--models", default=None, help="comma-separated models for a layer table "
                                                  "(default: torchvision models other than the table's)")
    p.add_argument("--backend", default=None, help="refuse unless the table was profiled on this backend")
    p.add_argument("--max-time", type=float, default=3.0, help="seconds of measurement per network "
                                                               "(split over 10 interleaved rounds)")
    p.add_argument("--out", default=None, help="write the calibrated table here (default: in place)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)
    return p


def cmd_calibrate(args) -> int:
    from device_tables import load_table
    from .calibrate import calibrate, network_settings
    from costmodels.incontext import ops_ms
    if args.max_time <= 0:
        raise HwcostError(f"--max-time must be positive, got {args.max_time}")
    table = load_table(args.table)
    out = args.out or args.table
    models = [m for m in args.models.split(",") if m] if args.models else None
    t0 = time.perf_counter()
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    if args.skew is not None and not (args.skew > 0):
        raise HwcostError(f"--skew must be a positive Dirichlet concentration (e.g. 0.5), got {args.skew}")
    if args.skew is not None and (models or table.spaces == ["torch"] or
                                  (table.spaces == ["onnx"] and not table.provenance.get("space"))):
        raise HwcostError("--skew draws random networks of a search space; a model's table is calibrated on "
                          "other models")
    table, model = calibrate(table, out, n=args.networks, seed=args.seed, network=args.network, models=models,
                             backend=args.backend, settings=network_settings(args.max_time), log=log,
                             skew=args.skew)
    s = model.summary()
    if args.json:
        print(json.dumps({**s, "table": str(out), "seconds": time.perf_counter() - t0,
                          "networks_measured": [n.to_json() for n in model.samples]}, indent=1))
        return 0
    print(f"{'network':<40} {'measured':>9} {'sum of ops':>10} {'fit':>8} {'held out':>9}")
    for smp, fit, loo in zip(model.samples, model.fit_ms, model.loo_ms):
        raw = ops_ms(smp.features) - max(smp.n_ops - 1, 0) * model.per_call_ms
        print(f"{smp.name[:40]:<40} {smp.measured_ms:7.3f}ms {raw:8.3f}ms {fit:6.3f}ms {loo:7.3f}ms")
    print(f"leave-one-out error over {s['networks']} networks: MAPE {s['loo_mape']:.1%}, within 5% "
          f"{s['loo_within_5']:.0%}, within 10% {s['loo_within_10']:.0%}; mean {s['loo_mean']:+.1%}, "
          f"sd {s['loo_std']:.1%}")
    print("in-context factors: " + ", ".join(f"{g} {f:.3f}" for g, f in s["factors"].items())
          + f"; per op {s['per_op_us']:+.2f} us; shrinkage lambda {s['lambda']:g}")
    ref = model.reference_ms
    if ref:
        print(f"host reference kernel (3x3 conv, 64 ch, 32x32) timed beside them: {ref * 1e3:.1f} us "
              f"(search --verify compares its own with it)"
              + (f"; they were measured {model.phase:.2f}x slower and scaled back to the table's quiet phase"
                 if model.phase else ""))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0
