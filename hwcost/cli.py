"""The ``hwcost`` command: one subcommand per job, each a thin layer over a function.

Bad input ends in one line on stderr and exit code 2, never a traceback
(set HWCOST_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _user_errors() -> tuple[type, ...]:
    from device_tables.errors import USER_ERRORS
    return USER_ERRORS


def _fmt_m(v: float) -> str:
    return f"{v / 1e6:.3f} M"


def _print_rows(rows) -> None:
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def _print_onnx_costs(d: dict) -> None:
    _print_rows([("model", f"{d['model']} ({d['nodes']} nodes)"), ("input", "x".join(map(str, d["input_shape"]))),
                 ("params", _fmt_m(d["params"])),
                 (f"MACs ({', '.join(o for o in d['mac_ops'] if not o.startswith('Fused'))})", _fmt_m(d["macs"])),
                 ("activations written", f"{d['activation_bytes'] / 2**20:.2f} MiB"),
                 ("model size", f"{d['model_bytes'] / 2**20:.2f} MiB")])


def _print_costs(d: dict) -> None:
    rows = [("network", " ".join(str(d[k]) for k in ("model", "space", "genotype", "arch", "network") if k in d)),
            ("input", "x".join(map(str, d["input_shape"]))),
            ("params", _fmt_m(d["params"])),
            ("params (with aux head)", _fmt_m(d["params_with_aux"])),
            ("MACs (conv + linear)", _fmt_m(d["macs"])),
            ("MACs (+ BN, pooling)", _fmt_m(d["macs_with_bn"])),
            ("activations written", f"{d['activation_bytes'] / 2**20:.2f} MiB"),
            ("model size", f"{d['model_bytes'] / 2**20:.2f} MiB")]
    _print_rows(rows)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="darts", help="darts | sharpdarts | nb201 (default darts)")
    p.add_argument("--genotype", help="built-in name (e.g. DARTS_V2) or a genotype file (JSON or Genotype(...) literal)")
    p.add_argument("--arch", help="NB201 architecture string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    p.add_argument("--network", default="cifar10", help="cifar10 (C=36, 20 cells) | imagenet (C=48, 14 cells)")
    p.add_argument("--model", help="instead of a genotype: torchvision:NAME, timm:NAME, package.module:factory "
                                    "(with --input), or NET.onnx (cost only)")
    p.add_argument("--input", help="input shape of --model, e.g. 1x3x224x224 (an ONNX model: only to fix "
                                    "dynamic dims)")


def _model_or_target(args) -> bool:
    """Whether --model names the network (else --space/--genotype/--arch/--network do)."""
    from spaces.errors import HwcostError
    if args.model is None:
        if args.input is not None:
            raise HwcostError("--input goes with --model; a genotype's input comes from --network")
        return False
    if args.genotype is not None or args.arch is not None:
        raise HwcostError("give either --model or --genotype/--arch, not both")
    return True


def cmd_cost(args) -> int:
    from .api import cost, model_cost
    d = model_cost(args.model, args.input) if _model_or_target(args) else cost(args.space, args.genotype, args.arch,
                                                                                 args.network)
    if args.json:
        print(json.dumps(d, indent=1))
    elif "mac_ops" in d:
        _print_onnx_costs(d)
    else:
        _print_costs(d)
    return 0


def cmd_export(args) -> int:
    from .api import export, model_export
    if _model_or_target(args):
        d = model_export(args.onnx, args.model, args.input, atol=args.atol)
    else:
        d = export(args.onnx, args.space, args.genotype, args.arch, args.network, atol=args.atol)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        print(f"wrote {d['onnx']} ({d['nodes']} nodes, opset {d['opset']}); onnx.checker: ok; "
              f"max abs diff vs PyTorch on ONNX Runtime CPU: {d['max_abs_diff']:.2e}")
    return 0


def cmd_spaces(args) -> int:
    from .api import list_spaces_info
    info = list_spaces_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for s in info:
        print(f"{s['space']}: {s['description']}")
        print(f"  searchable: {', '.join(s['searchable'])}")
        print(f"  fixed parts: {', '.join(s['fixed'])}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(out_dir=args.out, epochs=args.epochs, budget_quantile=args.budget_quantile, seed=args.seed)


def cmd_host(args) -> int:
    from profilers.host import check_host
    check = check_host(args.seconds, args.window)
    if args.json:
        print(json.dumps(check.to_dict(), indent=1))
    else:
        print("\n".join(check.lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwcost", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cost", help="analytical costs of a network (params, MACs, memory, size)")
    _add_target_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("export", help="export a network to ONNX and check it against PyTorch")
    _add_target_args(p)
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--atol", type=float, default=1e-4, help="fail if ORT differs from PyTorch by more")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("spaces", help="list spaces and their ops")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("demo", help="the main job on embedded defaults")
    p.add_argument("--out", default="out/demo", help="directory for the demo's files (its table is reused)")
    p.add_argument("--epochs", type=int, default=8, help="search epochs (default 8)")
    p.add_argument("--budget-quantile", type=float, default=0.3,
                   help="latency budget = this quantile of random networks' predicted latency (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("host", help="is this machine quiet enough to measure on? (the reference kernel timed in "
                                    "short windows: their spread, and whether slow phases are steal or contention)")
    p.add_argument("--seconds", type=float, default=12.0, help="how long to watch (default 12)")
    p.add_argument("--window", type=float, default=0.25, help="seconds per window (default 0.25)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host)

    from .cmd_bundle import add_bundle_parsers
    from .cmd_calibrate import add_calibrate_parser
    from .cmd_fit import add_fit_parser
    from .cmd_predict import add_predict_parser
    from .cmd_profile import add_profile_parsers
    from .cmd_search import add_search_parser
    from .cmd_sweep import add_sweep_parser
    from .cmd_table import add_table_parser
    from .cmd_train import add_train_parser
    from .cmd_verify import add_verify_parser
    add_profile_parsers(sub)
    add_table_parser(sub)
    add_bundle_parsers(sub)
    add_predict_parser(sub)
    add_calibrate_parser(sub)
    add_fit_parser(sub)
    add_search_parser(sub)
    add_verify_parser(sub)
    add_sweep_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        if os.environ.get("HWCOST_DEBUG"):
            raise
        print(f"hwcost: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwcost: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
