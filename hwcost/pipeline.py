"""The end-to-end chain, in steps a notebook, ``make demo`` and the benchmarks share.

profile this device (or reuse its table) -> fit a surrogate -> pick a budget
from the space's range -> search under it -> derive -> export -> measure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from spaces.errors import HwcostError

DEFAULT_RANDOM = 60   # random networks a space node table keys (node coverage, and the fit of each op's cost)


def ensure_table(path: str | Path, space: str = "darts", networks: str = "cifar10", backend: str = "ort-cpu",
                 threads: int = 1, progress: bool | None = None, log=print, keys: str = "ops",
                 random: int = DEFAULT_RANDOM):
    """The op-level table at ``path`` if it exists (and was measured here, on ``backend``), else
    profile it now; an interrupted profile is resumed from its journal. ``keys="nodes"``: a space
    node table (the nodes ORT runs for ``random`` random networks of ``networks``)."""
    from device_tables import load_table
    from profilers.backends import get_backend
    from profilers.environment import same_host
    from profilers.profile import journal_path, profile, space_jobs
    path = Path(path)
    if path.exists():
        table = load_table(path)
        if table.runtime.get("backend") != backend or table.runtime.get("threads") != threads:
            raise HwcostError(f"{path} was measured on {table.runtime.get('backend')} with "
                              f"{table.runtime.get('threads')} thread(s), not {backend} with {threads}; "
                              f"remove it or choose another path")
        same, why = same_host(table.device)
        if same:
            log(f"   reusing {path} ({len(table)} keys, measured {table.created})")
            return table, False
        # another CPU's table prices another machine: keep it aside and measure this one
        aside = path.with_name(path.name.replace(".json", "") + ".other-cpu.json")
        path.replace(aside)
        log(f"   {path}: {why}; kept as {aside}, profiling this CPU")
    path.parent.mkdir(parents=True, exist_ok=True)
    resume = journal_path(path).exists()
    be = get_backend(backend, threads=threads, batch=1)
    if keys == "nodes":
        jobs, provenance = space_node_jobs(space, networks, random, 0, be, progress=bool(progress),
                                           log=lambda line: log("   " + line))
        spaces = ["onnx"]
    else:
        jobs, spaces = space_jobs(space, networks, 1), [space]
        provenance = {"space": space, "networks": networks.split(","), "tool": "hwcost demo"}
    table = profile(jobs, be, path, spaces=spaces, resume=resume, progress=progress, provenance=provenance,
                    announce=lambda line: log("   " + line))
    return table, True


def space_node_jobs(space: str, network: str | None, n: int, seed: int, backend, progress: bool = True,
                    log=lambda s: print(s, file=sys.stderr)):
    """(jobs, provenance) of a space node table: the nodes ONNX Runtime runs for ``n`` random derived
    networks of ``space`` (each exported and optimised at the backend's level), every distinct node
    key once, and the record of which nodes each network has (``costmodels.node_tensor``)."""
    from collections import Counter

    from costmodels.node_tensor import RECORD, record_networks
    from profilers.profile import onnx_jobs
    from spaces import get_space

    from .calibrate import build_spec, eval_network, space_specs
    get_space(space)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HwcostError(f"--random must be a positive number of networks, got {n!r}")
    network = eval_network(space, [network] if network else [])
    level, providers = backend.graph_optimization, backend.session_providers()
    specs = space_specs(space, network, max(n, 2), seed)[:n]
    log(f"exporting {len(specs)} random {space} {network} networks, keyed by the nodes ONNX Runtime runs")
    items = specs
    if progress and progress_default():
        from tqdm import tqdm
        items = tqdm(specs, desc="export", unit="network", dynamic_ncols=True)
    jobs, seen, archs, counts = [], set(), [], []
    for spec in items:
        graph, _ = build_spec({**spec, "graph": "onnx"})
        mine = onnx_jobs(graph, level, providers)
        archs.append(spec["arch"] if spec["kind"] == "nb201" else spec["genotype"])
        counts.append(Counter({j.key: j.extra["count"] for j in mine}))
        for j in mine:
            if j.key not in seen:
                seen.add(j.key)
                jobs.append(j)
    provenance = {"space": space, "network": network, "random_networks": n, "seed": seed,
                  "graph_optimization": level, RECORD: record_networks(archs, counts)}
    return jobs, provenance


def random_derived_costs(cost_tensor, n: int = 500, seed: int = 0) -> torch.Tensor:
    """Costs [n, metrics] of the networks derived from ``n`` random alphas: the space's range
    as the search sees it (the derivation-aware cost of each derived target network)."""
    from costmodels.expected_cost import ExpectedCost
    g = torch.Generator().manual_seed(seed)
    ec = ExpectedCost(cost_tensor, mode="derived")
    shape = tuple(cost_tensor.c.shape[:3])
    out = [ec(alphas=torch.randn(shape, generator=g, dtype=cost_tensor.c.dtype)).detach() for _ in range(n)]
    return torch.stack(out)


def budget_ladder(values, k: int = 5, lo_q: float = 0.1, hi_q: float = 0.9) -> list[float]:
    """``k`` budgets evenly spread between two quantiles of a space's costs."""
    v = np.asarray(values, dtype=float)
    if k < 1 or v.size == 0:
        raise HwcostError("a budget ladder needs at least one budget and one cost")
    lo, hi = np.quantile(v, [lo_q, hi_q])
    return [float(x) for x in np.linspace(lo, hi, k)]


def measure_derived(space: str, arch, network: str = "cifar10", backend: str = "ort-cpu", threads: int = 1,
                    onnx_path: str | Path | None = None, max_time_s: float = 10.0) -> dict:
    """Export the derived network to ONNX (checked against PyTorch) and measure it whole."""
    from profilers.backends import get_backend
    from profilers.export import export_onnx
    from profilers.measure import Settings
    from profilers.profile import measure_model
    from spaces import Nb201NetConfig, build_network, network_config
    torch.manual_seed(0)
    net = build_network(Nb201NetConfig(arch=str(arch)) if space == "nb201" else network_config(network, arch, space))
    shape = net.input_shape(1)
    out: dict = {}
    if onnx_path is not None:
        r = export_onnx(net.eval(), torch.randn(*shape), str(onnx_path))
        out.update(onnx=r.path, onnx_nodes=r.n_nodes, onnx_max_abs_diff=r.max_abs_diff)
    m = measure_model(net, shape, get_backend(backend, threads=threads, batch=1), Settings(max_time_s=max_time_s))
    out.update(m.summary())
    return out


def progress_default() -> bool:
    return sys.stderr.isatty()
