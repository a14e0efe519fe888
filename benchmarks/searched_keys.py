"""Op keys vs ORT node keys on the networks a budget search derived, calibrated alike.

    .venv/bin/python benchmarks/searched_keys.py --op-table OP.json --node-table NODES.json[.gz]
                     [--budgets benchmarks/results/budgets/budgets.json ...] [--calibrate 20] [--random 20]
                     [--skew 0.5] [--seed 30000]
    .venv/bin/python benchmarks/searched_keys.py --rescore results/searched_keys.json --op-table OP.json

Random networks are what a calibration sees; a search derives networks that are
not random (it favours some ops, some edges).  This benchmark asks which keys
carry a calibration from the one to the other: the DARTS networks that
``benchmarks/search_budgets.py`` derived on ort-cpu (every verify round's
network, from its ``budgets.json``) and K random networks of the space (never
one of them) are exported to ONNX and measured whole, interleaved, in one
session, with K *skewed* random networks (each cell's ops drawn from its own
Dirichlet mix: cells of mostly one or two ops, as searches derive) and some
uniform random ones to score.  The in-context model is fitted on each
calibration set only, once from the op table (the space's op keys, as the
search's cost tensor prices them) and once from the node table (the nodes
ONNX Runtime runs; its missing nodes are profiled first), and each fit
predicts the searched and the random networks.

Both tables must come from this host (``device.cpu_id``); the op table is e.g.
a ``darts_ort-cpu_*.table.json`` of ``search_budgets.py``, the node table e.g.
``zoo_accuracy.py --darts N --via onnx``'s ``results/zoo_*_table.json.gz``.
Output: ``results/searched_keys.txt`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.incontext import Sample, fit_in_context  # noqa: E402
from costmodels.predict import Overhead, predict_network  # noqa: E402
from costmodels.surrogate import accuracy  # noqa: E402
from device_tables import load_table  # noqa: E402
from hwcost.calibrate import _profile_missing_layers, arch_spec, build_spec, space_specs  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info, host_label, same_host  # noqa: E402
from profilers.export import export_graph  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.profile import measure_models  # noqa: E402


def searched_specs(path: Path, backend: str) -> list[dict]:
    """Every distinct network the verify rounds of ``search_budgets.py`` derived on ``backend``."""
    archs: list[str] = []
    for row in json.loads(path.read_text())["rows"]:
        if row["backend"] == backend and row.get("space", "darts") == "darts":
            for rd in row["rounds"]:
                if rd["arch"] not in archs:
                    archs.append(rd["arch"])
    return [arch_spec("darts", "cifar10", json.loads(a)) for a in archs]


def summary(predicted, measured) -> dict:
    """The field's figures (``costmodels.surrogate.accuracy``) with the relative error's mean and sd."""
    errors = np.asarray(predicted, float) / np.asarray(measured, float) - 1
    return {**accuracy(measured, predicted), "mean_signed": float(errors.mean()), "sd": float(errors.std()),
            "errors": errors.tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op-table", required=True)
    ap.add_argument("--node-table", help="required unless --rescore")
    ap.add_argument("--rescore", metavar="JSON", help="a saved run's op-key fits again from its measurements "
                                                     "(with --op-table, that run's; nothing measured)")
    ap.add_argument("--budgets", action="append",
                    help="a search_budgets.py budgets.json whose derived networks to score (repeatable; default "
                         "benchmarks/results/budgets/budgets.json)")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--calibrate", type=int, default=20, metavar="K")
    ap.add_argument("--random", type=int, default=20, help="uniform random networks scored beside the searched ones")
    ap.add_argument("--skew", type=float, default=0.5,
                    help="Dirichlet concentration of the skewed calibration set (each cell its own op mix)")
    ap.add_argument("--seed", type=int, default=30000, help="seed of the calibration networks")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    lines: list[str] = []
    log = lambda line: (print(line, flush=True), lines.append(line))  # noqa: E731
    if args.rescore:
        rescore(args.rescore, args.op_table, log)
        return 0
    if not args.node_table:
        raise SystemExit("--node-table is required (unless --rescore)")
    op_table, node_table = load_table(args.op_table), load_table(args.node_table)
    for t in (op_table, node_table):
        same, why = same_host(t.device)
        if not same:
            raise SystemExit(f"{t.source}: {why}; profile both tables on this host")
    log(f"machine: {host_label()}, {device_info()['logical_cores']} logical cores")
    log(f"command: {' '.join(['benchmarks/searched_keys.py'] + sys.argv[1:])}")
    searched = []
    for path in args.budgets or [str(ROOT / "benchmarks" / "results" / "budgets" / "budgets.json")]:
        searched += [s for s in searched_specs(Path(path), args.backend) if s not in searched]
    K = args.calibrate
    sets = {"calibration, uniform": space_specs("darts", "cifar10", K, args.seed, exclude=searched)}
    sets[f"calibration, skewed ({args.skew})"] = space_specs("darts", "cifar10", K, args.seed + 1, skew=args.skew,
                                                            exclude=searched + sets["calibration, uniform"])
    sets["searched"] = searched
    sets["random"] = space_specs("darts", "cifar10", args.random, args.seed + 2,
                                 exclude=[s for v in sets.values() for s in v])
    specs = [s for v in sets.values() for s in v]
    log(", ".join(f"{len(v)} {k}" for k, v in sets.items()) + f" networks ({', '.join(args.budgets or ['default'])})")
    backend = get_backend(args.backend, threads=1)
    nets = [build_spec(s) for s in specs]
    graphs = [(export_graph(n.eval(), shape, f"net{i}"), shape) for i, (n, shape) in enumerate(nets)]
    node_table = _profile_missing_layers(node_table, graphs, backend, log)
    t0 = time.perf_counter()
    measured = measure_models(graphs, backend, Settings(max_time_s=3.0, passes=10))
    log(f"{len(graphs)} networks measured whole, interleaved, in {time.perf_counter() - t0:.0f} s")
    out = {"machine": device_info(), "sets": sets, "measured_ms": [m.median * 1e3 for m in measured], "fits": []}
    out["fits"] = score(sets, out["measured_ms"], (("ops", op_table, nets), ("nodes", node_table, graphs)), log)
    d = Path(args.out_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "searched_keys.json").write_text(json.dumps(out, indent=1))
    (d / "searched_keys.txt").write_text("\n".join(lines) + "\n")
    return 0


def score(sets: dict, measured_ms: list, keyings, log) -> list[dict]:
    """Fit the in-context model on each calibration set, per keying ``(keys, table, [(model, shape)])``, and
    score the searched and the random networks; the fits' rows."""
    span, i = {}, 0
    for name, v in sets.items():
        span[name] = range(i, i + len(v))
        i += len(v)
    fits = []
    log(f"\n{'keys':>5} {'calibrated on':<24} {'structure':<9} {'scored on':<9} {'mean':>7} {'sd':>6} "
        f"{'MAPE':>6} {'<=5%':>5} {'<=10%':>6}")
    for keys, table, models in keyings:
        samples = []
        for (model, shape), ms in zip(models, measured_ms):
            p = predict_network(model, shape, table, incontext=None)
            samples.append(Sample.of_rows(keys, p.per_key, ms, streamed=p.streamed))
        for cal in [k for k in sets if k.startswith("calibration")]:
            ic = fit_in_context([samples[j] for j in span[cal]], Overhead.from_table(table).per_call_ms)
            for scored in ("searched", "random"):
                s = summary([ic.predict(samples[j].features, samples[j].n_ops) for j in span[scored]],
                            [samples[j].measured_ms for j in span[scored]])
                fits.append({"keys": keys, "calibration": cal, "structure": ic.structure, "lambda": ic.lam,
                             "scored": scored, **s})
                log(f"{keys:>5} {cal[13:]:<24} {ic.structure:<9} {scored:<9} {s['mean_signed']:>+7.1%} "
                    f"{s['sd']:>6.1%} {s['mape']:>6.2%} {s['within_5']:>5.0%} {s['within_10']:>6.0%}")
    return fits


def rescore(path: str, op_table: str, log) -> None:
    """The op keys' fits of a saved run again from its measurements, priced by today's code (nothing measured;
    the op table is the run's, from its host)."""
    saved = json.loads(Path(path).read_text())
    log(f"rescoring {path} (measured on {saved['machine'].get('cpu_id') or saved['machine'].get('cpu')}) "
        f"with op table {op_table}, nothing measured")
    nets = [build_spec(s) for v in saved["sets"].values() for s in v]
    score(saved["sets"], saved["measured_ms"], (("ops", load_table(op_table), nets),), log)


if __name__ == "__main__":
    raise SystemExit(main())
