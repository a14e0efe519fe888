"""``make demo``: the main job, end to end on this machine, on embedded defaults.

1. profile this CPU with ONNX Runtime (1 thread, batch 1) at every op x shape
   of the network that will be deployed (DARTS space, CIFAR-10 eval network,
   C=36, 20 cells) -- or reuse that table if an earlier demo measured it;
2. fit the op-level latency surrogates to it and report their held-out error;
3. pick a latency budget inside the space's range on this CPU;
4. search (DARTS, first order) on scikit-learn's digits under that budget,
   the cost term being the deployed network's latency from the table;
5. derive the network, export it to ONNX (checked against PyTorch), measure it
   on ONNX Runtime and print budget vs predicted vs measured.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def _cpu() -> str:
    from profilers.environment import cpu_model
    return cpu_model() or platform.processor() or platform.machine()


def run_demo(out_dir: str = "out/demo", epochs: int = 8, budget_quantile: float = 0.3, seed: int = 0,
             backend: str = "ort-cpu") -> int:
    import onnxruntime
    import torch

    from costmodels.surrogate import fit_op_table
    from search.costs import cached_search_cost_tensor
    from search.run import SearchConfig, run_search
    from spaces import get_space

    from .pipeline import ensure_table, measure_derived, random_derived_costs

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"hwcost demo: {_cpu()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; results in {out}/\n")

    table_path = out / f"darts-cifar10_{backend}.json"
    print(f"1. Device table: every op x shape of the DARTS CIFAR-10 network (C=36, 20 cells) on {backend}, "
          f"1 thread, batch 1")
    t0 = time.perf_counter()
    table, measured = ensure_table(table_path, "darts", "cifar10", backend)
    print(f"   {len(table)} keys {'measured in' if measured else 'loaded in'} {time.perf_counter() - t0:.0f} s "
          f"-> {table_path}")

    print("\n2. Op-level latency surrogates (one per op type, family chosen by cross-validation)")
    surrogate_path = out / "surrogate.json"
    rep = fit_op_table(table, surrogate_path, seed=seed)
    if "heldout_mape" in rep:
        print(f"   held-out keys: {rep['n_test']} of {rep['keys']}; MAPE {100 * rep['heldout_mape']:.1f}%, "
              f"within 10%: {100 * rep['heldout_within_10']:.0f}% -> {surrogate_path}")
    else:
        print(f"   fitted on {rep['keys']} keys (too few per op type to hold any out) -> {surrogate_path}")

    ops = tuple(get_space("darts").primitives)
    # the same arguments as the search below, so that it reuses this tensor
    ct, _ = cached_search_cost_tensor("darts", "cifar10", ops, str(table_path), str(surrogate_path))
    lat = random_derived_costs(ct, n=500, seed=seed)[:, ct.index("latency_ms")].numpy()
    import numpy as np
    budget = float(np.quantile(lat, budget_quantile))
    budget = round(budget, 2)
    print(f"\n3. The space on this CPU: 500 random derived networks predict {lat.min():.2f} - {lat.max():.2f} ms "
          f"(median {np.median(lat):.2f}); budget = their {int(100 * budget_quantile)}th percentile: "
          f"latency <= {budget:.2f} ms")

    run_dir = out / "search"
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    print(f"\n4. Search: DARTS (first order), digits, {epochs} epochs, budget latency={budget:.2f}ms "
          f"(hard, dual ascent) -> {run_dir}/")
    cfg = SearchConfig(space="darts", strategy="darts", data="digits", network="cifar10", table=str(table_path),
                       surrogate=str(surrogate_path), budgets=[f"latency={budget}ms"], epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    r = run_search(cfg, str(run_dir))
    g = r["genotype"]
    print(f"   {time.perf_counter() - t0:.0f} s; supernet accuracy on held-out digits "
          f"{100 * r['supernet_val_accuracy']:.1f}%")
    print(f"   normal: {g['normal']}")
    print(f"   reduce: {g['reduce']}")

    print(f"\n5. Export the derived network to ONNX, check it, measure it on {backend} (1 thread)")
    from spaces.genotypes import genotype_from_dict
    geno = genotype_from_dict(g)
    m = measure_derived("darts", geno, "cifar10", backend, onnx_path=out / "derived.onnx")
    print(f"   {m['onnx']}: {m['onnx_nodes']} nodes, max |ORT - PyTorch| {m['onnx_max_abs_diff']:.1e}")

    pred = r["derived"]["latency_ms"]
    meas = m["latency_ms"]
    print("\n   budget      predicted (table)   measured (whole network, median [p10, p90])")
    print(f"   {budget:6.2f} ms   {pred:6.2f} ms ({100 * pred / budget:3.0f}%)    "
          f"{meas:6.2f} ms ({100 * meas / budget:3.0f}%) [{m['p10_ms']:.2f}, {m['p90_ms']:.2f}]   "
          f"{'within budget' if meas <= budget else 'OVER budget'}")
    print(f"   params {r['derived']['params'] / 1e6:.2f} M, MACs {r['derived']['macs'] / 1e6:.0f} M "
          f"(CIFAR-10 network, C=36, 20 cells)")
    summary = {"budget_ms": budget, "predicted_ms": pred, "measured": m, "genotype": g,
               "table": str(table_path), "seconds": round(time.perf_counter() - t_start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s; summary in {out / 'summary.json'}")
    return 0
