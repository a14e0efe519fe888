"""Budgets met without tuning: one search per latency budget, the derived network checked.

    .venv/bin/python benchmarks/search_budgets.py [--parts darts,nb201] [--epochs 8] [--k 5]
                     [--darts-table device_tables/data/darts_ort-cpu.json] [--out benchmarks/results/budgets]

* darts: the bundled ``ort-cpu`` table (the CIFAR-10 eval network, C=36, 20
  cells, is what is deployed and priced), scikit-learn's digits as data.
  ``k`` budgets evenly spread between the 10th and 90th percentile of the
  predicted latency of 500 random derived networks. For each: one ``hwcost
  search``-equivalent run (DARTS first order, hard budget with dual ascent,
  default settings, no per-budget tuning), the derived network's predicted
  latency (table), then the network exported to ONNX and measured whole on
  ONNX Runtime CPU, 1 thread.
* nb201: the bundled ``raspi4`` architecture-level table (HW-NAS-Bench's
  Raspberry Pi 4 latencies); ``k`` budgets between the 10th and 90th
  percentile of the table's 15,625 latencies; the derived architecture's real
  latency is read from the table.

Target: every derived network within its budget and at >= 85% of it.
Prints the machine and writes ``OUT/budgets.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    import onnxruntime
    import torch

    from profilers.environment import cpu_model
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
            f"load average {tuple(round(x, 2) for x in os.getloadavg())}")


def darts_part(args, out: Path) -> list[dict]:
    from search.costs import cached_search_cost_tensor
    from search.run import SearchConfig, run_search
    from spaces import get_space
    from spaces.genotypes import genotype_from_dict

    from hwcost.pipeline import budget_ladder, measure_derived, random_derived_costs
    table = args.darts_table
    ct, notes = cached_search_cost_tensor("darts", "cifar10", tuple(get_space("darts").primitives), table)
    lat = random_derived_costs(ct, 500, seed=0)[:, ct.index("latency_ms")].numpy()
    budgets = [round(b, 2) for b in budget_ladder(lat, args.k)]
    print(f"darts, table {table} ({notes['overhead']['source']}); 500 random derived networks: "
          f"{lat.min():.2f}-{lat.max():.2f} ms; budgets {budgets}", flush=True)
    rows = []
    for b in budgets:
        run = out / f"darts_{b:.2f}ms"
        shutil.rmtree(run, ignore_errors=True)
        cfg = SearchConfig(space="darts", strategy="darts", data="digits", network="cifar10", table=table,
                           budgets=[f"latency={b}ms"], epochs=args.epochs, seed=args.seed)
        t0 = time.perf_counter()
        r = run_search(cfg, str(run), progress=False)
        secs = time.perf_counter() - t0
        m = measure_derived("darts", genotype_from_dict(r["genotype"]), "cifar10", "ort-cpu")
        row = {"space": "darts", "budget_ms": b, "predicted_ms": r["derived"]["latency_ms"],
               "measured_ms": m["latency_ms"], "measured_p10_ms": m["p10_ms"], "measured_p90_ms": m["p90_ms"],
               "repaired_edges": r["repaired_edges"], "search_s": round(secs, 1),
               "params": r["derived"]["params"], "genotype": r["genotype"]}
        rows.append(row)
        print(f"  budget {b:6.2f} ms: predicted {row['predicted_ms']:6.2f} ({100 * row['predicted_ms'] / b:3.0f}%)"
              f"  measured {row['measured_ms']:6.2f} ({100 * row['measured_ms'] / b:3.0f}%) "
              f"[p10 {m['p10_ms']:.2f}, p90 {m['p90_ms']:.2f}]  repaired edges {r['repaired_edges']}"
              f"  search {secs:.0f} s", flush=True)
    return rows


def nb201_part(args, out: Path) -> list[dict]:
    from device_tables import load_table
    from search.run import SearchConfig, run_search

    from hwcost.pipeline import budget_ladder
    from device_tables import bundled_table_path
    table = load_table(bundled_table_path(args.nb201_table))
    lat = [table.get(k).median_ms for k in table.keys()]
    budgets = [round(b, 2) for b in budget_ladder(lat, args.k)]
    print(f"nb201, table {args.nb201_table} ({len(lat)} architectures, {min(lat):.2f}-{max(lat):.2f} ms); "
          f"budgets {budgets}", flush=True)
    rows = []
    for b in budgets:
        run = out / f"nb201_{b:.2f}ms"
        shutil.rmtree(run, ignore_errors=True)
        cfg = SearchConfig(space="nb201", strategy="darts", data="digits", table=args.nb201_table,
                           budgets=[f"latency={b}ms"], epochs=args.epochs, seed=args.seed)
        t0 = time.perf_counter()
        r = run_search(cfg, str(run), progress=False)
        secs = time.perf_counter() - t0
        row = {"space": "nb201", "budget_ms": b, "table_ms": r["derived"]["latency_ms"],
               "additive_model_ms": r["derived"].get("latency_ms_predicted"), "arch": r["arch"],
               "repaired_edges": r["repaired_edges"], "search_s": round(secs, 1)}
        rows.append(row)
        print(f"  budget {b:6.2f} ms: measured (table) {row['table_ms']:6.2f} ({100 * row['table_ms'] / b:3.0f}%)"
              f"  {r['arch']}  changed edges {r['repaired_edges']}  search {secs:.0f} s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="darts,nb201")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--darts-table", default=str(ROOT / "device_tables/data/darts_ort-cpu.json"))
    ap.add_argument("--nb201-table", default="raspi4")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/budgets"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}\n", flush=True)
    rows = []
    if "darts" in args.parts:
        rows += darts_part(args, out)
    if "nb201" in args.parts:
        rows += nb201_part(args, out)

    def ok(r):
        v = r.get("measured_ms", r.get("table_ms"))
        return v is not None and 0.85 * r["budget_ms"] <= v <= r["budget_ms"]
    print(f"\nwithin budget and >= 85% of it: {sum(ok(r) for r in rows)}/{len(rows)} "
          f"(darts judged on the measured latency, nb201 on the table's)")
    print(f"load average at the end {tuple(round(x, 2) for x in os.getloadavg())}")
    (out / "budgets.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
