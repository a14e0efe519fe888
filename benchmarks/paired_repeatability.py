"""How well does one measurement of a network repeat on this host: by the clock, or run by run beside candles?

    .venv/bin/python benchmarks/paired_repeatability.py [--backend ort-cpu] [--n 12] [--seconds 2] [--passes 3]

``--n`` random DARTS networks (C=36, 20 cells, 1x3x32x32, one thread) and 3
other random ones (the candles, as ``hwcost search --verify`` uses 3
calibration networks) are prepared once, then measured in ``--passes`` passes
(order reversed every other pass, so a network's passes fall minutes apart).
In each pass every network is timed with :meth:`Backend.measure_paired` for
``--seconds``: each run right after one run of a DARTS candle (rotating), and
again right after one run of the host's reference kernel (a lone 3x3 conv,
``profilers.profile.reference_module``). From the same runs:

* by the clock: the median run (what a plain timing loop reports);
* run by run beside a DARTS candle: the median of time / the candle's time
  just before (what ``hwcost.verify.measure_beside_candles`` brings to the
  calibration's phase, up to the candles' constant times then);
* run by run beside the lone conv: the same ratio to the reference kernel.

Prints, for every pair of passes and every network, how far the two figures
agree: the share within +-5 % and +-2 % and the sd of log(pass b / pass a) --
the ceiling of any prediction's agreement with one measurement on this host.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.profile import prepare_models, reference_module  # noqa: E402
from spaces import build_network, network_config, random_genotype  # noqa: E402


def agreement(figures: list[list[float]]) -> dict:
    """figures[pass][network] -> how far two passes' figures of one network agree, over all pairs of passes."""
    r = np.array([b / a for i, pa in enumerate(figures) for pb in figures[i + 1:] for a, b in zip(pa, pb)])
    return {"pairs": int(r.size), "within_5": float(np.mean(np.abs(r - 1) <= 0.05)),
            "within_2": float(np.mean(np.abs(r - 1) <= 0.02)), "sd_log": float(np.std(np.log(r), ddof=1))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--n", type=int, default=12, help="random DARTS networks (default 12)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per network, per pass and way (default 2)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.n < 1 or args.passes < 2 or args.seconds <= 0:
        ap.error("--n >= 1, --passes >= 2 and --seconds > 0")
    warnings.filterwarnings("ignore")
    dev = device_info()
    print(f"machine: {dev['cpu']}, {dev['logical_cores']} logical cores; backend {args.backend}, 1 thread; "
          f"{args.n} networks, {args.passes} passes of {args.seconds:g} s per network and way", flush=True)
    rng = random.Random(args.seed)
    nets = [build_network(network_config("cifar10", random_genotype(rng))) for _ in range(args.n + 3)]
    models = [(n, n.input_shape(1)) for n in nets]
    backend = get_backend(args.backend, threads=1)
    settings = Settings(max_time_s=args.seconds)
    clock, darts, conv = [], [], []
    t0 = time.perf_counter()
    with backend.active():
        fns = prepare_models(models, backend)
        tests, lights = fns[3:], fns[:3]
        ref = prepare_models([reference_module()], backend)
        for p in range(args.passes):
            order = list(range(args.n)) if p % 2 == 0 else list(reversed(range(args.n)))
            beside = dict(zip(order, backend.measure_paired([tests[i] for i in order], lights, settings)))
            alone = dict(zip(order, backend.measure_paired([tests[i] for i in order], ref, settings)))
            clock.append([statistics.median(beside[i].times) for i in range(args.n)])
            darts.append([beside[i].in_phase([1.0, 1.0, 1.0]).median for i in range(args.n)])
            conv.append([alone[i].in_phase([1.0]).median for i in range(args.n)])
            lit = [c for i in range(args.n) for c in beside[i].candle_times]
            print(f"pass {p}: networks' median run {min(clock[-1]) * 1e3:.2f}-{max(clock[-1]) * 1e3:.2f} ms; "
                  f"candles' runs {np.quantile(lit, 0.1) * 1e3:.2f}-{np.quantile(lit, 0.9) * 1e3:.2f} ms (p10-p90); "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{'figure of one network':<52} {'within 5%':>9} {'within 2%':>9} {'sd log':>7}")
    for what, figs in (("median run, by the clock", clock),
                       ("median of run / DARTS candle's run just before", darts),
                       ("median of run / lone conv's run just before", conv)):
        a = agreement(figs)
        print(f"{what:<52} {a['within_5']:>9.0%} {a['within_2']:>9.0%} {a['sd_log']:>7.2%}")
    print(f"({args.n} networks x {args.passes * (args.passes - 1) // 2} pairs of passes; load average "
          f"{'/'.join(f'{x:.2f}' for x in __import__('os').getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
