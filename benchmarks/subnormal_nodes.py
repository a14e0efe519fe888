"""Nodes fed subnormal floats: alone on their network's values vs on random data, and the network with
flush-to-zero off and on.

    .venv/bin/python benchmarks/subnormal_nodes.py [--models swin_t,vit_b_16,efficientnet_b0] [--rounds 5]

For each model (a torchvision name, or any ``--model`` spec), exported to ONNX
and optimised by ONNX Runtime as ``hwcost profile --model`` does: the nodes
whose inputs (weights too) or outputs hold >= 1 % subnormal float32 values in the
network's run (their keys carry ``subnormal=<share>``, ``spaces.onnx_graph``),
each timed alone on the values it had in the network (what the profile does)
and on the random data a one-node model used before; then the whole network,
1 thread, in ``--rounds`` interleaved rounds with flush-to-zero and
denormals-are-zero off and on (``torch.set_flush_denormal`` sets the MXCSR of
the calling thread, the thread ONNX Runtime computes on with one intra-op
thread). Prints the machine, each flagged node, and both network
medians with their spread over the rounds.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profilers.backends import get_backend  # noqa: E402
from profilers.environment import host_label  # noqa: E402
from profilers.export import export_graph  # noqa: E402
from profilers.measure import Settings  # noqa: E402
from profilers.shapes import resolve_model  # noqa: E402
from spaces.onnx_graph import graph_nodes, node_graph, session_options  # noqa: E402

IMAGE = (1, 3, 224, 224)
NODE = Settings(max_time_s=0.5, passes=1)


def network_ms(sess, feed, runs: int = 10) -> float:
    for _ in range(2):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="swin_t,vit_b_16,efficientnet_b0")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import onnxruntime as ort
    import torch
    print(f"machine: {host_label()}; onnxruntime {ort.__version__}, 1 thread", flush=True)
    backend = get_backend("ort-cpu", threads=1)
    for spec in [m for m in args.models.split(",") if m]:
        graph = export_graph(resolve_model(spec if ":" in spec else f"torchvision:{spec}").eval(), IMAGE,
                             spec.split(":")[-1])
        nodes = graph_nodes(graph)
        flagged = [(n, k) for n, k in zip(nodes.model.graph.node, nodes.keys) if "subnormal" in dict(k.extra)]
        print(f"\n{spec}: {len(nodes.keys)} nodes, {len(flagged)} fed subnormal floats", flush=True)
        seen, gained = set(), 0.0
        counts = nodes.counts()
        with backend.active():
            for node, key in flagged:
                if key in seen:
                    continue
                seen.add(key)
                one = node_graph(nodes, node)
                own, rnd = (backend.timer(backend.prepare(g, ()), NODE).measure().median * 1e3
                            for g in (one, dataclasses.replace(one, arrays=None)))
                gained += counts[key] * (own - rnd)
                print(f"  {key.op:<22} x{counts[key]} subnormal {dict(key.extra)['subnormal']:<5} on its network's "
                      f"values {own:7.3f} ms, on random data {rnd:7.3f} ms ({own / rnd:5.1f}x)  {node.name[:48]}",
                      flush=True)
        if flagged:
            print(f"  the network's nodes cost {gained:.2f} ms more on their own values than on random data")
        sess = ort.InferenceSession(graph.model_bytes, session_options("all", 1), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(IMAGE).astype(np.float32)}
        times: dict[bool, list[float]] = {False: [], True: []}
        try:
            for _ in range(args.rounds):
                for ftz in (False, True):
                    torch.set_flush_denormal(ftz)
                    times[ftz].append(network_ms(sess, feed))
        finally:
            torch.set_flush_denormal(False)
        off, on = (statistics.median(times[f]) for f in (False, True))
        print(f"  whole network: flush-to-zero off {off:.2f} ms [{min(times[False]):.2f}, {max(times[False]):.2f}], "
              f"on {on:.2f} ms [{min(times[True]):.2f}, {max(times[True]):.2f}] ({on / off - 1:+.1%}; "
              f"medians of {args.rounds} interleaved rounds)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
