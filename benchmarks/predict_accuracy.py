"""Predicted vs measured end-to-end latency: DARTS networks and torchvision models.

    .venv/bin/python benchmarks/predict_accuracy.py [--backends ort-cpu,torch-cpu] [--quick]

For each backend (one thread, batch 1):

* DARTS: ``--n`` random genotypes (seeded; 2 distinct inputs per node, no
  ``none``) under the CIFAR eval network (C=36, 20 cells, 1x3x32x32), predicted
  from the op-level table ``device_tables/data/darts_<backend>.json`` (the
  benchmark's figures) and, as a diagnostic of the table's age, from the same
  keys profiled in this run into a temporary table with the profile API (the
  only table when none is shipped; said in the output);
* torchvision ``mobilenet_v2``, ``resnet18``, ``squeezenet1_0`` at 1x3x224x224:
  their layers are profiled into a table first (what ``hwcost profile --model``
  does), then predicted;
* measured = the whole network on the same backend and settings as the table
  (on ``ort-*`` the exported ONNX network, one session), with the table's
  estimator: all networks (or ``--chunk`` at a time) are prepared, then
  measured in 10 interleaved rounds of one 0.3 s window each, and every
  network keeps its quietest window's median (``profilers.profile.measure_models``; the table's
  keys were profiled the same way, in 10 interleaved passes).

Predictions use what ``hwcost predict`` uses (``costmodels.predict``): the sum of
the ops, minus the per-call overhead the table records, minus what ONNX Runtime
fuses -- nothing fitted -- and, beside it, the table's in-context model
(``costmodels.incontext``) calibrated as ``hwcost calibrate`` does on
``--calibrate`` *other* random genotypes (another seed, none of the test ones),
measured on their own before the test networks (three of them are measured
again beside the test networks, with the host's reference kernel: the printed
"host phase" ratio says whether the host ran the test networks at the
calibration's speed); with it the 90 % prediction
interval's coverage and the one-sided 90 % bound's (what a budget at
``--confidence 0.9`` relies on).  Prints MAPE, RMSE and the share
within +-5 % / +-10 % (nn-Meter: 99 % within +-10 % on a mobile CPU; LitePred:
90.5 % within +-5 %; target here: >= 99 % within +-10 %, >= 90 % within +-5 %),
the machine, the load average, and a drift check of the table.
Writes ``benchmarks/results/predict_vs_measured_<backend>.png`` and ``.json``
(``--replot JSON`` prints the report of a saved run again and redraws its plot, without measuring;
the report adds the calibrated figures "in the calibration's phase": each prediction times the
now / then ratio of the calibration networks measured beside the test networks).
The report also scores the chunks of test networks whose calibration networks, measured beside them, ran
within 5% of their calibration time (the host in the calibration's phase, chosen without looking at any
prediction). ``--remeasure`` measures the test networks a second time (chunks in reverse order) and prints how far two
measurements of one network agree -- the ceiling of any prediction's agreement with one measurement on
this host -- and the calibrated predictions against the second measurement and against the geometric mean
of both; ``--sessions K`` prepares each test network K times and keeps the median session (as verify does).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.predict import Overhead, predict_genotype, predict_network  # noqa: E402
from costmodels.incontext import group_features  # noqa: E402
from hwcost.calibrate import arch_spec, build_spec, fit_table, measure_specs, network_specs  # noqa: E402
from hwcost.verify import CANDLES, candles, measure_beside_candles  # noqa: E402
from costmodels.surrogate import accuracy, within_text  # noqa: E402
from device_tables import DATA_DIR, load_table  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.overhead import measure_call_overhead  # noqa: E402
from profilers.profile import (measure_models, measure_models_with_reference, model_jobs, profile,  # noqa: E402
                               space_jobs)
from profilers.shapes import resolve_model  # noqa: E402
from spaces import build_network, network_config, random_genotype  # noqa: E402

TORCHVISION = ("mobilenet_v2", "resnet18", "squeezenet1_0")
IMAGE = (1, 3, 224, 224)
NET_SETTINGS = Settings(max_time_s=3.0, passes=10)  # per network: 10 interleaved windows of 0.3 s


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def profile_now(backend, tmp: Path) -> "DeviceTable":
    """The darts keys of the CIFAR eval network, profiled now (what ``hwcost profile`` does)."""
    return profile(space_jobs("darts", "cifar10"), backend, tmp / f"darts_{backend.name}_now.json", spaces=["darts"],
                   progress=False, provenance={"space": "darts", "networks": ["cifar10"],
                                               "by": "benchmarks/predict_accuracy.py"})


def drift(shipped, fresh) -> tuple[float, float]:
    """(median, occurrence-weighted mean) over the shared keys of fresh entry / shipped entry."""
    ratios = [(fresh.get(e.key).median_ms / e.median_ms) for e in shipped.entries if fresh.get(e.key)]
    return statistics.median(ratios) if ratios else float("nan"), len(ratios)


def tables_for(backend, tmp: Path, log) -> dict:
    """{"shipped": the table in device_tables/data (if any), "now": one profiled in this run}.

    Predictions from the shipped table are the benchmark's figures; the fresh
    table, measured minutes before the networks, separates the model's error
    from the table's age (a diagnostic, never mixed into the shipped figures).
    """
    out = {}
    shipped = DATA_DIR / f"darts_{backend.name}.json"
    if shipped.is_file():
        out["shipped"] = load_table(shipped, expect_space="darts", expect_kind="op")
        t = out["shipped"]
        log(f"table: {shipped.relative_to(ROOT)} (shipped; created {t.created}, {len(t)} keys, device "
            f"{t.device.get('name')!r})")
        if t.device.get("cpu") != device_info()["cpu"]:
            log(f"WARNING: the table was measured on {t.device.get('cpu')!r}, this is {device_info()['cpu']!r}")
    else:
        log(f"table: device_tables/data/darts_{backend.name}.json is not shipped yet -- using the table "
            f"profiled now only")
    t0 = time.perf_counter()
    out["now"] = profile_now(backend, tmp)
    log(f"table profiled now: {len(out['now'])} darts cifar10 keys in {time.perf_counter() - t0:.0f} s (load {load()})")
    if "shipped" in out:
        med, n = drift(out["shipped"], out["now"])
        log(f"table drift: over the {n} shared keys, median (now / shipped entry) = {med:.3f}")
    return out


def run_backend(name: str, args, log) -> dict:
    backend = get_backend(name, threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwcost-predict-") as tmp:
        tables = tables_for(backend, Path(tmp), log)
        chain = measure_call_overhead(backend)
        for label, t in tables.items():
            o = Overhead.from_table(t)
            log(f"per-call overhead used ({label} table): {o.per_call_ms * 1e3:.2f} us ({o.source})")
        log(f"per-call overhead measured now by the chain method: {chain['per_call_ms'] * 1e3:.2f} us per call + "
            f"{chain['per_node_ms'] * 1e3:.2f} us per node (one op {chain['one_op_ms'] * 1e3:.2f} us, "
            f"{chain['chain_length']} ops {chain['chain_ms'] * 1e3:.2f} us)")

        rng = random.Random(args.seed)
        tests = [random_genotype(rng) for _ in range(args.n)]
        test_specs = [arch_spec("darts", "cifar10", g) for g in tests]
        # Calibration (what `hwcost calibrate TABLE --networks K` does): K other random genotypes
        # (another seed; none of the test ones), measured on their own before the test networks.
        models, calibrated = {}, {}
        if args.calibrate:
            t0 = time.perf_counter()
            specs = network_specs(tables["now"], args.calibrate, args.seed + 10_000, "cifar10", exclude=test_specs)
            _, measured_cal = measure_specs(tables["now"], specs, backend, NET_SETTINGS, log=log)
            for label, t in tables.items():
                # the same measured networks, priced by each table's ops
                cal = [_repriced(smp, t) for smp in measured_cal]
                calibrated[label], models[label] = fit_table(t, cal)
                sm = models[label].summary()
                log(f"calibrated the {label} table on {len(cal)} other genotypes ({time.perf_counter() - t0:.0f} s): "
                    f"leave-one-out MAPE {sm['loo_mape']:.2%}, mean {sm['loo_mean']:+.2%}, sd {sm['loo_std']:.2%}; "
                    f"lambda {sm['lambda']:g}; factors " + ", ".join(f"{g} {f:.3f}" for g, f in sm["factors"].items())
                    + f"; per op {sm['per_op_us']:+.2f} us")
            for smp in measured_cal:
                rows.append({"kind": "calibration", "name": "calibration genotype", "spec": smp.spec,
                             "measured_ms": smp.measured_ms})
        t0 = time.perf_counter()
        step = args.chunk if args.chunk > 0 else len(tests)
        # Calibration networks measured again beside the test networks, with the host's reference kernel
        # (what verify does, hwcost.verify.candles): now / then says whether the host ran the test networks
        # in the calibration's phase.
        lit = candles(calibrated["now"]) if "now" in calibrated else []
        phase = []
        paired = Settings(max_time_s=args.paired) if args.paired else None
        if paired and not lit:
            raise SystemExit("--paired needs the calibration networks (--calibrate > 0)")
        for start in range(0, len(tests), step):
            chunk = tests[start:start + step]
            nets = [(n, n.input_shape(1)) for n in (build_network(network_config("cifar10", g)) for g in chunk)]
            if paired:
                # each run right after a run of a calibration network (hwcost.verify.measure_beside_candles)
                beside = measure_beside_candles(nets, calibrated["now"], backend, paired, sessions=args.sessions)
                measured = [raw for _, raw, _ in beside]
            else:
                measured, ref = measure_models_with_reference(nets + [(n, sh) for n, sh, _ in lit], backend,
                                                              NET_SETTINGS, sessions=args.sessions)
                measured, again = measured[:len(chunk)], measured[len(chunk):]
                phase.append({"reference_ms": ref.median * 1e3, "calibration_now_over_then":
                              [a.median * 1e3 / then for a, (_, _, then) in zip(again, lit)]})
            for i, (g, m) in enumerate(zip(chunk, measured)):
                row = {"kind": "darts", "name": "darts genotype", "genotype": str(g), **_measured(m)}
                if paired:
                    row.update(paired_ms=beside[i][0].median * 1e3, paired_phase=beside[i][2],
                               paired_runs=beside[i][0].n)
                for label, t in tables.items():
                    p = predict_genotype(g, t, network="cifar10", incontext=None)
                    row[f"predicted_{label}_ms"] = p.latency_ms
                    row["n_ops"] = p.n_calls
                    if label in models:
                        c = predict_genotype(g, t, network="cifar10", incontext=models[label], confidence=0.9)
                        row[f"calibrated_{label}_ms"] = c.latency_ms
                        row[f"interval90_{label}_ms"] = [c.low_ms, c.high_ms]
                        row[f"upper90_{label}_ms"] = c.latency_ms * models[label].upper_factor(0.9)
                rows.append(row)
            log(f"  darts {start + len(chunk)}/{len(tests)} ({time.perf_counter() - t0:.0f} s, load {load()})")
        if args.remeasure:
            # The same test networks measured a second time, chunks in reverse order (so a network's two
            # measurements fall in different parts of the run): how far two measurements of one network
            # agree is the ceiling of any prediction's agreement with one of them.
            darts_rows = [r for r in rows if r["kind"] == "darts"]
            t1 = time.perf_counter()
            for start in reversed(range(0, len(tests), step)):
                chunk = tests[start:start + step]
                nets = [(n, n.input_shape(1)) for n in (build_network(network_config("cifar10", g)) for g in chunk)]
                if paired:
                    beside = measure_beside_candles(nets, calibrated["now"], backend, paired, sessions=args.sessions)
                    for r, (m, raw, ph) in zip(darts_rows[start:start + step], beside):
                        r.update(remeasured_ms=raw.median * 1e3, remeasured_paired_ms=m.median * 1e3,
                                 remeasured_paired_phase=ph)
                else:
                    measured, ref = measure_models_with_reference(nets, backend, NET_SETTINGS, sessions=args.sessions)
                    for r, m in zip(darts_rows[start:start + step], measured):
                        r["remeasured_ms"] = m.median * 1e3
                        r["remeasured_reference_ms"] = ref.median * 1e3
                log(f"  remeasured darts {start + 1}-{start + len(chunk)} ({time.perf_counter() - t1:.0f} s, "
                    f"load {load()})")
        if lit and phase:
            ratios = [v for ph in phase for v in ph["calibration_now_over_then"]]
            then_ref = models["now"].reference_ms
            log(f"host phase: {len(lit)} calibration networks measured again beside the test networks ran "
                f"{statistics.median(ratios):.3f}x their calibration time (median; a calibration measured in "
                f"another phase biases every prediction by about that much); reference kernel "
                f"{statistics.median(ph['reference_ms'] for ph in phase):.3f} ms now, "
                + (f"{then_ref:.3f} ms at calibration" if then_ref is not None else "not recorded at calibration"))

        tv_models, preds, seconds = [], [], []
        for model_name in args.models:  # each model's layers profiled, then the models measured together
            model = resolve_model(f"torchvision:{model_name}")
            out = Path(tmp) / f"{model_name}_{name}.json"
            t1 = time.perf_counter()
            layer_table = profile(model_jobs(model, IMAGE), backend, out, spaces=["torch"], progress=False,
                                  provenance={"model": f"torchvision:{model_name}", "input": list(IMAGE)})
            tv_models.append(model)
            preds.append(predict_network(model, IMAGE, layer_table))
            seconds.append(time.perf_counter() - t1)
            log(f"  {model_name}: {preds[-1].n_calls} layers ({preds[-1].n_fused} fused) profiled in "
                f"{seconds[-1]:.0f} s; predicted {preds[-1].latency_ms:.2f} ms")
        measured = measure_models([(m, IMAGE) for m in tv_models], backend, NET_SETTINGS) if tv_models else []
        for model_name, pred, m, sec in zip(args.models, preds, measured, seconds):
            rows.append({"kind": "torchvision", "name": model_name,
                         **{f"predicted_{k}_ms": pred.latency_ms for k in tables},
                         "ops_sum_ms": pred.ops_sum_ms, "fused_ms": pred.fused_ms, "fused_ops": pred.n_fused,
                         **_measured(m), "n_ops": pred.n_calls, "from_surrogate": pred.from_surrogate,
                         "profile_s": sec})
            log(f"  {model_name}: predicted {pred.latency_ms:.2f} ms, measured {m.median * 1e3:.2f} ms "
                f"({m.quality}), load {load()}")
    return {"backend": name, "runtime": tables["now"].runtime, "tables": list(tables), "sessions": args.sessions,
            "shipped_table_created": tables["shipped"].created if "shipped" in tables else None,
            "chain": chain, "calibration": {k: m.to_json() for k, m in models.items()}, "rows": rows,
            "phase": phase}


def _repriced(smp, table):
    """A measured calibration network with its op-group times read from ``table``."""
    model, shape = build_spec(smp.spec)
    p = predict_network(model, shape, table, incontext=None)
    feats, n_ops = group_features(p.per_key, p.streamed)
    return dataclasses.replace(smp, features=feats, n_ops=n_ops)


def _measured(m) -> dict:
    return {"measured_ms": m.median * 1e3, "measured_p10_ms": m.p10 * 1e3, "measured_p90_ms": m.p90 * 1e3,
            "quality": m.quality, "measured_windows_ms": [v * 1e3 for v in (m.pass_medians or [])]}


def summarize(rows: list[dict], field: str = "predicted_ms") -> dict:
    y = np.array([r["measured_ms"] for r in rows])
    p = np.array([r[field] for r in rows])
    return {"n": len(rows), **accuracy(y, p), "mean_signed_error": float(np.mean(p / y - 1))}


def in_phase(rows: list[dict], field: str, phase: list[dict]) -> list[dict] | None:
    """``rows`` with ``field`` scaled by the median now / then ratio of the calibration networks measured
    beside them (``phase``: one record per chunk of test networks, in order), or None without records.
    No scored network enters the ratio: it says how much faster or slower the host ran than when the
    calibration was measured (``hwcost.verify`` measures its derived networks the same way)."""
    ratios = chunk_ratios(rows, phase)
    if ratios is None:
        return None
    return [{**r, field: r[field] * ratio} for r, ratio in zip(rows, ratios)]


def chunk_ratios(rows: list[dict], phase: list[dict]) -> list[float] | None:
    """For each of ``rows``, the median now / then of the calibration networks measured beside its chunk
    (``phase``: one record per chunk, in order); None without a record for every chunk."""
    ratios = [statistics.median(ph["calibration_now_over_then"]) for ph in phase if ph.get("calibration_now_over_then")]
    if not rows or not ratios or len(ratios) != len(phase):
        return None
    step = -(-len(rows) // len(ratios))
    return [ratios[i // step] for i in range(len(rows))]


QUIET = 1.05   # a chunk whose calibration networks ran within 5% of their calibration time: the host in that phase


def quiet_chunks(rows: list[dict], phase: list[dict]) -> list[dict] | None:
    """The rows of the chunks whose calibration networks, measured beside them, ran within :data:`QUIET` of
    their calibration time (median now / then in [1 / QUIET, QUIET]); None without phase records."""
    ratios = chunk_ratios(rows, phase)
    if ratios is None:
        return None
    return [r for r, ratio in zip(rows, ratios) if 1 / QUIET <= ratio <= QUIET]


def repeatability(rows: list[dict], result: dict, log, first: str = "measured_ms", second: str = "remeasured_ms",
                  how: str = "") -> dict:
    """How far two measurements of the same networks agree (the ceiling of a prediction's agreement with
    one measurement), and the calibrated predictions scored against the second measurement and against the
    geometric mean of both (the measurement noise halved in variance)."""
    rows = [{**r, "measured_ms": r[first], "remeasured_ms": r[second]} for r in rows]
    a = np.array([r["measured_ms"] for r in rows])
    b = np.array([r["remeasured_ms"] for r in rows])
    d = np.log(b / a)
    rel = np.abs(b / a - 1)
    out = {"n": len(rows), "within_5": float(np.mean(rel <= 0.05)), "within_10": float(np.mean(rel <= 0.10)),
           "median_ratio": float(np.exp(np.median(d))), "sd_log_ratio": float(np.std(d, ddof=1)),
           "single_measurement_sd": float(np.std(d, ddof=1) / np.sqrt(2))}
    log(f"\n{result['backend']}: the {len(rows)} DARTS test networks measured twice{how} (second pass in reverse order): "
        f"second / first median {out['median_ratio']:.3f}, agree within 5% {out['within_5']:.0%}, within 10% "
        f"{out['within_10']:.0%}; sd of log(second / first) {out['sd_log_ratio']:.2%} -> one measurement's noise "
        f"about {out['single_measurement_sd']:.2%} (sessions per network: {result.get('sessions', 1)})")
    for label in result.get("calibration", {}):
        field = f"calibrated_{label}_ms"
        if not all(field in r for r in rows):
            continue
        second = summarize([{**r, "measured_ms": r["remeasured_ms"]} for r in rows], field)
        both = summarize([{**r, "measured_ms": float(np.sqrt(r["measured_ms"] * r["remeasured_ms"]))} for r in rows],
                         field)
        out[field] = {"second": second, "geomean": both}
        for what, s in (("the second measurement", second), ("the geometric mean of both", both)):
            log(f"  {label} table, in-context model against {what}: MAPE {s['mape']:.2%}, within 5% "
                f"{s['within_5']:.0%}, within 10% {s['within_10']:.0%}, mean signed {s['mean_signed_error']:+.2%}")
    return out


def report_paired(rows: list[dict], result: dict, log) -> dict:
    """The calibrated predictions against the networks measured run by run beside calibration networks,
    brought to the calibration's phase (``--paired``; as ``hwcost search --verify`` measures)."""
    out = {}
    phases = [r["paired_phase"] for r in rows]
    log(f"\n{result['backend']}: the {len(rows)} DARTS test networks measured run by run, each run right after a "
        f"run of one of {CANDLES} calibration networks "
        f"(hwcost.verify.measure_beside_candles), brought to the calibration's phase; the candles ran "
        f"{min(phases):.3f}-{max(phases):.3f}x their calibration time beside them (median {statistics.median(phases):.3f})")
    head = f"{'prediction':<34} {'n':>4} {'MAPE':>7} {'<=5%':>6} {'<=10%':>6} {'mean signed':>11}"
    log(f"  {head}")
    for label in result["tables"]:
        for kind in ("predicted", "calibrated"):
            field = f"{kind}_{label}_ms"
            if not all(field in r for r in rows):
                continue
            s = out[field] = summarize([{**r, "measured_ms": r["paired_ms"]} for r in rows], field)
            what = f"{label} table, " + ("sum of ops" if kind == "predicted" else "in-context model")
            log(f"  {what:<34} {s['n']:>4} {s['mape']:>7.2%} {s['within_5']:>6.0%} {s['within_10']:>6.0%} "
                f"{s['mean_signed_error']:>+11.2%}")
            if kind == "calibrated":
                log(f"    within 5%: {within_text(s['within_5'], s['n'])}; within 10%: "
                    f"{within_text(s['within_10'], s['n'])}")
    return out


def report(result: dict, log) -> dict:
    groups = {"darts": [r for r in result["rows"] if r["kind"] == "darts"],
              "torchvision": [r for r in result["rows"] if r["kind"] == "torchvision"]}
    out: dict = {}
    head = f"{'group':<12} {'n':>4} {'MAPE':>7} {'RMSE ms':>8} {'<=5%':>6} {'<=10%':>6} {'mean signed':>11}"
    for label in result["tables"]:
        what = "shipped darts table" if label == "shipped" else "darts table profiled in this run"
        for kind in ("predicted", "calibrated"):
            field = f"{kind}_{label}_ms"
            if kind == "calibrated" and label not in result["calibration"]:
                continue
            how = ("sum of ops, nothing fitted" if kind == "predicted" else
                   f"in-context model calibrated on {result['calibration'][label]['residuals']['n']} other genotypes")
            log(f"\n{result['backend']}, {what}; {how}:\n  {head}")
            for g, rows in groups.items():
                rows = [r for r in rows if field in r]
                if not rows:
                    continue
                s = out.setdefault(field, {})[g] = summarize(rows, field)
                log(f"  {g:<12} {s['n']:>4} {s['mape']:>7.2%} {s['rmse_ms']:>8.3f} {s['within_5']:>6.0%} "
                    f"{s['within_10']:>6.0%} {s['mean_signed_error']:>+11.2%}")
            if kind == "calibrated" and groups["darts"]:
                d = groups["darts"]
                if "darts" in out.get(field, {}):
                    s = out[field]["darts"]
                    log(f"  darts within 5%: {within_text(s['within_5'], s['n'])}; within 10%: "
                        f"{within_text(s['within_10'], s['n'])} (Wilson intervals of the rate on networks not scored)")
                inside = np.mean([lo <= r["measured_ms"] <= hi for r in d for lo, hi in [r[f"interval90_{label}_ms"]]])
                below = np.mean([r["measured_ms"] <= r[f"upper90_{label}_ms"] for r in d])
                out[field]["interval90_coverage"] = float(inside)
                out[field]["upper90_coverage"] = float(below)
                log(f"  90% prediction interval covers {inside:.0%} of the test networks; the one-sided 90% bound "
                    f"(what a budget at --confidence 0.9 uses) {below:.0%}")
                quiet = quiet_chunks(d, result.get("phase") or []) if label == "now" else None
                if quiet:
                    s = out[field]["quiet_chunks"] = summarize(quiet, field)
                    log(f"  the {s['n']} test networks of chunks measured while the calibration networks beside them ran "
                        f"within {QUIET - 1:.0%} of their calibration time (the host in the calibration's phase; chosen by "
                        f"those networks, not by any prediction): MAPE {s['mape']:.2%}, within 5% {s['within_5']:.0%}, "
                        f"within 10% {s['within_10']:.0%}, mean signed {s['mean_signed_error']:+.2%}")
                elif quiet is not None:
                    log(f"  no chunk of test networks was measured with the calibration networks within {QUIET - 1:.0%} "
                        f"of their calibration time")
                phased = in_phase(d, field, result.get("phase") or []) if label == "now" else None
                if phased is not None:
                    s = out[field]["in_calibration_phase"] = summarize(phased, field)
                    log(f"  in the calibration's phase (each prediction x the now / then ratio of the calibration "
                        f"networks measured beside it, as verify does): MAPE {s['mape']:.2%}, within 5% "
                        f"{s['within_5']:.0%}, within 10% {s['within_10']:.0%}, mean signed {s['mean_signed_error']:+.2%}")
    paired = [r for r in groups["darts"] if "paired_ms" in r]
    if paired:
        out["paired"] = report_paired(paired, result, log)
    again = [r for r in groups["darts"] if "remeasured_ms" in r]
    if again:
        out["repeatability"] = repeatability(again, result, log, how=", by the clock" if paired else "")
    again = [r for r in paired if "remeasured_paired_ms" in r]
    if again:
        out["repeatability_paired"] = repeatability(again, result, log, "paired_ms", "remeasured_paired_ms",
                                                    ", run by run beside calibration networks")
    label = result["tables"][0]
    log("")
    if "shipped" in result["tables"] and groups["darts"]:
        ratio = statistics.mean(r["predicted_shipped_ms"] / r["predicted_now_ms"] for r in groups["darts"])
        log(f"  the shipped table prices the DARTS test networks {ratio - 1:+.1%} (mean) against the table "
            f"profiled in this run")
    for r in groups["torchvision"]:
        p = r[f"predicted_{label}_ms"]
        log(f"  {r['name']:<14} predicted {p:7.2f} ms  measured {r['measured_ms']:7.2f} ms  "
            f"({p / r['measured_ms'] - 1:+.1%}; sum of layers {r['ops_sum_ms']:.2f} ms, {r['fused_ops']} fused "
            f"layers {r['fused_ms']:.2f} ms; uncalibrated -- see benchmarks/zoo_accuracy.py)")
    return out


def plot(result: dict, path: Path) -> None:
    """Predicted vs measured with the +-10 % band: the sum of ops, and the same x the calibrated scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if r["kind"] != "calibration"]
    fields = [(f"predicted_{t}_ms", f"{t} table: sum of ops") for t in result["tables"]]
    fields += [(f"calibrated_{t}_ms", f"{t} table: in-context model") for t in result.get("calibration", {})]
    fields = [(f, label, "measured_ms") for f, label in fields if all(f in r for r in rows if r["kind"] == "darts")]
    if any("paired_ms" in r for r in rows):   # --paired: the model against the networks measured beside candles
        fields += [(f"calibrated_{t}_ms", f"{t} table: in-context, run beside cal. networks",
                    "paired_ms") for t in result.get("calibration", {})]
    top = max(max(r[m], r[f]) for r in rows for f, _, m in fields if f in r and m in r) * 1.08
    fig, axes = plt.subplots(1, len(fields), figsize=(4.6 * len(fields), 4.8))
    x = np.linspace(0, top, 100)
    for ax, (field, label, measured) in zip(axes, fields):
        ax.fill_between(x, 0.9 * x, 1.1 * x, color="0.88", label="±10%")
        ax.plot(x, x, color="0.4", lw=0.8)
        d = [r for r in rows if r["kind"] == "darts" and measured in r]
        ax.scatter([r[measured] for r in d], [r[field] for r in d], s=12,  # noqa: E501
                   label=f"DARTS genotypes, C=36, 20 cells ({len(d)})")
        for r in (r for r in rows if r["kind"] == "torchvision" and field in r and measured == "measured_ms"):
            ax.scatter([r["measured_ms"]], [r[field]], marker="s", s=30)
            ax.annotate(r["name"], (r["measured_ms"], r[field]), fontsize=7, xytext=(4, -8),
                        textcoords="offset points")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured (ms)", ylabel="predicted (ms)",
               title=f"{result['backend']}, 1 thread; {label}")
        ax.title.set_fontsize(9)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="ort-cpu,torch-cpu")
    ap.add_argument("--n", type=int, default=100, help="random DARTS genotypes (default 100)")
    ap.add_argument("--quick", action="store_true", help="20 genotypes and the three models")
    ap.add_argument("--models", default=",".join(TORCHVISION))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=0,
                    help="networks prepared and measured together, interleaved (default 0: all of them, "
                         "so each network's windows span the whole run; ~5 GB for 110 ORT sessions)")
    ap.add_argument("--calibrate", type=int, default=10,
                    help="other genotypes to calibrate the in-context model on (reported beside the sum of "
                         "ops; 0: none)")
    ap.add_argument("--sessions", type=int, default=1,
                    help="sessions per test network, the median one kept (verify uses 3; default 1)")
    ap.add_argument("--remeasure", action="store_true",
                    help="measure the test networks a second time and report how far two measurements agree "
                         "(the ceiling of any prediction's agreement with one of them)")
    ap.add_argument("--paired", type=float, default=0.0, metavar="SECONDS",
                    help="measure each test network run by run beside the calibration networks for SECONDS per "
                         "session (as search --verify does) and score the predictions against it, in the "
                         "calibration's phase, beside the clock's figures (default 0: off)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--replot", metavar="JSON", help="report a results .json again and redraw its plot (no measuring)")
    args = ap.parse_args()
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        report(result, lambda line: print(line, flush=True))
        plot(result, Path(args.replot).with_suffix(".png"))
        return 0
    if args.sessions < 1:
        ap.error("--sessions must be at least 1")
    if args.quick:
        args.n = 20
    args.models = [m for m in args.models.split(",") if m]
    warnings.filterwarnings("ignore")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    log = lambda line: print(line, flush=True)  # noqa: E731
    dev = device_info()
    log(f"machine: {dev['cpu']}, {dev['logical_cores']} logical cores, {dev['os']}, python {dev['python']}")
    import onnxruntime
    import torch
    log(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; load average at start {load()}")
    log(f"command: {' '.join(['benchmarks/predict_accuracy.py'] + sys.argv[1:])}")
    summaries = {}
    for name in [b for b in args.backends.split(",") if b]:
        log(f"\n== {name} ==")
        t0 = time.perf_counter()
        result = run_backend(name, args, log)
        summaries[name] = report(result, log)
        png = out_dir / f"predict_vs_measured_{name}.png"
        plot(result, png)
        result.update(summary=summaries[name], machine=dev, seconds=time.perf_counter() - t0, load_end=load())
        (out_dir / f"predict_vs_measured_{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png} and .json "
            f"({time.perf_counter() - t0:.0f} s, load {load()})")
    log(f"\nload average at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
