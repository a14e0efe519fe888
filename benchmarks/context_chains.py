"""Does a node cost in a network what it costs alone? Chains differenced, on ONNX Runtime.

    .venv/bin/python benchmarks/context_chains.py [--block silu,se,pw] [--k 8] [--backend ort-cpu]

For each block and each of efficientnet_b0's feature-map sizes (96x112x112,
144x56x56, 480x14x14, 1152x7x7) two chains of ``k`` depthwise 3x3 convolutions
are exported and keyed by the nodes ONNX Runtime runs (``hwcost profile
--model NET.onnx``, every node timed alone, one table): one without the block
after each convolution, one with it. Both are measured whole (interleaved,
quietest of 10 windows).  The difference of the two measurements is what
``k`` blocks cost *in context*; the difference of the two node sums is what
their nodes cost *alone*.  Their ratio is the in-context factor of the block.

* ``silu``: x * sigmoid(x), which ORT fuses into one ``QuickGelu`` node;
* ``se``: SiLU, then efficientnet's squeeze-excitation (mean over the map,
  1x1 reduce, SiLU, 1x1 expand, sigmoid, multiply);
* ``pw``: no depthwise convolutions but pairs of 1x1 convolutions expanding
  to 6x the channels and projecting back (efficientnet's 192<->1152 at 7x7,
  112<->672 at 14x14, 24<->144 at 56x56), 2 pairs differenced against ``k``:
  alone each convolution's weights stay in cache; a network streams them.

Prints the machine, every chain (measured, node sum, time per node type) and
the factor per size.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ((96, 112), (144, 56), (480, 14), (1152, 7))


def chain(c: int, k: int, block: str | None):
    import torch
    from torch import nn
    act = nn.functional.silu

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            mid = max(c // 24, 4)
            self.dws = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, groups=c) for _ in range(k))
            self.r = nn.ModuleList(nn.Conv2d(c, mid, 1) for _ in range(k))
            self.e = nn.ModuleList(nn.Conv2d(mid, c, 1) for _ in range(k))

        def forward(self, x):
            for dw, r, e in zip(self.dws, self.r, self.e):
                x = dw(x)
                if block in ("silu", "se"):
                    x = act(x)
                if block == "se":
                    s = x.mean((2, 3), keepdim=True)
                    x = x * torch.sigmoid(e(act(r(s))))
            return x
    return Chain().eval()


PW = ((24, 144, 56), (112, 672, 14), (192, 1152, 7))


def pw_chain(c: int, mid: int, k: int):
    import torch
    from torch import nn
    torch.manual_seed(0)
    layers = []
    for _ in range(k):
        layers += [nn.Conv2d(c, mid, 1), nn.ReLU(), nn.Conv2d(mid, c, 1)]
    return nn.Sequential(*layers).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", default="silu,se,pw")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--backend", default="ort-cpu")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from costmodels.predict import predict_network
    from profilers.backends import get_backend
    from profilers.environment import host_label
    from profilers.export import export_graph
    from profilers.measure import Settings
    from profilers.profile import jobs_for, measure_models, profile
    print(f"machine: {host_label()}, {os.cpu_count()} logical cores; load {os.getloadavg()[0]:.2f}", flush=True)
    blocks = [b for b in args.block.split(",") if b]
    be = get_backend(args.backend, threads=1)
    nets = {}
    for block in [b for b in blocks if b == "pw"]:
        for c, mid, hw in PW:
            for k in (2, args.k):
                nets[("pw", c, k)] = (export_graph(pw_chain(c, mid, k), (1, c, hw, hw), f"pw-{c}-{k}"), (1, c, hw, hw))
    for block in [b for b in blocks if b != "pw"]:
        base = "silu" if block == "se" else None      # se is measured against a SiLU chain
        for c, hw in SIZES:
            shape = (1, c, hw, hw)
            for variant in (base, block):
                if (variant, c) not in nets:
                    nets[(variant, c)] = (export_graph(chain(c, args.k, variant), shape, f"{variant}-{c}"), shape)
    jobs, seen = [], set()
    for g, sh in nets.values():
        for j in jobs_for(g, sh, "all", be.session_providers()):
            if j.key not in seen:
                seen.add(j.key)
                jobs.append(j)
    with tempfile.TemporaryDirectory() as tmp:
        table = profile(jobs, be, Path(tmp) / "chains.json", spaces=["onnx"], progress=False)
    meas = measure_models(list(nets.values()), be, Settings(max_time_s=2.0, passes=10))
    res = {}
    for (key, (g, sh)), m in zip(nets.items(), meas):
        p = predict_network(g, sh, table, incontext=None)
        types: dict[str, float] = {}
        for k, n, a, ms, _ in p.per_key:
            t = k.op.rsplit(".", 1)[-1]
            types[t] = types.get(t, 0.0) + (n - a) * ms
        res[key] = (m.median * 1e3, p.latency_ms)
        print(f"{str(key[0]):>5} {key[1]:>5}ch{'' if len(key) == 2 else f' x{key[2]}'}: measured {m.median * 1e3:7.3f} ms, node sum {p.latency_ms:7.3f} ms; "
              + ", ".join(f"{t} {v:.3f}" for t, v in sorted(types.items(), key=lambda tv: -tv[1])), flush=True)
    for c, mid, hw in PW if "pw" in blocks else ():
        (ma, sa), (mb, sb) = res[("pw", c, 2)], res[("pw", c, args.k)]
        mb_w = (args.k - 2) * 2 * c * mid * 4 / 1e6
        print(f"   pw {c}<->{mid} at {hw}x{hw}: {args.k - 2} more pairs ({mb_w:.1f} MB of weights) in context "
              f"{mb - ma:.3f} ms, their nodes alone {sb - sa:.3f} ms: factor {(mb - ma) / (sb - sa):.2f}; whole "
              f"chain of {args.k}: measured / node sum {mb / sb:.3f} (of 2: {ma / sa:.3f})")
    for block in [b for b in blocks if b != "pw"]:
        base = "silu" if block == "se" else None
        for c, hw in SIZES:
            (ma, sa), (mb, sb) = res[(base, c)], res[(block, c)]
            print(f"{block:>5} {c}x{hw}x{hw}: {args.k} blocks in context {mb - ma:.3f} ms, their nodes alone "
                  f"{sb - sa:.3f} ms: factor {(mb - ma) / (sb - sa):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
