"""Identical parameter-free ops on one tensor: counted once (what the ONNX graph runs) or every call?

    .venv/bin/python benchmarks/onnx_merges.py [--n 20] [--backend ort-cpu]

Profiles the NB201 op keys here into a temporary table (one thread, what ``hwcost profile --space nb201``
does), draws ``--n`` NB201 cells uniformly and ``--n`` from parameter-free ops mostly (avg_pool, skip,
none: the cells where the ONNX export and ONNX Runtime merge repeated pools on one state), measures every
network whole on the backend (exported to ONNX, 10 interleaved windows, the quietest kept) and predicts it
from the table twice, nothing fitted: counting each op call as PyTorch makes it, and counting what the ONNX
graph runs (``costmodels.predict``, ``spaces.opkeys.tagged_op_counts(merged=...)``); and each of the two
through its own in-context model (``costmodels.incontext``, as ``hwcost calibrate`` fits it) fitted on
``--calibrate`` other uniform cells measured in the same run. Prints MAPE and the share within +-10 % of
each set, with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.costmodel import CostModel  # noqa: E402
from costmodels.incontext import Sample, fit_in_context  # noqa: E402
from costmodels.predict import Overhead, predict_counts, predict_nb201  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import cpu_id, cpu_model  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.profile import measure_models, profile, space_jobs  # noqa: E402
from spaces import Nb201NetConfig, build_network  # noqa: E402
from spaces.nb201_arch import NB201_OPS  # noqa: E402
from spaces.opkeys import network_op_counts  # noqa: E402

NET_SETTINGS = Settings(max_time_s=3.0, passes=10)
FREE_HEAVY = {"avg_pool_3x3": 4, "skip_connect": 3, "none": 2, "nor_conv_1x1": 1, "nor_conv_3x3": 1}


def draw(rng: random.Random, weights: dict | None) -> str:
    ops = list(NB201_OPS)
    w = [weights.get(o, 0) for o in ops] if weights else None
    return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*rng.choices(ops, weights=w, k=6))


def score(pred, meas) -> tuple[float, float]:
    err = [p / m - 1 for p, m in zip(pred, meas)]
    return 100 * statistics.mean(abs(e) for e in err), 100 * sum(abs(e) <= 0.10 for e in err) / len(err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="networks per set (default 20)")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", type=int, default=10, help="other uniform cells to fit each in-context model on")
    ap.add_argument("--json", help="write every network's figures here")
    args = ap.parse_args()
    backend = get_backend(args.backend, threads=1)
    print(f"machine: {cpu_model()} [{cpu_id()}], {os.cpu_count()} logical cores; backend {backend.name}, 1 thread; "
          f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="hwcost-merges-") as tmp:
        table = profile(space_jobs("nb201", "nb201"), backend, Path(tmp) / "nb201.json", spaces=["nb201"],
                        progress=False, provenance={"space": "nb201", "by": "benchmarks/onnx_merges.py"})
    print(f"profiled {len(table)} nb201 keys here")
    rng = random.Random(args.seed)
    sets = {"uniform": [draw(rng, None) for _ in range(args.n)],
            "parameter-free heavy": [draw(rng, FREE_HEAVY) for _ in range(args.n)]}
    tests = [a for s in sets.values() for a in s]
    cal = []
    while len(cal) < args.calibrate:
        a = draw(rng, None)
        if a not in tests and a not in cal:
            cal.append(a)
    archs = tests + cal
    nets = [build_network(Nb201NetConfig(arch=a)) for a in archs]
    measured = [m.median * 1e3 for m in measure_models([(n, n.input_shape()) for n in nets], backend, NET_SETTINGS)]
    cm, overhead = CostModel(table), Overhead.from_table(table)
    preds = {"every call": [], "as the graph runs": []}
    for a, net in zip(archs, nets):
        preds["as the graph runs"].append(predict_nb201(a, table, incontext=None))
        preds["every call"].append(predict_counts(Counter(network_op_counts(net, net.input_shape())), cm, overhead))
    fitted = {}
    for variant, ps in preds.items():
        samples = [Sample.of_rows(a, p.per_key, ms, streamed=p.streamed)
                   for a, p, ms in zip(archs[len(tests):], ps[len(tests):], measured[len(tests):])]
        model = fit_in_context(samples, overhead.per_call_ms)
        fitted[variant] = [model.predict(s.features, s.n_ops) for s in
                           (Sample.of_rows(a, p.per_key, 1.0, streamed=p.streamed) for a, p in zip(tests, ps))]
        print(f"{variant}: in-context model on {len(samples)} cells, structure {model.structure}, "
              f"leave-one-out {model.mean:+.1%} +- {model.std:.1%}")
    rows = [{"arch": a, "measured_ms": ms, "merged_calls": sum(preds["as the graph runs"][i].merged.values()),
             **{f"{v} sum_ms": preds[v][i].latency_ms for v in preds},
             **{f"{v} calibrated_ms": fitted[v][i] for v in preds}}
            for i, (a, ms) in enumerate(zip(tests, measured))]
    print(f"{'set':<22} {'networks':>8} {'merged calls':>13}  " + "  ".join(
        f"{v + ' ' + k + ': MAPE / +-10%':>40}" for k in ("sum", "calibrated") for v in preds))
    i = 0
    for name, s in sets.items():
        r = rows[i:i + len(s)]
        i += len(s)
        m = [x["measured_ms"] for x in r]
        cells = []
        for k in ("sum", "calibrated"):
            for v in preds:
                mape, inside = score([x[f"{v} {k}_ms"] for x in r], m)
                cells.append(f"{mape:>31.1f}% / {inside:>4.0f}%")
        print(f"{name:<22} {len(r):>8} {statistics.mean(x['merged_calls'] for x in r):>13.1f}  " + "  ".join(cells))
    worst = max(rows, key=lambda x: x["merged_calls"])
    print(f"most merged: {worst['arch']} ({worst['merged_calls']} calls): measured {worst['measured_ms']:.3f} ms; "
          + "; ".join(f"{k}: every call {worst['every call ' + k + '_ms']:.3f}, as the graph runs "
                      f"{worst['as the graph runs ' + k + '_ms']:.3f} ms" for k in ("sum", "calibrated")))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_model(), "cpu_id": cpu_id(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
