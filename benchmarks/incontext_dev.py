"""Development set for the in-context model: which op grouping, how many calibration networks.

    .venv/bin/python benchmarks/incontext_dev.py [--backend ort-cpu] [--n 40] [--seed 20000]

Profiles the darts CIFAR-10 keys, measures ``--n`` random genotypes (seed 20000: none of
``predict_accuracy.py``'s test or calibration networks) in one interleaved session, then scores
groupings of the in-context model (``costmodels.incontext``) by random splits: fit on 10 or 20
networks, predict the rest; 10 splits each. Also prints the networks' own measurement noise (second
quietest window / quietest). Calibration and scoring share one session here, so this is the model's
error without drift between sessions (compare ``predict_accuracy.py``, which calibrates first).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.incontext import Sample, fit_in_context  # noqa: E402
from costmodels.predict import predict_genotype  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import host_label  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.profile import measure_models, profile, space_jobs  # noqa: E402
from spaces import build_network, network_config, random_genotype  # noqa: E402

GROUPINGS = {
    "op (shipped)": lambda k: k.op,
    "op@resolution": lambda k: f"{k.op}@{k.h}",
    "op@stride": lambda k: f"{k.op}@s{k.stride}",
    "conv / other": lambda k: "conv" if "conv" in k.op else "other",
    "one scale": lambda k: "all",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20000)
    args = ap.parse_args()
    print(f"machine: {host_label()}; command: benchmarks/incontext_dev.py {' '.join(sys.argv[1:])}", flush=True)
    be = get_backend(args.backend, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        table = profile(space_jobs("darts", "cifar10"), be, Path(tmp) / "t.json", spaces=["darts"], progress=False,
                        provenance={"space": "darts", "networks": ["cifar10"]})
    rng = random.Random(args.seed)
    gs = [random_genotype(rng) for _ in range(args.n)]
    nets = [build_network(network_config("cifar10", g)) for g in gs]
    ms = measure_models([(n, n.input_shape(1)) for n in nets], be, Settings(max_time_s=3.0, passes=10))
    preds = [predict_genotype(g, table, incontext=None) for g in gs]
    y = np.array([m.median * 1e3 for m in ms])
    noise = np.median([sorted(m.pass_medians)[1] / sorted(m.pass_medians)[0] for m in ms])
    print(f"{args.n} networks measured; second-quietest / quietest window: median {noise:.4f}")
    split = np.random.default_rng(0)
    for name, group in GROUPINGS.items():
        samples = []
        for i, p in enumerate(preds):
            f, n_ops = {}, 0
            for key, n, a, t, _ in p.per_key:  # (tables of this script hold no weight-stream probe)
                if n - a > 0:
                    f[group(key)] = f.get(group(key), 0.0) + (n - a) * t
                    n_ops += n - a
            samples.append(Sample(str(i), f, n_ops, float(y[i])))
        out = []
        for ncal in (10, 20):
            errs = []
            for _ in range(10):
                idx = split.permutation(len(samples))
                m = fit_in_context([samples[i] for i in idx[:ncal]], preds[0].overhead.per_call_ms)
                errs += [m.predict(samples[i].features, samples[i].n_ops) / y[i] - 1 for i in idx[ncal:]]
            e = np.abs(errs)
            out.append(f"{ncal} to fit: MAPE {e.mean():.2%}, within 5% {np.mean(e <= .05):.0%}, "
                       f"within 10% {np.mean(e <= .1):.0%}")
        print(f"{name:<15} " + "; ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
