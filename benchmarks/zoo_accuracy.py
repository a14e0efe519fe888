"""Predicted vs measured latency of a model zoo, each model calibrated on the others only.

    .venv/bin/python benchmarks/zoo_accuracy.py [--backend ort-cpu] [--zoo torchvision|timm]
        [--models SPEC,SPEC,...] [--via layers|onnx] [--context alone|sequence] [--tag NAME] [--out-dir DIR]
    .venv/bin/python benchmarks/zoo_accuracy.py --darts N [--calibrate K] [--seed S] [--via onnx]
    .venv/bin/python benchmarks/zoo_accuracy.py --rescore RESULT.json [--streamed off|choose|on] [--cold off|choose|on]

A model SPEC is what ``--model`` takes: ``torchvision:NAME``, ``timm:NAME``,
``pkg.module:factory`` or ``NET.onnx``; a bare name is a torchvision one.
``--zoo`` picks a preset list (16 torchvision models of 13 families; 23 of all
20 torchvision classification families, transformers included, with
``torchvision-families``; 8 timm models of 8 families, needs the ``timm``
extra).

``--via layers`` (default) keys a PyTorch model by its layers (``hwcost profile
--model``); ``--via onnx`` (ort backends) exports it to ONNX and keys it by the
nodes of the graph ONNX Runtime optimises and runs (``hwcost profile --model
NET.onnx``: fused nodes, NCHWc layout reorders and all, each timed alone as is).
An ``.onnx`` spec is always keyed by its nodes.

``--darts N`` replaces the zoo by N random DARTS networks (CIFAR-10, C=36, 20
cells, 1x3x32x32) scored after calibrating on K *other* random ones (another
seed; what ``hwcost calibrate`` does), keyed by the space's ops or (``--via
onnx``) by ORT's nodes.

For one backend (1 thread, batch 1, 1x3x224x224):

1. every key of every model is profiled into one table (what ``hwcost profile
   --model`` does, all models' keys in one interleaved run);
2. every model is measured whole (exported to ONNX on ``ort-*``), all models
   prepared first and timed in 10 interleaved rounds, before and again after
   the profile; each keeps its quietest window of the 20
   (``profilers.profile.measure_models``) -- as each table key keeps its
   quietest pass, spread over the whole profile;
3. each model is predicted (a) as the sum of its layers (what the table says,
   fusion and per-call overhead removed, nothing fitted) and (b) through the
   in-context model (``costmodels.incontext``) fitted on the **other** models
   only (leave one model out) -- the model scored never calibrates its own
   prediction.  With (b), its 90 % interval.

``--blocks model`` changes steps 1-2 to what a noisy host needs: each model's
keys are profiled in a table of their own, the model measured whole just
before and just after them (its quietest window of the 20), model after model
-- a model's layers and its network then meet the same host phases (minutes
apart, not half an hour); no weight-streaming probe. A key two models share is
timed in both blocks, each model priced from its own. The models' tables are
kept in ``zoo_<tag>_<backend>_blocks/`` until they are merged into the run's
table; the log adds how far apart a model's two measurements were.

``--blocks paired`` goes one step further: each model is timed for one window
at the start of its keys' profile, after each pass and at the end, and scored
twice: by the clock (its quietest window) and *in the table's phase*: per pass,
the network's windows on either side of it times how much faster the model's
own keys ran in the table than in that pass (:func:`paired_ms`), the median
over passes. A host phase that slows a network and its layers alike cancels;
what remains is the in-context model's error. The log prints how much each
network's windows spread and how much the paired times do.

When a model holds large weights, the profile also measures the backend's
weight-streaming bandwidth (``profilers.stream``); a model's ``per_key`` rows
then carry what each node's weights take to stream beyond its isolated time
as a 5th column. ``--streamed choose|on`` fits the in-context model with that
``streamed`` group (kept where leave-one-out prefers it, or always; default
off, as ``hwcost calibrate`` does), also with ``--rescore``.

Prints a per-model table, MAPE and the shares within +-5 % / +-10 %, the
interval's coverage, the machine and the load; writes
``benchmarks/results/zoo_<tag>_<backend>.json`` (and the table,
``zoo_<tag>_<backend>_table.json.gz``).  Target (issues 11, 12): >= 95 % within +-10 %.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.incontext import STREAMED_MODES, UNSEEN_WARN, Sample, fit_in_context  # noqa: E402
from costmodels.predict import Overhead, predict_network  # noqa: E402
from costmodels.surrogate import accuracy, within_text  # noqa: E402
from hwcost.calibrate import build_spec, space_specs  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info, host_label  # noqa: E402
from profilers.export import export_graph  # noqa: E402
from profilers.measure import Settings, quietest  # noqa: E402
from profilers.profile import jobs_for, measure_models, profile, space_jobs  # noqa: E402
from profilers.shapes import resolve_model  # noqa: E402
from spaces.onnx_graph import OnnxGraph, is_onnx_spec, load_onnx  # noqa: E402

ZOO = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "squeezenet1_1",
       "shufflenet_v2_x1_0", "mnasnet1_0", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "googlenet",
       "densenet121", "alexnet", "vgg11", "convnext_tiny")
TIMM_ZOO = ("timm:efficientnet_b0", "timm:mobilenetv3_large_100", "timm:resnet26d", "timm:regnetx_002",
            "timm:ghostnet_100", "timm:mixnet_s", "timm:convnext_atto", "timm:rexnet_100")
# every torchvision classification family (20): ZOO and the smallest model of each family it lacks --
# EfficientNetV2, Inception v3 (at 224x224 like the rest), MaxViT, ResNeXt, Swin, ViT, Wide ResNet
FAMILIES_ZOO = ZOO + ("efficientnet_v2_s", "inception_v3", "maxvit_t", "resnext50_32x4d", "swin_t", "vit_b_16",
                      "wide_resnet50_2")
ZOOS = {"torchvision": tuple(f"torchvision:{n}" for n in ZOO), "timm": TIMM_ZOO,
        "torchvision-families": tuple(f"torchvision:{n}" for n in FAMILIES_ZOO)}
IMAGE = (1, 3, 224, 224)
NET_SETTINGS = Settings(max_time_s=3.0, passes=10)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _short(spec: str) -> str:
    return Path(spec).stem if is_onnx_spec(spec) else spec.split(":", 1)[-1]


def _subject(spec: str, via: str):
    """(module or OnnxGraph, input shape) of one spec."""
    if is_onnx_spec(spec):
        return load_onnx(spec, IMAGE), IMAGE
    model = resolve_model(spec if ":" in spec else f"torchvision:{spec}").eval()
    if via == "layers":
        return model, IMAGE
    return export_graph(model, IMAGE, _short(spec)), IMAGE


def _darts(n: int, seed: int, via: str, exclude=()) -> tuple[dict, list[dict]]:
    """``n`` random DARTS networks (CIFAR-10, C=36, 20 cells; what ``hwcost calibrate`` draws), as
    {name: (subject, shape)} and their specs."""
    specs = space_specs("darts", "cifar10", n, seed, exclude)
    out = {}
    for i, spec in enumerate(specs):
        model, shape = build_spec(spec)
        name = f"darts-{seed}-{i:02d}"
        out[name] = (export_graph(model.eval(), shape, name) if via == "onnx" else model.eval(), tuple(shape))
    return out, specs


def _sample(name: str, per_key, measured_ms: float, p10_ms=None, p90_ms=None, streamed=None) -> Sample:
    return Sample.of_rows(name, per_key, measured_ms, {"kind": "model", "model": name}, streamed=streamed,
                          p10_ms=p10_ms, p90_ms=p90_ms)


TWIN = 0.5     # networks sharing this much of their keys (multiset Jaccard) are one architecture


def twins(extra: dict) -> dict[str, set]:
    """{model: the other models that share >= TWIN of its keys (counted with their multiplicity)}: the
    same architecture from two libraries (torchvision's mobilenet_v3_large and timm's
    mobilenetv3_large_100 share 0.67 of their ORT nodes; the next closest pair of different
    architectures, resnet50 and timm's resnet26d, 0.45; the rest <= 0.18)."""
    from collections import Counter
    bags = {n: Counter({k: c - a for k, c, a, *_ in e["per_key"] if c - a > 0}) for n, e in extra.items()}
    out: dict[str, set] = {n: set() for n in bags}
    names = list(bags)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            union = sum((bags[a] | bags[b]).values())
            if union and sum((bags[a] & bags[b]).values()) / union >= TWIN:
                out[a].add(b)
                out[b].add(a)
    return out


def score(samples: dict, extra: dict, calibration: set, per_call, via: str, log,
          streamed: str = "off", cold: str = "off") -> tuple[list, dict, float]:
    """Predict every network not in ``calibration`` through an in-context model fitted on ``calibration``
    (else on all the other networks: leave one model out -- and its twins, :func:`twins`); print the
    per-model table and the summary. Each row names the op types of its network that the fit's networks
    never held (``unseen``). ``per_call``: the per-call overhead (ms) the fits remove, or -- a ``--blocks``
    run, a table per model -- {model: its table's}, each fit then taking the median of its own networks'."""
    rows = []
    by_model = per_call if isinstance(per_call, dict) else None

    def overhead(names) -> float:
        return float(np.median([by_model[k] for k in names])) if by_model else per_call
    fixed = fit_in_context([samples[k] for k in calibration], overhead(calibration), streamed=streamed,
                           cold=cold) if calibration else None
    twin = {} if calibration else twins(extra)
    for n, held in twin.items():
        if held and n < min(held):
            log(f"held out together (the same architecture): {', '.join(sorted({n} | held))}")
    for n, smp in samples.items():
        if n in calibration:
            continue
        others = [s for k, s in samples.items() if k != n and k not in twin[n]]
        if not fixed and len(others) < 2:                   # too few left without its twins: keep them
            others = [s for k, s in samples.items() if k != n]
        ic = fixed or fit_in_context(others, overhead([s.name for s in others]), streamed=streamed, cold=cold)
        cal = ic.predict(smp.features, smp.n_ops)
        lo, hi = ic.interval(cal, 0.9)
        unseen = ic.unseen(smp.op_types)
        rows.append({"model": n, **{k: v for k, v in extra[n].items()}, "held_out_with": sorted(twin.get(n, ())),
                     "measured_ms": smp.measured_ms,
                     "p10_ms": smp.p10_ms, "p90_ms": smp.p90_ms, "calibrated_ms": cal, "low90_ms": lo,
                     "high90_ms": hi, "lambda": ic.lam, "structure": ic.structure,
                     "unseen_share": unseen["share"], "unseen_op_types": unseen["types"]})
    log(f"\n{'model':<22} {'keys' if via == 'onnx' else 'layers':>6} {'measured':>9} {'sum of ops':>11} {'err':>7} "
        f"{'calibrated':>11} {'err':>7}  90% interval      unseen op types")
    for r in rows:
        log(f"{r['model']:<22} {r['layers']:>6} {r['measured_ms']:7.2f}ms {r['sum_of_ops_ms']:9.2f}ms "
            f"{r['sum_of_ops_ms'] / r['measured_ms'] - 1:>+7.1%} {r['calibrated_ms']:9.2f}ms "
            f"{r['calibrated_ms'] / r['measured_ms'] - 1:>+7.1%}  [{r['low90_ms']:.2f}, {r['high90_ms']:.2f}]"
            + (f"  {r['unseen_share']:.0%}: {', '.join(r['unseen_op_types'][:3])}" if r["unseen_op_types"] else ""))
    y = np.array([r["measured_ms"] for r in rows])
    summary = {}
    for field, label in (("sum_of_ops_ms", "sum of ops, nothing fitted"),
                         ("calibrated_ms", f"in-context model fitted on {len(calibration)} other networks"
                          if calibration else "in-context model fitted on the other models (leave one model out)")):
        p = np.array([r[field] for r in rows])
        s = summary[field] = {**accuracy(y, p), "mean_signed_error": float(np.mean(p / y - 1))}
        log(f"{label}: MAPE {s['mape']:.2%}, within 5% {s['within_5']:.0%}, within 10% "
            f"{within_text(s['within_10'], len(rows))}, mean signed {s['mean_signed_error']:+.2%}")
    warned = [r for r in rows if r["unseen_share"] >= UNSEEN_WARN]
    if warned:
        rest = [r for r in rows if r["unseen_share"] < UNSEEN_WARN]
        ok = lambda rs: sum(abs(r["calibrated_ms"] / r["measured_ms"] - 1) <= 0.10 for r in rs)  # noqa: E731
        summary["unseen"] = {"warned": [r["model"] for r in warned], "warned_within_10": ok(warned),
                             "others": len(rest), "others_within_10": ok(rest)}
        log(f"predictions warned of op types no calibration network held (>= {UNSEEN_WARN:.0%} of their time): "
            f"{len(warned)} ({', '.join(r['model'] for r in warned)}), {ok(warned)} within 10%; the others "
            f"{ok(rest)}/{len(rest)} within 10%")
    cover = float(np.mean([r["low90_ms"] <= r["measured_ms"] <= r["high90_ms"] for r in rows]))
    log(f"90% interval covers {cover:.0%} of the models")
    return rows, summary, cover


def rescore(path: Path, log, streamed: str = "off", cold: str = "off") -> int:
    """Fit and score again from a saved result (its rows' per-key times and measurements) and its
    table's per-call overhead: nothing measured. ``streamed``: the in-context fit's streamed-weights
    group (``costmodels.incontext.fit_in_context``), read from the rows' 5th column."""
    from device_tables import load_table
    d = json.loads(path.read_text())
    table = load_table(str(path).replace(".json", "_table.json.gz"))
    log(f"rescoring {path.name}: measured on {d['machine']['label']}")
    # a --blocks run: each model's table's overhead (older runs: their median)
    per_call = d.get("per_call_by_model") or d.get("per_call_ms", Overhead.from_table(table).per_call_ms)
    if "calibration" not in d and any(r["model"].startswith("darts-") for r in d["rows"]):
        log(f"{path} was written before results kept their calibration networks: a --darts run cannot be rescored")
        return 2
    samples, extra, calibration = {}, {}, set(d.get("calibration") or [])
    from device_tables.keys import parse_key
    for r in d["rows"] + (d.get("calibration_rows") or []):
        per_key = [(parse_key(k), c, a, ms, None) for k, c, a, ms, *_ in r["per_key"]]
        streamed_ms = {parse_key(row[0]): row[4] for row in r["per_key"] if len(row) > 4}
        samples[r["model"]] = _sample(r["model"], per_key, r["measured_ms"], r.get("p10_ms"), r.get("p90_ms"),
                                      streamed_ms)
        extra[r["model"]] = {"sum_of_ops_ms": r["sum_of_ops_ms"], "layers": r["layers"], "per_key": r["per_key"]}
    if calibration and not calibration <= set(samples):
        log(f"{path} does not keep its calibration networks' rows: cannot rescore it")
        return 2
    if d.get("by_clock"):   # --blocks paired: scored by the clock, then in the table's phase, as the run did
        clock = {r["model"]: r["clock_ms"] for r in d["rows"]}
        log("\nby the clock (each model's quietest window beside its passes):")
        score({n: dataclasses.replace(s, measured_ms=clock[n], p10_ms=None, p90_ms=None)
               for n, s in samples.items()}, extra, calibration, per_call, d.get("via", "layers"), log, streamed, cold)
        log(f"\nmeasured {d['measured']}:")
    score(samples, extra, calibration, per_call, d.get("via", "layers"), log, streamed, cold)
    return 0


def _model_blocks(models: dict, shapes: dict, backend, table_path: Path, sessions: int, profile_args: dict,
                  provenance: dict, log, paired: bool = False) -> tuple[dict, list, list]:
    """``--blocks model``: model after model, the model measured whole, its keys profiled into a table of
    their own, the model measured whole again. ``paired`` (``--blocks paired``): instead, the model is timed
    for one window at the start of its profile, after each pass and at the end (``profile(beside=...)``),
    so that every pass of its keys has a measurement of the network on either side. Returns ({model: its
    table}, before, after) -- with ``paired``, before and after both the quietest of its windows, which
    records every window's median (``pass_medians``); writes the models' tables merged (a shared key keeps its most-sampled entry) to
    ``table_path``."""
    import shutil

    from device_tables import merge_tables, save_table
    tables, before, after = {}, [], []
    blocks = table_path.with_name(table_path.name.replace("_table.json.gz", "_blocks"))
    blocks.mkdir(exist_ok=True)   # each model's table kept here until the merged one is written
    window = NET_SETTINGS.window()
    for n, m in models.items():
        t1 = time.perf_counter()
        if not paired:
            before += measure_models([(m, shapes[n])], backend, NET_SETTINGS, sessions)
        jobs = jobs_for(m, shapes[n], "all", backend.session_providers())
        path = blocks / f"{n}.json.gz"
        path.unlink(missing_ok=True)
        windows: list = []
        time_model = None
        if paired:                            # prepared as measure_models prepares a network
            with backend.active():
                torch.manual_seed(0)
                fn = backend.prepare(m.eval(), (torch.randn(*shapes[n]),))
            time_model = lambda when, fn=fn, windows=windows: windows.append(  # noqa: E731
                backend.timer(fn, window, run_to_cap=True).measure())
        tables[n] = profile(jobs, backend, path, stream_bytes=0,
                            spaces=["onnx" if isinstance(m, OnnxGraph) else "torch"],
                            provenance={**provenance, "block": n}, beside=time_model, **profile_args)
        if paired:
            best = windows[quietest(windows)]
            best.pass_medians = [w.median for w in windows]
            before.append(best)
            after.append(best)
            log(f"{n}: {len(tables[n])} keys profiled, the model timed beside its {len(windows) - 1} passes "
                f"({min(best.pass_medians) * 1e3:.2f} to {max(best.pass_medians) * 1e3:.2f} ms) in "
                f"{time.perf_counter() - t1:.0f} s (load {load()})")
            continue
        after += measure_models([(m, shapes[n])], backend, NET_SETTINGS, sessions)
        log(f"{n}: {len(tables[n])} keys profiled between two measurements of the model "
            f"({before[-1].median * 1e3:.2f} ms, {after[-1].median * 1e3:.2f} ms) in "
            f"{time.perf_counter() - t1:.0f} s (load {load()})")
    merged, _ = merge_tables(list(tables.values()))
    save_table(merged, table_path)
    shutil.rmtree(blocks)
    return tables, before, after


def pass_sums(table, per_key) -> tuple[list[float], float]:
    """(each pass's sum of a model's keys, the same sum with the table's values): a key counted as often
    as the model runs it (``per_key`` rows of :func:`costmodels.predict.predict_network`: key, calls,
    fused, ...), each pass from its entry's ``pass_medians_ms``, the table's value its quietest pass. Keys
    without per-pass medians (not profiled here) are left out of both sums."""
    sums, quiet = None, 0.0
    for key, calls, fused, *_ in per_key:
        entry = table.get(key)
        passes = (entry.extra.get("pass_medians_ms") if entry is not None else None) or []
        if not passes or calls - fused <= 0:
            continue
        sums = [0.0] * len(passes) if sums is None else sums
        if len(passes) != len(sums):
            raise ValueError(f"{key}: {len(passes)} passes, other keys {len(sums)}")
        sums = [s + (calls - fused) * v for s, v in zip(sums, passes)]
        quiet += (calls - fused) * entry.median_ms
    return sums or [], quiet


def paired_ms(windows_ms: list[float], sums: list[float], quiet_sum: float) -> list[float]:
    """The network's time in the phase of the table's values, once per pass: the geometric mean of the
    network's windows on either side of pass p (``windows_ms``: the start, after each pass, the end --
    one more than ``sums``) times ``quiet_sum / sums[p]``, how much faster the model's own keys ran in
    the table than in that pass. A host phase that slows the network and its layers alike cancels; the
    spread left over the passes is what it does not."""
    if len(windows_ms) != len(sums) + 1:
        raise ValueError(f"{len(windows_ms)} windows for {len(sums)} passes: want one more window than passes")
    return [float(np.sqrt(windows_ms[p] * windows_ms[p + 1])) * quiet_sum / sums[p] for p in range(len(sums))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--zoo", choices=sorted(ZOOS), default="torchvision")
    ap.add_argument("--models", help="comma-separated model specs (default: the --zoo preset)")
    ap.add_argument("--via", choices=("layers", "onnx"), default="layers")
    ap.add_argument("--tag", help="name of the result files (default: the zoo, +onnx with --via onnx)")
    ap.add_argument("--darts", type=int, default=0, metavar="N",
                    help="instead of a zoo: N random DARTS networks (CIFAR-10, C=36, 20 cells), scored after "
                         "calibrating on --calibrate other ones (not leave-one-out)")
    ap.add_argument("--calibrate", type=int, default=10, metavar="K", help="with --darts (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="with --darts: the test networks' seed (calibration: +10000)")
    ap.add_argument("--sessions", type=int, default=1, metavar="S",
                    help="prepare each model S times (new sessions, new memory placement) and keep the median "
                         "session, before and after the profile (profilers.profile.measure_models; default 1)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--context", choices=("alone", "sequence"), default="alone",
                    help="how the table's keys are timed (hwcost profile --context; sequence: torch-cpu)")
    ap.add_argument("--max-time", type=float, default=2.0, metavar="S",
                    help="the profile's time per key over its 10 passes (per call with --context sequence; "
                         "default 2)")
    ap.add_argument("--blocks", choices=("all", "model", "paired"), default="all",
                    help="all (default): one table of every model's keys, the models measured whole before and "
                         "after it; model: a table per model, the model measured just before and after its keys; "
                         "paired: a table per model, the model timed beside each pass of its keys, and scored "
                         "both by the clock and in the table's phase")
    ap.add_argument("--rescore", metavar="RESULT.json", help="fit and score a saved run again (nothing measured)")
    ap.add_argument("--cold", choices=STREAMED_MODES, default="off",
                    help="the in-context fit's cold group (each call's isolated ms ** 0.6, costmodels.incontext): "
                         "off (default), choose (kept where leave-one-out prefers it) or on")
    ap.add_argument("--streamed", choices=STREAMED_MODES, default="off",
                    help="the in-context fit's streamed-weights group: off (default), choose (kept where "
                         "leave-one-out prefers it) or on")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.rescore:
        return rescore(Path(args.rescore), lambda line: print(line, flush=True), streamed=args.streamed,
                       cold=args.cold)
    specs = [m for m in (args.models.split(",") if args.models else ZOOS[args.zoo]) if m]
    zoo = "darts" if args.darts else args.zoo if not args.models else "custom"
    tag = args.tag or zoo + ("-onnx" if args.via == "onnx" else "")
    if args.via == "onnx" and not args.backend.startswith("ort"):
        ap.error("--via onnx measures ONNX graphs: use an ort backend")
    if args.blocks != "all" and args.darts:
        ap.error(f"--blocks {args.blocks} is for a zoo of models (--darts networks share one space's keys)")
    if args.blocks != "all" and args.streamed != "off":
        ap.error(f"--blocks {args.blocks} runs no weight-streaming probe: leave --streamed off")
    if args.blocks == "paired" and args.sessions != 1:
        ap.error("--blocks paired times one session of each model beside its passes: leave --sessions at 1")
    log = lambda line: print(line, flush=True)  # noqa: E731
    dev = device_info()
    log(f"machine: {host_label()}, {dev['logical_cores']} logical cores; load {load()}")
    log(f"command: {' '.join(['benchmarks/zoo_accuracy.py'] + sys.argv[1:])}")
    backend = get_backend(args.backend, threads=1)
    t0 = time.perf_counter()
    calibration: set[str] = set()
    if args.darts:
        test, test_specs = _darts(args.darts, args.seed, args.via)
        cal, _ = _darts(args.calibrate, args.seed + 10_000, args.via, exclude=test_specs)
        calibration = set(cal)
        both = {**cal, **test}
        specs = list(both)
    else:
        both = {_short(s): _subject(s, args.via) for s in specs}
    models = {n: m for n, (m, _) in both.items()}
    shapes = {n: sh for n, (_, sh) in both.items()}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the table is kept (results/zoo_<tag>_<backend>_table.json.gz): other groupings of the in-context
    # model can be fitted on these models later without measuring again
    table_path = out / f"zoo_{tag}_{args.backend}_table.json.gz"
    table_path.unlink(missing_ok=True)
    profile_args = dict(progress=False, context=args.context, settings=Settings(max_time_s=args.max_time))
    provenance = {"models": specs, "via": args.via, "input": list(IMAGE) if not args.darts else None,
                  "by": "benchmarks/zoo_accuracy.py"}
    paired = args.blocks == "paired"
    if args.blocks != "all":
        tables, before, after = _model_blocks(models, shapes, backend, table_path, args.sessions, profile_args,
                                              provenance, log, paired)
    else:
        jobs, seen, spaces = [], set(), set()
        for n, m in models.items():
            if args.darts and not isinstance(m, OnnxGraph):   # the space's op keys at the network's shapes, once
                spaces.add("darts")
                new = [] if jobs else space_jobs("darts", "cifar10")
            else:
                spaces.add("onnx" if isinstance(m, OnnxGraph) else "torch")
                new = jobs_for(m, shapes[n], "all", backend.session_providers())
            for j in new:
                if j.key not in seen:
                    seen.add(j.key)
                    jobs.append(j)
        t1 = time.perf_counter()
        before = measure_models([(m, shapes[n]) for n, m in models.items()], backend, NET_SETTINGS, args.sessions)
        log(f"{len(specs)} models measured whole in {time.perf_counter() - t1:.0f} s (load {load()})")
        table = profile(jobs, backend, table_path, spaces=sorted(spaces), provenance=provenance, **profile_args)
        log(f"table: {len(table)} keys of {len(specs)} models ({args.via}) profiled in "
            f"{time.perf_counter() - t0:.0f} s (load {load()}); per-call overhead "
            f"{Overhead.from_table(table).per_call_ms * 1e3:.2f} us")
        t1 = time.perf_counter()
        after = measure_models([(m, shapes[n]) for n, m in models.items()], backend, NET_SETTINGS, args.sessions)
        log(f"{len(specs)} models measured whole again in {time.perf_counter() - t1:.0f} s (load {load()})")
        tables = {n: table for n in models}
    # the table keeps each key's quietest of passes spread over the whole profile; a model's quietest
    # window is taken over two sets of rounds, before and after the profile, to span the same host phases
    measured = [b if b.median <= a.median else a for b, a in zip(before, after)]
    if not paired:
        apart = [max(a.median, b.median) / min(a.median, b.median) for b, a in zip(before, after)]
        log(f"after / before the profile, median {np.median([a.median / b.median for b, a in zip(before, after)]):.3f}; "
            f"a model's two measurements apart by a median {np.median(apart):.3f}x, at most {max(apart):.3f}x, "
            f"{sum(x <= 1.05 for x in apart)}/{len(apart)} within 5%, {sum(x <= 1.10 for x in apart)}/{len(apart)} within 10%")
    # a table per model (--blocks): each fit removes the overhead of its own networks' tables only
    per_call = ({n: Overhead.from_table(t).per_call_ms for n, t in tables.items()} if args.blocks != "all"
                else Overhead.from_table(table).per_call_ms)
    raws, samples, extra = {}, {}, {}
    for i, ((n, m), meas) in enumerate(zip(models.items(), measured)):
        raw = raws[n] = predict_network(m, shapes[n], tables[n], incontext=None)
        samples[n] = _sample(n, raw.per_key, meas.median * 1e3, meas.p10 * 1e3, meas.p90 * 1e3, raw.streamed)
        extra[n] = {"spec": specs[i],
                    # paired: before and after are the same quietest window, recording all of them
                    "windows_ms": [w * 1e3 for w in (before[i].pass_medians or [])
                                   + ((after[i].pass_medians or []) if not paired else [])],
                    # a 5th column when the key's weights can cost more streamed (profilers.stream)
                    "per_key": [[k.to_str(), c, a, ms] + ([raw.streamed[k]] if k in raw.streamed else [])
                                for k, c, a, ms, _ in raw.per_key],
                    "sum_of_ops_ms": raw.latency_ms, "layers": raw.n_calls, "fused": raw.n_fused}
    by_clock = None
    if paired:    # --blocks paired: score by the clock, then each network in its table's phase
        log("\nby the clock (each model's quietest window beside its passes):")
        rows, summary, cover = score(samples, extra, calibration, per_call, args.via, log, args.streamed, args.cold)
        by_clock = {"rows": [{k: r[k] for k in ("model", "measured_ms", "calibrated_ms", "sum_of_ops_ms")}
                             for r in rows], "summary": summary, "interval90_coverage": cover}
        log(f"\n{'model':<22} {'windows':>17} {'spread':>7} {'in the table phase':>19} {'spread':>7} {'clock ms':>9} "
            f"{'paired ms':>9}")
        spreads = []
        for n, smp in list(samples.items()):
            sums, quiet = pass_sums(tables[n], raws[n].per_key)
            w = extra[n]["windows_ms"]
            each = paired_ms(w, sums, quiet)
            spreads.append((max(w) / min(w), max(each) / min(each)))
            extra[n].update(pass_sums_ms=sums, table_sum_ms=quiet, paired_ms=each, clock_ms=smp.measured_ms)
            ms = float(np.median(each))
            log(f"{n:<22} {min(w):7.2f}-{max(w):7.2f}ms {spreads[-1][0]:6.3f}x {min(each):8.2f}-{max(each):8.2f}ms "
                f"{spreads[-1][1]:6.3f}x {smp.measured_ms:8.2f} {ms:9.2f}")
            samples[n] = _sample(n, raws[n].per_key, ms, float(np.percentile(each, 10)),
                                 float(np.percentile(each, 90)), raws[n].streamed)
        log(f"a network's windows spread a median {np.median([a for a, _ in spreads]):.3f}x; each pass's network "
            f"time in the table's phase, a median {np.median([b for _, b in spreads]):.3f}x")
        log("\nin the table's phase (each pass's network time divided by how much slower its layers ran then "
            "than in the table; median over the passes):")
    rows, summary, cover = score(samples, extra, calibration, per_call, args.via, log, args.streamed, args.cold)
    log(f"total {time.perf_counter() - t0:.0f} s, load {load()}")
    path = out / f"zoo_{tag}_{args.backend}.json"
    by_model = per_call if isinstance(per_call, dict) else None
    path.write_text(json.dumps({"backend": args.backend, "via": args.via, "context": args.context,
                                "blocks": args.blocks,
                                "per_call_ms": float(np.median(list(by_model.values()))) if by_model else per_call,
                                **({"per_call_by_model": by_model} if by_model else {}),
                                "specs": specs, "machine": {**dev, "label": host_label()},
                                "rows": rows, "summary": summary, "interval90_coverage": cover,
                                **({"measured": "in the table's phase (--blocks paired)", "by_clock": by_clock}
                                   if by_clock else {}),
                                "calibration": sorted(calibration),
                                "calibration_rows": [{"model": k, "measured_ms": samples[k].measured_ms,
                                                      "p10_ms": samples[k].p10_ms, "p90_ms": samples[k].p90_ms,
                                                      **{f: extra[k][f] for f in ("per_key", "sum_of_ops_ms", "layers")}}
                                                     for k in sorted(calibration)],
                                "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
