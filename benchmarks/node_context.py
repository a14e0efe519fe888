"""Each node of a network inside the network (ONNX Runtime's own profile) against the same node alone.

    .venv/bin/python benchmarks/node_context.py [--models alexnet,efficientnet_b0] [--runs 30] [--top 10]
                                                [--backend ort-cpu|torch-cpu]

For each model (a torchvision name, or any ``--model`` spec): the graph ONNX
Runtime optimises and runs (``spaces.onnx_graph.graph_nodes``) is run whole,
as is, with ORT's per-node profiling on (``SessionOptions.enable_profiling``;
each node's ``kernel_time``, median over ``--runs`` runs after 5 warm-up
runs), and every node is then timed alone in its one-node model, as ``hwcost
profile`` does (``node_graph``, median of 20 calls). Prints the whole
network's time with and without profiling, both sums, the per-kind ratio
(in the network / alone) and the nodes that gain most in the network, with
their weight bytes -- what the in-context model's ``streamed`` group prices.

``--backend torch-cpu`` is the same on eager PyTorch: the model traced by
torch.fx (``spaces.opkeys``, the nodes a layer table keys) is run node by
node, each node's call timed with the host clock where it runs in the network
(values freed after their last use, as eager does), and each distinct layer
then timed alone (``hwcost profile``'s call: ``module(*inputs)``, median of 20
calls); it also counts the minor page faults of one forward pass and of the
same layers alone -- memory the allocator takes fresh from the kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodels.analytical import weight_bytes  # noqa: E402
from costmodels.incontext import op_group  # noqa: E402
from profilers.backends import get_backend  # noqa: E402
from profilers.environment import device_info, host_label  # noqa: E402
from profilers.export import export_graph  # noqa: E402
from profilers.shapes import resolve_model  # noqa: E402
from spaces.onnx_graph import graph_nodes, node_graph, session_options  # noqa: E402
from spaces.opkeys import _fx_layers, _getattr_path  # noqa: E402

IMAGE = (1, 3, 224, 224)


def _median_ms(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def in_network(model_bytes: bytes, runs: int) -> tuple[dict[str, float], float, float]:
    """({node name: median kernel ms in the network}, whole ms with profiling, whole ms without)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options("disable", 1)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        inp = s.get_inputs()[0]
        x = {inp.name: np.random.default_rng(0).standard_normal(IMAGE).astype(np.float32)}
        for _ in range(5):
            s.run(None, x)
        profiled = _median_ms(lambda: s.run(None, x), runs)
        events = json.loads(Path(s.end_profiling()).read_text())
    per: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3)
    plain = ort.InferenceSession(model_bytes, session_options("disable", 1), providers=["CPUExecutionProvider"])
    for _ in range(5):
        plain.run(None, x)
    return {k: float(np.median(v[5:] or v)) for k, v in per.items()}, profiled, _median_ms(lambda: plain.run(None, x), runs)


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def eager_in_network(model, x, runs: int):
    """(rows (key, node name, ms in the network, ms alone, weight bytes, faults per call alone), whole eager ms,
    ms of the node-by-node run untimed, page faults per whole forward) of a model on eager PyTorch."""
    import torch
    import torch.fx as fx
    gm = fx.symbolic_trace(model)
    names: list[str] = []
    with torch.no_grad():
        raw = _fx_layers(gm, x, names)
    nodes = list(gm.graph.nodes)
    last = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last[a] = i
    modules = dict(gm.named_modules())

    def run(times=None):
        env, first = {}, True
        load = lambda a: fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
        for i, node in enumerate(nodes):
            if node.op == "placeholder":
                env[node] = x if first else (node.args[0] if node.args else None)
                first = False
            elif node.op == "get_attr":
                env[node] = _getattr_path(gm, node.target)
            elif node.op == "output":
                return
            else:
                args, kwargs = load(node.args), load(node.kwargs)
                t = time.perf_counter()
                if node.op == "call_module":
                    r = modules[node.target](*args, **kwargs)
                elif node.op == "call_method":
                    r = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    r = node.target(*args, **kwargs)
                if times is not None:
                    times[node.name].append(time.perf_counter() - t)
                env[node] = r
            for a in node.all_input_nodes:
                if last.get(a) == i:
                    env.pop(a, None)

    times: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for _ in range(5):
            model(x)
            run()
        whole = _median_ms(lambda: model(x), runs)
        f0 = _faults()
        for _ in range(runs):
            model(x)
        faults = (_faults() - f0) / runs
        plain = _median_ms(run, runs)
        for _ in range(runs):
            run(times)
        alone: dict = {}
        backend = get_backend("torch-cpu", threads=1)
        with backend.active():
            for key, module, inputs in raw:
                if key in alone:
                    continue
                fn = backend.prepare(module, inputs)
                for _ in range(3):
                    fn()
                f0 = _faults()
                ms = _median_ms(fn, 20)
                alone[key] = (ms, (_faults() - f0) / 20)
    rows = []
    for (key, module, _), nm in zip(raw, names):
        wb = sum(p.numel() * p.element_size() for p in module.parameters())
        rows.append((key, nm, float(np.median(times[nm])) * 1e3, alone[key][0], wb, alone[key][1]))
    return rows, whole, plain, faults


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,efficientnet_b0")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--backend", default="ort-cpu", choices=("ort-cpu", "torch-cpu"))
    ap.add_argument("--json", help="torch-cpu: write every model's rows (key, node, ms in the network, ms alone, "
                    "weight bytes) and whole times to this file")
    args = ap.parse_args()
    dump = {"machine": host_label(), "models": {}}
    warnings.filterwarnings("ignore")
    print(f"machine: {host_label()}, {device_info()['logical_cores']} logical cores; load "
          f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    backend = get_backend("ort-cpu", threads=1)
    for name in args.models.split(","):
        spec = name if ":" in name else f"torchvision:{name}"
        if args.backend == "torch-cpu":
            dump["models"][name] = _eager_report(name, spec, args)
            if args.json:
                Path(args.json).write_text(json.dumps(dump))
            continue
        graph = export_graph(resolve_model(spec).eval(), IMAGE, name)
        nodes = graph_nodes(graph)
        inside, profiled, plain = in_network(nodes.model.SerializeToString(), args.runs)
        rows = []
        with backend.active():
            for node, key in zip(nodes.model.graph.node, nodes.keys):
                one = node_graph(nodes, node)
                fn = backend.prepare(one, ())
                for _ in range(3):
                    fn()
                rows.append((key, node.name, inside.get(node.name, float("nan")), _median_ms(fn, 20),
                             weight_bytes(one)))
        net, alone = sum(r[2] for r in rows), sum(r[3] for r in rows)
        print(f"\n{name}: whole {plain:.2f} ms ({profiled:.2f} ms profiled); its {len(rows)} nodes "
              f"{net:.2f} ms in the network, {alone:.2f} ms alone (each with its call overhead): {net / alone:.3f}x")
        kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key, _, a, b, _ in rows:
            kinds[op_group(key)][0] += a
            kinds[op_group(key)][1] += b
        print("  by kind (in the network / alone): " + ", ".join(
            f"{k} {a:.2f}/{b:.2f} ms = {a / b:.2f}x" for k, (a, b) in sorted(kinds.items(), key=lambda kv: -kv[1][0])))
        print(f"  {'node':<44} {'in network':>10} {'alone':>8} {'ratio':>6} {'weights':>10}")
        for key, nm, a, b, wb in sorted(rows, key=lambda r: -(r[2] - r[3]))[: args.top]:
            print(f"  {nm[:44]:<44} {a:8.3f}ms {b:6.3f}ms {a / b:6.2f} {wb / 2**20:8.2f}MiB")
    return 0


def _eager_report(name: str, spec: str, args) -> dict:
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = resolve_model(spec).eval()
    rows, whole, plain, faults = eager_in_network(model, torch.randn(IMAGE), args.runs)
    net, alone = sum(r[2] for r in rows), sum(r[3] for r in rows)
    faults_alone = sum(r[5] for r in rows)
    print(f"\n{name}: whole {whole:.2f} ms (node by node, untimed {plain:.2f} ms); its {len(rows)} layers "
          f"{net:.2f} ms in the network, {alone:.2f} ms alone: {net / alone:.3f}x; whole / alone {whole / alone:.3f}x; "
          f"minor page faults per forward {faults:.0f}, its layers alone {faults_alone:.0f}", flush=True)
    kinds: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0])
    for key, _, a, b, _, _ in rows:
        kinds[op_group(key)][0] += a
        kinds[op_group(key)][1] += b
        kinds[op_group(key)][2] += 1
    print("  by kind (in the network / alone): " + ", ".join(
        f"{k} {a:.2f}/{b:.2f} ms = {a / b:.2f}x ({n})" for k, (a, b, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])))
    print(f"  {'node':<36} {'kind':<12} {'in network':>10} {'alone':>8} {'ratio':>6} {'weights':>10}")
    for key, nm, a, b, wb, _ in sorted(rows, key=lambda r: -(r[2] - r[3]))[: args.top]:
        print(f"  {nm[:36]:<36} {op_group(key):<12} {a:8.3f}ms {b:6.3f}ms {a / b:6.2f} {wb / 2**20:8.2f}MiB")
    return {"whole_ms": whole, "node_by_node_ms": plain, "faults_per_forward": faults,
            "rows": [[key.to_str(), nm, a, b, wb] for key, nm, a, b, wb, _ in rows]}


if __name__ == "__main__":
    sys.exit(main())
