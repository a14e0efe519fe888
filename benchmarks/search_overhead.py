"""Cost-term overhead: search step time with vs without resource terms.

    .venv/bin/python benchmarks/search_overhead.py [--steps 30] [--threads 2] [--config small|large]

One first-order step = the alpha step (validation loss + the objective's
penalty: a hard latency budget from the bundled ort-cpu table and a hard params
budget, both through the derivation-aware expected cost of the CIFAR-10 eval
network, with the dual-ascent update) and the weight step. "without" runs the
same step with a zero penalty and no dual update. The two variants alternate
step by step (ABAB...) in one process, so drift of a shared machine hits both
alike; the median of each and their ratio are reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"small": (dict(C=8, layers=5), 64, 8), "large": (dict(C=16, layers=8), 16, 32)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from costmodels.expected_cost import ExpectedCost
    from profilers.environment import cpu_model
    from search.costs import search_cost_tensor
    from search.fast import accelerate
    from search.objective import Objective, parse_term
    from search.strategies import Architect, get_strategy
    from search.supernet import SupernetConfig, build_supernet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw, batch, size = CONFIGS[args.config]
    spec = get_strategy("darts")
    cfg = SupernetConfig(num_classes=10, **kw)
    model = accelerate(build_supernet(cfg))
    ct, _ = search_cost_tensor("darts", "cifar10", cfg.ops(), str(ROOT / "device_tables/data/darts_ort-cpu.json"))
    expected = ExpectedCost(ct, mode="derived")
    terms = [parse_term("latency=20ms", "hard"), parse_term("params=2.5M", "hard")]
    objective = Objective(terms, ct.metrics, 0.5, 0.85)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=spec.weight_lr, momentum=0.9, weight_decay=3e-4)
    with_costs = {"on": True}

    def penalty():
        if not with_costs["on"]:
            return torch.zeros(())
        return objective.penalty(expected(model.alphas, model.betas))

    architect = Architect(model, spec, w_opt, penalty)
    data = [(torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))) for _ in range(4)]

    def step(i: int) -> None:
        (xt, yt), (xv, yv) = data[i % 2], data[2 + i % 2]
        architect.step(xt, yt, xv, yv, spec.weight_lr)
        if with_costs["on"]:
            with torch.no_grad():
                objective.dual_step(expected(model.alphas, model.betas))
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
        w_opt.step()

    times = {True: [], False: []}
    for i in range(2 * (args.warmup + args.steps)):
        on = i % 2 == 0
        with_costs["on"] = on
        t0 = time.perf_counter()
        step(i)
        if i >= 2 * args.warmup:
            times[on].append(time.perf_counter() - t0)
    # the cost term alone: forward + backward of the penalty
    t_pen = []
    for _ in range(200):
        t0 = time.perf_counter()
        p = objective.penalty(expected(model.alphas, model.betas))
        torch.autograd.grad(p, model.arch_parameters(), allow_unused=True)
        t_pen.append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{cpu_model()}, {os.cpu_count()} logical cores, {args.threads} threads; load average "
          f"{tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"config {args.config}: {kw}, batch {batch}, {size}x{size}; {args.steps} steps each, interleaved")
    print(f"  without cost terms: median {off:.4f} s (min {min(times[False]):.4f}, max {max(times[False]):.4f})")
    print(f"  with latency + params budgets: median {on:.4f} s (min {min(times[True]):.4f}, max {max(times[True]):.4f})")
    print(f"  overhead: {100 * (on / off - 1):+.2f}% of a step; the penalty's forward+backward alone: "
          f"median {1e3 * statistics.median(t_pen):.2f} ms ({100 * statistics.median(t_pen) / off:.2f}% of a step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
