"""Several devices in one search: 10 budget pairs on two NAS-Bench-201 devices that disagree.

    .venv/bin/python benchmarks/multi_device_budgets.py [--devices raspi4,eyeriss] [--k 10] [--epochs 4]
                     [--out benchmarks/results/multi_device]

For each of ``k`` budget pairs -- the i-th pair at the same quantile (10th..90th, evenly spread) of each
device's 15,625 measured latencies, the second device's quantile reversed so that the pairs pull apart
(a fast network on one device, a slow one on the other) -- two searches with default settings (DARTS
first order on digits, hard budgets, floor 0.85): one with both budgets (``--table A=.. --table B=..
--budget latency@A=.. --budget latency@B=..``) and one with the first device's budget only. The derived
architecture's real latencies are the devices' own measurements (the bundled HW-NAS-Bench tables). A hit:
every budget met, each measured latency in [85%, 100%] of its budget. Whether any architecture of the
space lies in both bands at all is reported per pair (by lookup): a pair with none cannot be hit.
Prints the machine and writes ``OUT/multi_device.json``.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="raspi4,eyeriss")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/multi_device"))
    args = ap.parse_args()
    import numpy as np
    from scipy.stats import spearmanr

    from device_tables import ArchKey, bundled_table_path, load_table
    from hwcost.pipeline import budget_ladder
    from profilers.environment import host_label
    from search.run import SearchConfig, run_search

    a, b = [d.strip() for d in args.devices.split(",")]
    ta, tb = load_table(bundled_table_path(a)), load_table(bundled_table_path(b))
    archs = [k.arch for k in ta.keys()]
    la = np.array([ta.latency_ms(ArchKey("nb201", x, "cifar10")) for x in archs])
    lb = np.array([tb.latency_ms(ArchKey("nb201", x, "cifar10")) for x in archs])
    print(f"{host_label()}, {os.cpu_count()} logical cores, {platform.system()}; devices {a} and {b}: "
          f"Spearman of their latencies over the space {spearmanr(la, lb)[0]:.3f}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}\n", flush=True)
    pairs = list(zip(budget_ladder(la, args.k), reversed(budget_ladder(lb, args.k))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (ba, bb) in enumerate(pairs):
        ba, bb = round(ba, 3), round(bb, 3)
        feasible = int(np.sum((la >= 0.85 * ba) & (la <= ba) & (lb >= 0.85 * bb) & (lb <= bb)))
        row = {"budget_ms": {a: ba, b: bb}, "feasible_archs": feasible}
        for mode in ("both", "first only"):
            run = out / f"pair{i}_{mode.replace(' ', '_')}"
            shutil.rmtree(run, ignore_errors=True)
            budgets = [f"latency@{a}={ba}ms"] + ([f"latency@{b}={bb}ms"] if mode == "both" else [])
            cfg = SearchConfig(space="nb201", data="digits", devices=[f"{a}={a}", f"{b}={b}"], budgets=budgets,
                               epochs=args.epochs, seed=args.seed)
            t0 = time.perf_counter()
            r = run_search(cfg, str(run), progress=False)
            ma, mb = (t.latency_ms(ArchKey("nb201", r["arch"], "cifar10")) for t in (ta, tb))
            hit = 0.85 * ba <= ma <= ba and 0.85 * bb <= mb <= bb
            row[mode] = {"arch": r["arch"], a: ma, b: mb, "hit": hit, "seconds": round(time.perf_counter() - t0, 1)}
            print(f"pair {i}: {a} <= {ba:7.3f} ms, {b} <= {bb:7.3f} ms ({feasible:5d} archs in both bands) | "
                  f"{mode:10s}: {a} {ma:7.3f} ({100 * ma / ba:3.0f}%)  {b} {mb:7.3f} ({100 * mb / bb:3.0f}%)  "
                  f"{'HIT' if hit else 'miss'}  {row[mode]['seconds']:.0f} s", flush=True)
        rows.append(row)
    for mode in ("both", "first only"):
        hits = sum(r[mode]["hit"] for r in rows)
        over_b = sum(r[mode][b] > r["budget_ms"][b] for r in rows)
        print(f"{mode}: hits {hits}/{len(rows)}; over the {b} budget {over_b}/{len(rows)}")
    (out / "multi_device.json").write_text(json.dumps({"machine": host_label(), "devices": [a, b], "rows": rows},
                                                      indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
