"""``hwcost predict``: the latency of a network on a device, from its device table.

    hwcost predict --table T [--surrogate S] --genotype G [--space darts] --network cifar10 [--json]
    hwcost predict --table T [--surrogate S] --space nb201 --arch '|op~0|+|...|' [--json]
    hwcost predict --table T [--surrogate S] --model torchvision:NAME --input 1x3x224x224 [--json]
    hwcost predict --table T --model NET.onnx [--input 1x3x224x224] [--json]
    hwcost predict --surrogate S --archs FILE [--json]

An op-level table prices a network as the sum of its ops (the table, else the
op surrogate, else an error naming the missing keys) minus the per-call
overhead isolation adds (``costmodels.predict``). An architecture-level table
(NB201 on a Pi, a phone) answers ``--arch`` by lookup; ``--archs`` predicts a
file of NB201 architectures with an architecture surrogate
(``hwcost fit raspi4 --out S.json``).

Wire into the CLI with ``add_predict_parser(sub)``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from device_tables.errors import HwcostError


def add_predict_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predicted latency of a network (sum of its ops in a device table) "
                                       "or of NB201 architectures (architecture surrogate)")
    p.add_argument("--table", help="device table: a path or a bundled name")
    p.add_argument("--surrogate", help="op surrogate for keys the table lacks (hwcost fit TABLE --out S.json); "
                                       "with --archs, an architecture surrogate")
    p.add_argument("--space", default=None, help="darts | sharpdarts | nb201 (default darts)")
    p.add_argument("--genotype", help="built-in name (e.g. DARTS_V2) or a genotype file")
    p.add_argument("--arch", help="NB201 architecture string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    p.add_argument("--network", default=None, help="cifar10 (C=36, 20 cells) | imagenet (default cifar10)")
    p.add_argument("--model", help="torchvision:NAME, timm:NAME or package.module:factory (its layers must be "
                                    "in the table: hwcost profile --model), or NET.onnx (its nodes, in a table "
                                    "of hwcost profile --model NET.onnx)")
    p.add_argument("--input", help="input shape of --model, e.g. 1x3x224x224")
    p.add_argument("--archs", metavar="FILE", help="one NB201 architecture string per line (with an "
                                                   "architecture --surrogate)")
    p.add_argument("--backend", help="refuse a table measured on another backend (e.g. ort-cpu)")
    p.add_argument("--confidence", type=float, default=None,
                   help="level of the prediction interval of a calibrated table (default 0.9)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    if args.archs is not None:
        out = predict_arch_file(args)
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            for row in out:
                print(f"{row['latency_ms']:10.3f} ms  {row['arch']}")
        return 0
    d = predict_op_level(args)
    if args.json:
        print(json.dumps(d, indent=1))
    elif d.get("n_ops") is None:
        print(f"{d['latency_ms']:.3f} ms for {d['network']} on {d['device']}: the table's measured entry")
    else:
        print(f"{d['latency_ms']:.3f} ms predicted for {d['network']} on {d['device']} ({d['backend']}): "
              f"{d['n_ops']} ops, {d['from_table']} from the table, {d['from_surrogate']} from the surrogate"
              + (f", {d['fused_ops']} fused away" if d.get("fused_ops") else "")
              + (f", {d['merged_ops']} more its ONNX graph runs once (the same parameter-free op on the same "
                 f"tensor)" if d.get("merged_ops") else "")
              + (f"; {d['overhead_removed_ms']:.3f} ms of per-call overhead removed"
                 if d.get("overhead_removed_ms") else ""))
        if d.get("calibrated"):
            print(f"  {d['confidence']:.0%} interval {d['low_ms']:.3f} - {d['high_ms']:.3f} ms; sum of isolated ops "
                  f"{d['uncalibrated_ms']:.3f} ms; {d['calibration']}")
        else:
            print(f"  uncalibrated: {d['calibration']}")
        if d.get("subnormal_ops"):
            print(f"  {d['subnormal_ops']} ops are fed subnormal floats in this network ({d['subnormal_ms']:.3f} ms "
                  f"of the sum of ops, timed on the network's own values): flush-to-zero (FTZ/DAZ) on the device "
                  f"would save most of it")
        if d.get("calibration_warning"):
            print(f"  warning: {d['calibration_warning']}")
        if d.get("host_warning"):
            print(f"  warning: {d['host_warning']}")
    return 0


def _refuse(args, names: tuple[str, ...], why: str) -> None:
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if given:
        raise HwcostError(f"{', '.join(given)} cannot be used {why}")


def read_arch_file(path: str | Path) -> list[str]:
    """Canonical NB201 strings, one per non-blank line ('#' starts a comment line)."""
    from spaces import Nb201Arch
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HwcostError(f"cannot read architecture file {path}: {getattr(e, 'strerror', None) or e}") from None
    archs = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            archs.append(Nb201Arch.parse(text).to_str())
        except HwcostError as e:
            raise HwcostError(f"{path} line {number}: {e}") from None
    if not archs:
        raise HwcostError(f"{path} holds no architecture; write one NB201 string per line")
    return archs


def predict_arch_file(args) -> list[dict]:
    from costmodels.arch_surrogate import ArchLatencySurrogate
    _refuse(args, ("table", "genotype", "arch", "model", "input", "network", "backend"),
            "with --archs (it takes an architecture --surrogate only)")
    if args.space not in (None, "nb201"):
        raise HwcostError(f"--archs holds NB201 architectures; --space {args.space} does not apply")
    if args.surrogate is None:
        raise HwcostError("--archs needs --surrogate S.json, an architecture surrogate "
                          "(hwcost fit raspi4 --out S.json)")
    archs = read_arch_file(args.archs)
    est = ArchLatencySurrogate.load(args.surrogate)
    return [{"arch": a, "latency_ms": float(v)} for a, v in zip(archs, est.predict(archs))]


def predict_op_level(args) -> dict:
    from costmodels.predict import check_table_for, predict_network
    from device_tables import bundled_table_path, load_table
    if args.table is None:
        raise HwcostError("give --table T (a device table), or --surrogate S --archs FILE")
    targets = [n for n in ("genotype", "arch", "model") if getattr(args, n) is not None]
    if len(targets) != 1:
        raise HwcostError("give one network: --genotype G, --space nb201 --arch A, or --model torchvision:NAME|timm:NAME|pkg.module:factory "
                          "--input 1x3x224x224")
    table = load_table(bundled_table_path(args.table))
    info = {"device": table.device.get("name"), "backend": table.runtime.get("backend"),
            "table": str(table.source)}
    if args.confidence is not None:
        from costmodels.incontext import check_confidence
        check_confidence(args.confidence)
        if table.calibration is None:
            raise HwcostError(f"--confidence needs a calibrated table; {table.source} has no in-context model "
                              f"(hwcost calibrate {table.source})")
    if table.kind == "op" and table.runtime.get("backend") in ("ort-cpu", "torch-cpu"):   # CPU tables only
        from profilers.environment import same_host
        same, why = same_host(table.device)
        if not same:
            info["host_warning"] = (f"{why}: predictions are for that CPU, not this one")
    if args.model is not None:
        from profilers.shapes import parse_input_shape, resolve_model
        from spaces.onnx_graph import is_onnx_spec
        _refuse(args, ("space", "network"), "with --model (its shape comes from --input)")
        if is_onnx_spec(args.model):
            return _predict_onnx(args, table, info)
        if args.input is None:
            raise HwcostError("--model needs --input, e.g. --input 1x3x224x224")
        shape = parse_input_shape(args.input)
        if table.spaces == ["onnx"]:
            return _predict_exported(args, table, info, lambda: resolve_model(args.model), shape, args.model)
        check_table_for(table, "torch", args.backend)   # before building the model: fail fast
        model, description = resolve_model(args.model), args.model
    else:
        _refuse(args, ("input",), "with --genotype/--arch (the input comes from --network)")
        from .api import resolve_target
        space = args.space or ("nb201" if args.arch is not None else "darts")
        if table.kind == "arch":
            return _arch_lookup(table, space, args, info)
        nodes = table.spaces == ["onnx"]   # a node table: the network exported, priced by the nodes ORT runs
        check_table_for(table, "onnx" if nodes else space, args.backend)
        target = resolve_target(space, args.genotype, args.arch, args.network or "cifar10")
        model, shape = target.model, target.input_shape
        description = " ".join(str(target.description[k]) for k in ("space", "genotype", "arch", "network")
                               if k in target.description)
        if nodes:
            return _predict_exported(args, table, info, model.eval, shape, description)
    p = predict_network(model, shape, table, _load_surrogate(args, table), backend=args.backend,
                        confidence=args.confidence)
    return {**p.to_dict(), "network": description, "input_shape": list(shape), **info}


def _load_surrogate(args, table):
    if args.surrogate is None:
        return None
    from costmodels.surrogate import load_surrogate
    return load_surrogate(args.surrogate, table=table)


def _predict_exported(args, table, info: dict, build, shape, description: str) -> dict:
    """A node table (``hwcost profile --model NET.onnx`` or ``--space S --keys nodes``): the network
    ``build()`` makes exported to ONNX and priced by the nodes ONNX Runtime runs for it."""
    from costmodels.predict import check_table_for
    from profilers.export import export_graph
    check_table_for(table, "onnx", args.backend)   # before building and exporting: fail fast
    graph = export_graph(build(), tuple(shape), description)
    return {**_predict_onnx(args, table, info, graph), "network": description, "keys": "nodes"}


def _predict_onnx(args, table, info: dict, graph=None) -> dict:
    """An ONNX model (``graph``, else the file ``--model``): its nodes as ONNX Runtime optimises them at the
    table's level, each priced by its key."""
    from costmodels.predict import check_table_for, predict_onnx
    from profilers.shapes import resolve_source
    check_table_for(table, "onnx", args.backend)   # before reading the model: fail fast
    if graph is None:
        graph, _ = resolve_source(args.model, args.input)
    shape = graph.input_shape
    p = predict_onnx(graph, table, _load_surrogate(args, table), backend=args.backend, confidence=args.confidence)
    return {**p.to_dict(), "network": args.model, "input_shape": list(shape), **info}


def _arch_lookup(table, space: str, args, info: dict) -> dict:
    """An architecture-level table answers an NB201 architecture by its measured entry."""
    from device_tables import ArchKey
    from spaces import Nb201Arch
    if space != "nb201" or args.arch is None or space not in table.spaces:
        raise HwcostError(f"table {table.source} is an architecture-level table of {', '.join(table.spaces)}; it "
                          f"answers --space nb201 --arch A, not this network (give an op-level table)")
    if args.surrogate is not None:
        raise HwcostError("an architecture-level table answers --arch by lookup; use --surrogate S --archs FILE to "
                          "predict architectures with an architecture surrogate")
    if args.backend is not None and table.runtime.get("backend") != args.backend:
        raise HwcostError(f"table {table.source} was measured on backend {table.runtime.get('backend')}, "
                          f"not {args.backend}")
    arch = Nb201Arch.parse(args.arch).to_str()
    entry = table.get(ArchKey("nb201", arch, args.network or "cifar10"))
    if entry is None:
        from device_tables import MissingKeyError
        raise MissingKeyError(f"table {table.source} has no entry for {arch}; predict it with an architecture "
                              f"surrogate (hwcost fit {table.source} --out S.json; hwcost predict --surrogate "
                              f"S.json --archs FILE)")
    return {"latency_ms": entry.median_ms, "from_table": 1, "from_surrogate": 0, "network": f"nb201 {arch}",
            "n_ops": None, **info}
