"""``hwcost profile`` and ``hwcost measure``: thin layers over :mod:`profilers`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from device_tables.errors import HwcostError

DEFAULT_NETWORKS = {"darts": "cifar10-search,cifar10", "sharpdarts": "cifar10-search,cifar10", "nb201": "nb201"}


def _add_backend_args(p: argparse.ArgumentParser, max_time: float, backend: str | None = "ort-cpu") -> None:
    p.add_argument("--backend", default=backend,
                   help="torch-cpu | torch-cuda | ort-cpu | ort:<ExecutionProvider> (default ort-cpu)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, fixed and recorded (default 1)")
    p.add_argument("--rel-ci", type=float, default=0.02,
                   help="stop when the median's 95%% CI half-width is below this fraction (default 0.02)")
    p.add_argument("--max-time", type=float, default=max_time,
                   help=f"time cap per key in seconds, over all passes (default {max_time:g})")
    p.add_argument("--passes", type=int, default=10,
                   help="measure in this many windows (a profile: interleaved passes over all keys) and keep "
                        "each key's quietest; 1 = a single window with retries of noisy ones (default 10)")


def _settings(args):
    from profilers.measure import Settings
    return Settings(rel_ci=args.rel_ci, max_time_s=args.max_time, passes=args.passes)


def _model_and_shape(args) -> tuple:
    """(a PyTorch model or an ONNX graph, input shape) of --model/--input."""
    from profilers.shapes import resolve_source
    return resolve_source(args.model, args.input)


def _is_onnx(model) -> bool:
    from spaces.onnx_graph import OnnxGraph
    return isinstance(model, OnnxGraph)


def _check_onnx_backend(args, model) -> None:
    if _is_onnx(model) and not str(args.backend).startswith("ort"):
        raise HwcostError(f"an ONNX model ({args.model}) runs on ONNX Runtime: --backend ort-cpu or "
                          f"ort:<ExecutionProvider>, not {args.backend}")


def _require_ort(args, what: str) -> None:
    """``--keys nodes`` keys ``what`` by the nodes ONNX Runtime runs: an ort backend only."""
    if not str(args.backend).startswith("ort"):
        raise HwcostError(f"--keys nodes keys {what} by the nodes ONNX Runtime runs: give an ort backend "
                          f"(--backend ort-cpu), not {args.backend}")


def cmd_profile(args) -> int:
    from profilers.backends import get_backend
    from profilers.profile import ProfileInterrupted, check_out_path, model_jobs, profile, space_jobs, summarize
    if (args.space is None) == (args.model is None):
        raise HwcostError("give either --space (profile a search space) or --model torchvision:NAME")
    if args.model is None and args.input is not None:
        raise HwcostError("--input goes with --model; a space's shapes come from --networks")
    if args.model is None and args.keys == "layers":
        raise HwcostError("--keys layers goes with --model; a space's keys are its ops (or, with --keys nodes, "
                          "the nodes ONNX Runtime runs for its networks)")
    if args.random is not None and not (args.space is not None and args.keys == "nodes"):
        raise HwcostError("--random N goes with --space S --keys nodes (the random networks whose nodes to key)")
    check_out_path(args.out, args.resume)  # fail before any slow work
    if args.context == "sequence":
        from profilers.backends import sequence_refused, times_sequences
        if not times_sequences(args.backend):   # before the model is loaded and keyed
            raise HwcostError(sequence_refused(args.backend))
    settings = _settings(args)
    if args.space is not None and args.keys == "nodes":
        backend, jobs, provenance = _space_node_jobs(args)
        spaces = ["onnx"]
    elif args.space is not None:
        from spaces import get_space
        get_space(args.space)
        networks = args.networks or DEFAULT_NETWORKS.get(args.space, "")
        batch = args.batch or 1
        backend = get_backend(args.backend, threads=args.threads, batch=batch)
        jobs = space_jobs(args.space, networks, batch)
        spaces = [args.space]
        provenance = {"space": args.space, "networks": networks.split(",")}
    else:
        if args.networks:
            raise HwcostError("--networks goes with --space; a model's shapes come from --input")
        model, shape = _model_and_shape(args)
        if args.keys == "nodes" and not _is_onnx(model):
            _require_ort(args, "a model")
            from profilers.export import export_graph
            model = export_graph(model, shape, args.model)
        elif args.keys == "layers" and _is_onnx(model):
            raise HwcostError(f"{args.model} is an ONNX graph: it has nodes, not PyTorch layers (leave out --keys)")
        _check_onnx_backend(args, model)
        if args.batch is not None and args.batch != shape[0]:
            raise HwcostError(f"--batch {args.batch} differs from the batch of the model's input "
                              f"{'x'.join(map(str, shape))}")
        backend = get_backend(args.backend, threads=args.threads, batch=shape[0])
        if _is_onnx(model):
            from profilers.profile import onnx_jobs
            level = backend.graph_optimization
            jobs = onnx_jobs(model, level, backend.session_providers())
            spaces = ["onnx"]
            provenance = {"model": args.model, "input": list(shape), "graph_optimization": level,
                          "nodes": sum(j.extra["count"] for j in jobs)}
        else:
            jobs = model_jobs(model, shape)
            spaces = ["torch"]
            provenance = {"model": args.model, "input": list(shape),
                          "layers": sum(j.extra["count"] for j in jobs)}
    if args.stream_mib is not None and args.stream_mib < 0:
        raise HwcostError(f"--stream-mib must be >= 0 (0: no weight-stream probe), got {args.stream_mib}")
    t0 = time.perf_counter()
    try:
        table = profile(jobs, backend, args.out, spaces=spaces, settings=settings, resume=args.resume,
                        device_name=args.device_name, provenance=provenance,
                        stream_bytes=None if args.stream_mib is None else args.stream_mib << 20,
                        progress=False if args.no_progress else None, context=args.context,
                        announce=lambda line: print(line, file=sys.stderr))
    except ProfileInterrupted as e:
        print(f"hwcost: {e}", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {len(table)} entries ({summarize(table)}) in {time.perf_counter() - t0:.0f} s")
    ref = table.measurement.get("host_reference")
    if isinstance(ref, dict) and ref.get("quiet") is False:
        print(f"note: the host's reference kernel moved {ref['spread'] - 1:+.0%} between the passes: the host was "
              f"not in one quiet phase while profiling (hwcost table show {args.out})")
    return 0


def _space_node_jobs(args):
    """(backend, jobs, provenance) of ``--space S --keys nodes`` (:func:`hwcost.pipeline.space_node_jobs`)."""
    from profilers.backends import get_backend

    from .pipeline import DEFAULT_RANDOM, space_node_jobs
    _require_ort(args, "networks")
    names = [n for n in (args.networks or "").split(",") if n]
    if len(names) > 1:
        raise HwcostError(f"--space {args.space} --keys nodes keys one deployed network, got --networks {args.networks}")
    if args.batch not in (None, 1):
        raise HwcostError("--space S --keys nodes keys batch-1 networks; leave out --batch")
    n = DEFAULT_RANDOM if args.random is None else args.random
    backend = get_backend(args.backend, threads=args.threads, batch=1)
    jobs, provenance = space_node_jobs(args.space, names[0] if names else None, n, args.seed, backend,
                                       progress=not args.no_progress)
    return backend, jobs, provenance


def cmd_measure(args) -> int:
    from profilers.backends import get_backend
    from profilers.profile import measure_model
    settings = _settings(args)
    beside = _beside_table(args) if args.beside else None
    args.backend = args.backend or "ort-cpu"
    if args.model is not None:
        if args.genotype or args.arch:
            raise HwcostError("give either --model or --genotype/--arch, not both")
        model, shape = _model_and_shape(args)
        _check_onnx_backend(args, model)
        if args.batch is not None and args.batch != shape[0]:
            raise HwcostError(f"--batch {args.batch} differs from the batch of the model's input "
                              f"{'x'.join(map(str, shape))}")
        description = {"model": args.model}
    else:
        if args.input is not None:
            raise HwcostError("--input goes with --model; a genotype's input comes from --network")
        from .api import resolve_target
        target = resolve_target(args.space or "darts", args.genotype, args.arch, args.network or "cifar10",
                                batch=args.batch or 1)
        model, shape, description = target.model, target.input_shape, target.description
    if beside is not None:
        return _measure_beside(args, *beside, model, shape, description)
    backend = get_backend(args.backend, threads=args.threads, batch=shape[0])
    m = measure_model(model, shape, backend, settings)
    d = {**m.summary(), **description, "input_shape": list(shape), "backend": backend.name,
         "threads": backend.threads}
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        print(f"{d['latency_ms']:.3f} ms median (p10 {d['p10_ms']:.3f}, p90 {d['p90_ms']:.3f}; "
              f"{d['n']} samples of {d['runs_per_sample']} run(s); {d['quality']}) on {backend.name}, "
              f"{backend.threads} thread(s), input {'x'.join(map(str, shape))}")
        note = m.phases_note()
        if note:
            print(f"  note: {note}")
    return 0


def _beside_table(args) -> tuple:
    """(table, its backend): the calibrated table of ``--beside``, checked: calibration networks to run beside, its
    backend (``--backend``, if given, must be it) and this machine."""
    from device_tables import load_table
    from hwcost.calibrate import table_backend
    from hwcost.verify import candle_samples
    table = load_table(args.beside)
    name = table.runtime.get("backend")
    if args.backend is not None and args.backend != name:
        raise HwcostError(f"--beside {args.beside}: the table was profiled on {name}, and a network is measured "
                          f"beside its calibration networks on the same backend: give --backend {name} or none")
    if not candle_samples(table):
        raise HwcostError(f"--beside {args.beside}: the table has no calibration networks to measure beside "
                          f"(run `hwcost calibrate {args.beside}` first)")
    try:
        backend = table_backend(table)
    except HwcostError as e:
        raise HwcostError(f"--beside {args.beside}: its calibration networks were measured on another machine or "
                          f"backend, so they say nothing of this host's phase ({e})") from None
    args.backend = name
    return table, backend


def _measure_beside(args, table, backend, model, shape, description) -> int:
    """``measure --beside TABLE``: every run right after a run of one of the table's calibration networks, brought
    to the calibration's phase (hwcost.verify.measure_beside_candles)."""
    from hwcost.verify import CANDLES, measure_beside_candles
    from profilers.measure import Settings
    if _is_onnx(model):
        raise HwcostError("--beside measures a PyTorch model or a genotype on the table's backend, not an ONNX "
                          "file: drop --beside to time the graph by the clock")
    if shape[0] != backend.batch:
        raise HwcostError(f"--beside {args.beside}: the table was calibrated at batch {backend.batch}, the network's "
                          f"input is {'x'.join(map(str, shape))}")
    [(m, raw, phase)] = measure_beside_candles([(model, shape)], table, backend, Settings(max_time_s=args.max_time))
    d = {**m.summary(), "clock_ms": raw.median * 1e3, "phase": phase, "beside": str(args.beside),
         "candles": CANDLES, **description, "input_shape": list(shape), "backend": backend.name,
         "threads": backend.threads}
    d.pop("attempts", None)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"{d['latency_ms']:.3f} ms median in the calibration's phase of {args.beside} (p10 {d['p10_ms']:.3f}, "
          f"p90 {d['p90_ms']:.3f}; {d['n']} runs, each right after one of {CANDLES} calibration networks) on "
          f"{backend.name}, {backend.threads} thread(s), input {'x'.join(map(str, shape))}")
    print(f"  the clock: {d['clock_ms']:.3f} ms median; the calibration networks ran {phase:.3f}x their calibrated "
          f"time beside it" + (" (the host slower now)" if phase > 1.02 else " (the host faster now)"
                               if phase < 0.98 else ""))
    return 0


def add_profile_parsers(sub) -> None:
    """Add ``profile`` and ``measure`` to an argparse subparsers object."""
    p = sub.add_parser("profile", help="measure every op x shape of a space (or every layer of a model) "
                                       "on a backend -> a device table")
    p.add_argument("--space", help="darts | sharpdarts | nb201")
    p.add_argument("--networks", help="comma-separated network configurations whose shapes to measure: "
                                      "cifar10-search, cifar10, imagenet (darts, sharpdarts), nb201 "
                                      "(default: cifar10-search,cifar10; nb201 for nb201)")
    p.add_argument("--model", help="torchvision:NAME, timm:NAME or package.module:factory -- profile a "
                                    "PyTorch model layer by layer; NET.onnx -- an ONNX model node by node, as "
                                    "ONNX Runtime optimises it (ort backends)")
    p.add_argument("--input", help="input shape of --model, e.g. 1x3x224x224 (an ONNX model: only to fix "
                                    "dynamic dims)")
    p.add_argument("--keys", choices=("layers", "nodes"), default=None,
                   help="how a PyTorch --model is keyed: its layers (default), or the nodes ONNX Runtime runs "
                        "once the model is exported (ort backends; fusions and NCHWc reorders as the runtime makes "
                        "them; more accurate there, see benchmarks/README.md); with --space: the nodes of random "
                        "networks of the space (--random N) instead of its ops")
    p.add_argument("--random", type=int, default=None, metavar="N",
                   help="with --space S --keys nodes: how many random derived networks to key (default 60: "
                        "their node keys and the fit of each op's cost in context); their network is --networks "
                        "(default cifar10)")
    p.add_argument("--seed", type=int, default=0, help="with --random: the networks' seed (default 0)")
    _add_backend_args(p, max_time=2.0)
    p.add_argument("--batch", type=int, default=None, help="batch size of the keys (default 1)")
    p.add_argument("--out", required=True, help="the table to write (JSON)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted profile of the same --out")
    p.add_argument("--device-name", help="name of the device in the table (default: the CPU/GPU model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stream-mib", type=int, default=None, metavar="MIB",
                   help="matrix size of the weight-stream probe, measured when a key holds >= 1 MiB of weights "
                        "(default 1024, less where memory is short; 0: no probe)")
    p.add_argument("--context", choices=("alone", "sequence"), default="alone",
                   help="how each key is timed: alone, in a loop of its own calls (default), or in sequence: "
                        "every call of a model's layers in the order the model runs them, one call at a time, "
                        "each with its own weights and its input just rewritten -- what a layer meets in an "
                        "eager network (torch-cpu; docs/in-context.md)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("measure", help="end-to-end latency of a network on a backend")
    p.add_argument("--space", default=None, help="darts | sharpdarts | nb201 (default darts)")
    p.add_argument("--genotype", help="built-in name (e.g. DARTS_V2) or a genotype file")
    p.add_argument("--arch", help="NB201 architecture string")
    p.add_argument("--network", default=None, help="cifar10 | imagenet (default cifar10)")
    p.add_argument("--model", help="torchvision:NAME, timm:NAME, package.module:factory or NET.onnx instead "
                                    "of a genotype")
    p.add_argument("--input", help="input shape of --model, e.g. 1x3x224x224 (an ONNX model: only to fix "
                                    "dynamic dims)")
    _add_backend_args(p, max_time=10.0, backend=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1; --model takes it from --input)")
    p.add_argument("--beside", metavar="TABLE",
                   help="a calibrated table profiled here: time every run right after a run of one of its "
                        "calibration networks (for --max-time seconds) and report the network in the "
                        "calibration's phase -- a noisy host's phases cancel (as search --verify measures; "
                        "docs/in-context.md); the backend and threads are the table's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_measure)

