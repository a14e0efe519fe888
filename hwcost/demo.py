"""``make demo``: the main job, end to end on this machine, on embedded defaults.

1. profile this CPU with ONNX Runtime (1 thread, batch 1) at every op x shape
   of the network that will be deployed (DARTS space, CIFAR-10 eval network,
   C=36, 20 cells) -- or reuse that table if an earlier demo measured it;
2. fit the op-level latency surrogates to it and report their held-out error;
3. calibrate the table's in-context model on 10 random networks measured
   whole (``hwcost calibrate``), unless an earlier demo did;
4. pick a latency budget inside the space's range on this CPU;
5. search (DARTS, first order) on scikit-learn's digits under that budget at
   90 % confidence, the cost term being the deployed network's calibrated latency;
6. derive the network, export it to ONNX (checked against PyTorch), measure it
   on ONNX Runtime; outside [85 %, 100 %] of the budget, add it to the
   calibration and derive again (``hwcost search --verify``); print every round.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path




def run_demo(out_dir: str = "out/demo", epochs: int = 8, budget_quantile: float = 0.3, seed: int = 0,
             backend: str = "ort-cpu", calibration_networks: int = 10, network_time_s: float = 3.0) -> int:
    import onnxruntime
    import torch

    from profilers.environment import host_label
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"hwcost demo: {host_label()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; results in {out}/\n")
    table_path = out / f"darts-cifar10_{backend}.json"
    _table_step(table_path, backend)
    surrogate_path = _surrogate_step(table_path, out / "surrogate.json", seed)
    sm = _calibration_step(table_path, calibration_networks, seed, network_time_s)
    budget = _budget_step(table_path, surrogate_path, budget_quantile, seed)
    cfg, r = _search_step(out / "search", table_path, surrogate_path, budget, epochs, seed)
    r, ex = _verify_step(cfg, out, r, budget, backend, network_time_s)
    last = r["verify"]["rounds"][-1]
    m = {"latency_ms": last["measured_ms"], "p10_ms": last["measured_p10_ms"], "p90_ms": last["measured_p90_ms"],
         "n": len(r["verify"]["rounds"]), "onnx": ex.path, "onnx_nodes": ex.n_nodes,
         "onnx_max_abs_diff": ex.max_abs_diff}
    summary = {"budget_ms": budget, "predicted_ms": last["predicted_ms"], "measured": m, "genotype": r["genotype"],
               "verify": r["verify"], "host": host_label(), "calibration": sm,
               "table": str(table_path), "seconds": round(time.perf_counter() - t_start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s; summary in {out / 'summary.json'}")
    return 0


def _table_step(table_path: Path, backend: str) -> None:
    from .pipeline import ensure_table
    print(f"1. Device table: every op x shape of the DARTS CIFAR-10 network (C=36, 20 cells) on {backend}, "
          f"1 thread, batch 1")
    t0 = time.perf_counter()
    table, measured = ensure_table(table_path, "darts", "cifar10", backend)
    print(f"   {len(table)} keys {'measured in' if measured else 'loaded in'} {time.perf_counter() - t0:.0f} s "
          f"-> {table_path}")


def _surrogate_step(table_path: Path, surrogate_path: Path, seed: int) -> Path:
    from costmodels.surrogate import fit_op_table
    from device_tables import load_table
    print("\n2. Op-level latency surrogates (one per op type, family chosen by cross-validation)")
    rep = fit_op_table(load_table(table_path), surrogate_path, seed=seed)
    if "heldout_mape" in rep:
        print(f"   held-out keys: {rep['n_test']} of {rep['keys']}; MAPE {100 * rep['heldout_mape']:.1f}%, "
              f"within 10%: {100 * rep['heldout_within_10']:.0f}% -> {surrogate_path}")
    else:
        print(f"   fitted on {rep['keys']} keys (too few per op type to hold any out) -> {surrogate_path}")
    return surrogate_path


def _calibration_step(table_path: Path, n: int, seed: int, network_time_s: float) -> dict:
    from costmodels.incontext import model_of
    from device_tables import load_table

    from .calibrate import calibrate, network_settings
    print("\n3. In-context model: the table's ops summed vs whole networks measured on this CPU")
    table = load_table(table_path)
    if table.calibration is None:
        t0 = time.perf_counter()
        table, ic = calibrate(table, table_path, n=n, seed=seed, settings=network_settings(network_time_s),
                              log=lambda line: print("   " + line))
        how = f"{n} random networks measured in {time.perf_counter() - t0:.0f} s"
    else:
        ic = model_of(table)
        how = f"reused from {table_path} ({len(ic.samples)} networks, {ic.created})"
    sm = ic.summary()
    print(f"   {how}; leave-one-out error MAPE {sm['loo_mape']:.1%} (mean {sm['loo_mean']:+.1%}, sd "
          f"{sm['loo_std']:.1%}); networks run {1 / sm['default_factor'] - 1:+.0%} against the sum of their ops")
    return sm


def _budget_step(table_path: Path, surrogate_path: Path, quantile: float, seed: int) -> float:
    import numpy as np

    from search.costs import cached_search_cost_tensor
    from spaces import get_space

    from .pipeline import random_derived_costs
    ops = tuple(get_space("darts").primitives)
    # the same arguments as the search below, so that it reuses this tensor
    ct, _ = cached_search_cost_tensor("darts", "cifar10", ops, str(table_path), str(surrogate_path))
    lat = random_derived_costs(ct, n=500, seed=seed)[:, ct.index("latency_ms")].numpy()
    budget = round(float(np.quantile(lat, quantile)), 2)
    print(f"\n4. The space on this CPU: 500 random derived networks predict {lat.min():.2f} - {lat.max():.2f} ms "
          f"(median {np.median(lat):.2f}); budget = their {int(100 * quantile)}th percentile: "
          f"latency <= {budget:.2f} ms")
    return budget


def _search_step(run_dir: Path, table_path: Path, surrogate_path: Path, budget: float, epochs: int, seed: int):
    from search.run import SearchConfig, run_search

    from .pipeline import progress_default
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    print(f"\n5. Search: DARTS (first order), digits, {epochs} epochs, budget latency={budget:.2f}ms at 90% "
          f"confidence (hard, dual ascent) -> {run_dir}/")
    cfg = SearchConfig(space="darts", strategy="darts", data="digits", network="cifar10", table=str(table_path),
                       surrogate=str(surrogate_path), budgets=[f"latency={budget}ms"], epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    r = run_search(cfg, str(run_dir), progress=progress_default())   # a bar on a terminal only
    print(f"   aimed at {r['budgets']['latency_ms']:.2f} ms (the calibrated 90% bound is "
          f"{r['confidence']['upper_factor']:.3f} x the prediction)")
    g = r["genotype"]
    print(f"   {time.perf_counter() - t0:.0f} s; supernet accuracy on held-out digits "
          f"{100 * r['supernet_val_accuracy']:.1f}%")
    print(f"   normal: {g['normal']}")
    print(f"   reduce: {g['reduce']}")
    return cfg, r


def _verify_step(cfg, out: Path, r: dict, budget: float, backend: str, network_time_s: float):
    import torch

    from profilers.export import export_onnx
    from spaces import build_network, network_config
    from spaces.genotypes import genotype_from_dict

    from .calibrate import network_settings
    from .verify import predicted_text, share_text, verify_search
    print(f"\n6. Export the derived network to ONNX, check it, measure it on {backend} (1 thread); outside "
          f"[85%, 100%] of the budget: add it to the calibration and derive again around it")
    net = build_network(network_config("cifar10", genotype_from_dict(r["genotype"]), "darts"))
    torch.manual_seed(0)
    ex = export_onnx(net.eval(), torch.randn(*net.input_shape(1)), str(out / "derived.onnx"))
    print(f"   {ex.path}: {ex.n_nodes} nodes, max |ORT - PyTorch| {ex.max_abs_diff:.1e}")
    r = verify_search(cfg, out / "search", r, rounds=3, settings=network_settings(network_time_s),
                      log=lambda line: None)
    rounds = r["verify"]["rounds"]
    print("\n   round  budget      predicted [90% interval]           measured (median [p10, p90])")
    for v in rounds:
        scaled = f"   then re-derived with the model x {v['correction']['scale']:.3f}" if v.get("correction") else ""
        print(f"   {v['round']:>5}  {budget:6.2f} ms    {predicted_text(v, 2):<20}"
              f"   {v['measured_ms']:6.2f} ms ({share_text(v['measured_ms'], budget, v.get('floor_ms')):>4}) "
              f"[{v['measured_p10_ms']:.2f}, {v['measured_p90_ms']:.2f}]   "
              f"{'in [85%, 100%]' if v['in_band'] else ('OVER budget' if v['measured_ms'] > budget else 'under 85%')}"
              + scaled)
        if v.get("finetune"):
            f = v["finetune"]
            print(f"          it led back to a network measured already: {f['steps']} search steps under the "
                  f"corrected costs moved the expected latency {f['expected_before'].get('latency_ms', 0):.2f} -> "
                  f"{f['expected_after'].get('latency_ms', 0):.2f} ms"
                  + ("" if f["new_network"] else ", still to a network measured already"))
    if r["verify"].get("stopped"):
        print(f"   verify stopped: {r['verify']['stopped']}")
    if len(rounds) > 1:
        g = r["genotype"]
        print(f"   final normal: {g['normal']}")
        print(f"   final reduce: {g['reduce']}")
    print(f"   params {r['derived']['params'] / 1e6:.2f} M, MACs {r['derived']['macs'] / 1e6:.0f} M "
          f"(CIFAR-10 network, C=36, 20 cells)")
    return r, ex
