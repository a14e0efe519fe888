"""The constant cost tensor ``c[cell type, edge, op, metric]`` of a *target* network.

RAPDARTS eq. 7 needs ``cost(o_{k,i}(x_k))``: the cost of candidate op ``i`` on
mixed op ``k`` at the feature-map shape it sees.  The search shares one alpha
per (cell type, edge) across all cells of that type, so here

    c[k, e, o, m] = sum over the cells of type k in the TARGET network
                    of cost_m(op o at edge e's shape in that cell)

plus ``fixed[m]``, the cost of everything not searched (stems, preprocessing,
node sums, concats, NB201's residual blocks, classifier; never the auxiliary
head).  The target is the network that will be deployed (CIFAR eval: C=36, 20
cells), not the search proxy.

Shapes are never written by hand: the target network is built with probe
genotypes and run through :func:`spaces.opkeys.tagged_op_counts` -- the one
place that keys a network's ops, which the profiler uses too -- and what it
sees gives each cell's states, each edge's stride and each fixed module's
key.  Analytical metrics come from
:func:`costmodels.analytical.op_costs` (cached per key); the fixed part is
``network_costs(probe net) - sum of its edges' costs`` and is checked to be the
same for two different probes.  Latency comes from ``latency_fn(key) -> ms``
for every key; a key it cannot answer raises, and the error propagates (no
silent under-count).

``none``: in darts/sharpdarts a ``none`` edge is absent from a derived network,
so it costs 0 -- except latency, taken from ``latency_fn`` when it answers (a
zero op still allocates and launches where a runtime keeps it) and 0 when it
raises ``KeyError``.  In nb201 ``none`` is a real module of the derived network
(a zero tensor is written), so it costs what it measures, like any op.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from device_tables import OpKey
from spaces.errors import HwcostError, unknown
from spaces.nb201 import Nb201Cell, Nb201NetConfig
from spaces.nb201_arch import EDGES as NB201_EDGES, Nb201Arch
from spaces.networks import Cell, CifarNetConfig, ImageNetConfig, build_network
from spaces.opkeys import parameter_free, probe_genotype, probe_nb201_arch, tagged_op_counts
from spaces.registry import build_op, get_space

from .analytical import AUX_PREFIX, Costs, network_costs, op_costs

LATENCY = "latency_ms"
# Additive analytical metrics (fields of analytical.Costs).
ANALYTICAL = ("params", "macs", "macs_with_bn", "activation_bytes", "model_bytes")
METRICS = (LATENCY, "params", "macs", "activation_bytes")
KeyCounts = tuple[tuple[OpKey, int], ...]   # (key, occurrences) pairs one entry sums over
LatencyFn = Callable[[OpKey], float]


def darts_edges(steps: int) -> tuple[tuple[int, int], ...]:
    """(to_node, from_node) of a DARTS cell: node j in 2..steps+1 takes every earlier state."""
    return tuple((j, i) for j in range(2, steps + 2) for i in range(j))


@dataclass
class CostTensor:
    """``c[k, e, o, m]`` and ``fixed[m]`` of one target network, with the keys they sum."""

    c: torch.Tensor                      # [n_cell_types, n_edges, n_ops, n_metrics], float64
    fixed: torch.Tensor                  # [n_metrics], float64
    metrics: tuple[str, ...]
    ops: tuple[str, ...]
    cell_types: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]   # (to_node, from_node)
    space: str
    target: dict                         # what network the costs are of
    keys: tuple = ()                     # keys[k][e][o]: KeyCounts that c[k, e, o] sums over
    fixed_keys: KeyCounts = ()           # the fixed part's keys (latency sums over these)
    # merge[k, e, o, m]: what one call of op o on edge e's state saves when its ONNX graph merges it
    # with an identical call on the same state (with_onnx_merges; merge_saving); None: nothing merges
    merge: torch.Tensor | None = None

    def __post_init__(self):
        want = (len(self.cell_types), len(self.edges), len(self.ops), len(self.metrics))
        if tuple(self.c.shape) != want:
            raise HwcostError(f"cost tensor c has shape {tuple(self.c.shape)}, expected {want} "
                              f"(cell types, edges, ops, metrics)")
        if self.merge is not None and tuple(self.merge.shape) != want:
            raise HwcostError(f"cost tensor merge has shape {tuple(self.merge.shape)}, expected {want}")
        if tuple(self.fixed.shape) != (len(self.metrics),):
            raise HwcostError(f"cost tensor fixed has shape {tuple(self.fixed.shape)}, "
                              f"expected ({len(self.metrics)},)")

    def index(self, metric: str) -> int:
        if metric not in self.metrics:
            raise unknown("metric of this cost tensor", metric, self.metrics)
        return self.metrics.index(metric)

    def to_dict(self) -> dict:
        """JSON-able (floats round-trip exactly through ``json``)."""
        kc = lambda pairs: [[k.to_str(), n] for k, n in pairs]  # noqa: E731
        return {
            "space": self.space, "target": self.target, "metrics": list(self.metrics),
            "ops": list(self.ops), "cell_types": list(self.cell_types),
            "edges": [list(e) for e in self.edges],
            "c": self.c.tolist(), "fixed": self.fixed.tolist(),
            "keys": [[[kc(p) for p in per_edge] for per_edge in per_type] for per_type in self.keys],
            "fixed_keys": kc(self.fixed_keys),
            **({"merge": self.merge.tolist()} if self.merge is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CostTensor":
        kc = lambda rows: tuple((OpKey.from_str(s), int(n)) for s, n in rows)  # noqa: E731
        try:
            return cls(
                c=torch.tensor(d["c"], dtype=torch.float64),
                fixed=torch.tensor(d["fixed"], dtype=torch.float64),
                metrics=tuple(d["metrics"]), ops=tuple(d["ops"]), cell_types=tuple(d["cell_types"]),
                edges=tuple(tuple(e) for e in d["edges"]), space=d["space"], target=dict(d["target"]),
                keys=tuple(tuple(tuple(kc(p) for p in per_edge) for per_edge in per_type)
                           for per_type in d.get("keys", ())),
                fixed_keys=kc(d.get("fixed_keys", ())),
                merge=torch.tensor(d["merge"], dtype=torch.float64) if d.get("merge") is not None else None)
        except (KeyError, TypeError, ValueError) as e:
            raise HwcostError(f"malformed cost tensor: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------
# Reading the target network


@dataclass
class _Layout:
    """What the hooks read from the target network."""
    cell_types: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    occurrences: list          # [k][e][o] -> Counter[OpKey]
    fixed_keys: Counter
    probes: list               # [(config, [(k, e, o) of every edge in one cell of each type])]


def _fixed_modules(model: nn.Module) -> set[int]:
    """ids of every tagged, non-searchable module (aux head excluded): the fixed part's keys."""
    return {id(m) for name, m in model.named_modules()
            if hasattr(m, "hw_op") and not name.startswith(AUX_PREFIX)
            and not get_space(m.hw_space).op(m.hw_op).searchable}


def _darts_layout(space: str, config, ops: tuple[str, ...], batch: int) -> _Layout:
    steps = config.genotype.steps
    edges = darts_edges(steps)
    cell_types = ("normal", "reduce")
    real = [o for o in ops if o != "none"]
    if not real:
        raise HwcostError("a DARTS-style search needs at least one primitive besides 'none'")
    n = 2 * steps
    cyc = list(itertools.islice(itertools.cycle(real), n * -(-len(real) // n)))
    chunks = [cyc[i:i + n] for i in range(0, len(cyc), n)]
    base = dataclasses.replace(config, auxiliary=False, drop_path_prob=0.0)

    # Per cell: source state -> (C, H, W, stride) and op -> extras, from the probe networks.
    cells: list[dict] = []
    fixed_keys: Counter = Counter()
    probe_cfgs = []
    for c_i, chunk in enumerate(chunks):
        cfg = dataclasses.replace(base, genotype=probe_genotype(chunk, steps))
        model = build_network(cfg)
        cell_mods = [m for m in model.modules() if isinstance(m, Cell)]
        if c_i == 0:
            cells = [{"type": int(m.reduction), "src": {}, "extra": {}} for m in cell_mods]
            fixed = _fixed_modules(model)
            edge_of = {id(op): (info, cell.indices[k])
                       for info, cell in zip(cells, cell_mods) for k, op in enumerate(cell.ops)}

            def observe(mod, key, inputs):
                if id(mod) in fixed:
                    fixed_keys[dataclasses.replace(key, batch=batch)] += 1
                elif id(mod) in edge_of:
                    info, src = edge_of[id(mod)]
                    if key.c_in != inputs[0].shape[1]:
                        raise HwcostError(f"{key.op}: built for {key.c_in} channels, got {inputs[0].shape[1]}")
                    info["src"][src] = (key.c_in, key.h, key.w, key.stride)
            tagged_op_counts(model, model.input_shape(1), observe=observe)
            probe_cfgs.append(cfg)
        for info, cell in zip(cells, cell_mods):
            for op in cell.ops:
                extra = tuple((k, v) for k, v in op.hw_args.items() if k not in ("c_in", "c_out", "stride"))
                if info["extra"].setdefault(op.hw_op, extra) != extra:
                    raise HwcostError(f"op {op.hw_op} is built with different arguments within one cell")
    probe_cfgs.append(dataclasses.replace(base, genotype=probe_genotype(chunks[0][::-1], steps, first=False)))

    occ = [[[Counter() for _ in ops] for _ in edges] for _ in cell_types]
    for info in cells:
        for e, (_, i) in enumerate(edges):
            C, H, W, stride = info["src"][i]
            for o, op in enumerate(ops):
                if op not in info["extra"] and get_space(space).op(op).extras:
                    raise HwcostError(f"cannot read the arguments of {space}/{op} from the network")
                occ[info["type"]][e][o][OpKey(space, op, batch, C, C, H, W, stride,
                                              info["extra"].get(op, ()))] += 1
    # Which (k, e, o) each probe network holds (every cell of a type has the same genotype).
    probes = []
    for cfg in probe_cfgs:
        chosen = []
        for k, cell_edges in enumerate((cfg.genotype.normal, cfg.genotype.reduce)):
            for node, (op, src) in enumerate(cell_edges):
                chosen.append((k, edges.index((node // 2 + 2, src)), ops.index(op)))
        probes.append((cfg, chosen))
    return _Layout(cell_types, edges, occ, fixed_keys, probes)


def _nb201_layout(space: str, config: Nb201NetConfig, ops: tuple[str, ...], batch: int) -> _Layout:
    cell_types, edges = ("cell",), NB201_EDGES
    cfg1 = dataclasses.replace(config, arch=probe_nb201_arch(ops))
    cfg2 = dataclasses.replace(config, arch=probe_nb201_arch(ops[::-1]))
    model = build_network(cfg1)
    fixed = _fixed_modules(model)
    edge_of = {id(mod): e for cell in model.modules() if isinstance(cell, Nb201Cell)
               for e, mod in enumerate(cell.edges)}
    fixed_keys: Counter = Counter()
    occ = [[[Counter() for _ in ops] for _ in edges]]

    def observe(mod, key, inputs):
        key = dataclasses.replace(key, batch=batch)
        if id(mod) in fixed:
            fixed_keys[key] += 1
        elif id(mod) in edge_of:
            for o, op in enumerate(ops):   # every op's key at this edge's input and stride
                occ[0][edge_of[id(mod)]][o][dataclasses.replace(key, op=op)] += 1
    tagged_op_counts(model, model.input_shape(1), observe=observe)
    probes = [(cfg, [(0, e, ops.index(op)) for e, op in enumerate(Nb201Arch.parse(cfg.arch).ops)])
              for cfg in (cfg1, cfg2)]
    return _Layout(cell_types, edges, occ, fixed_keys, probes)


def _describe(config, batch: int) -> dict:
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
         if f.name not in ("genotype", "arch", "auxiliary", "drop_path_prob")}
    return {"network": type(config).__name__, **d, "batch": batch}


# ---------------------------------------------------------------------------
# The tensor


def build_cost_tensor(space: str, target_config, metrics: Iterable[str] | None = None,
                      latency_fn: LatencyFn | None = None, primitives: Iterable[str] | None = None,
                      batch: int = 1) -> CostTensor:
    """``c[cell type, edge, op, metric]`` and the fixed cost of ``target_config``'s network.

    ``target_config``: a ``CifarNetConfig`` / ``ImageNetConfig`` (darts, sharpdarts;
    only its size and its genotype's number of nodes matter) or an ``Nb201NetConfig``.
    ``metrics`` default: ``latency_ms`` (when ``latency_fn`` is given), ``params``,
    ``macs``, ``activation_bytes``.  ``latency_fn(OpKey) -> ms`` is any callable (a
    :class:`costmodels.costmodel.CostModel`); what it raises propagates.
    """
    sp = get_space(space)
    ops = tuple(primitives) if primitives is not None else sp.primitives
    if not ops:
        raise HwcostError(f"space {space!r} has no primitives; pass primitives=...")
    for op in ops:
        if op not in sp.searchable_ops():
            raise unknown(f"searchable op of space {space!r}", op, sp.searchable_ops())
    if len(set(ops)) != len(ops):
        raise HwcostError(f"primitives list an op twice: {list(ops)}")
    if metrics is None:
        metrics = METRICS if latency_fn is not None else METRICS[1:]
    metrics = tuple(metrics)
    for m in metrics:
        if m != LATENCY and m not in ANALYTICAL:
            raise unknown("cost metric", m, (LATENCY,) + ANALYTICAL)
    if LATENCY in metrics and latency_fn is None:
        raise HwcostError("metric latency_ms needs a latency_fn (a cost model answering op keys in ms)")
    if not isinstance(batch, int) or batch < 1:
        raise HwcostError(f"batch must be a positive integer, got {batch!r}")

    if space == "nb201":
        if not isinstance(target_config, Nb201NetConfig):
            raise HwcostError(f"space nb201 needs an Nb201NetConfig target, got {type(target_config).__name__}")
        layout = _nb201_layout(space, target_config, ops, batch)
    else:
        if not isinstance(target_config, (CifarNetConfig, ImageNetConfig)):
            raise HwcostError(f"space {space!r} needs a CifarNetConfig or ImageNetConfig target, "
                              f"got {type(target_config).__name__}")
        if target_config.space != space:
            raise HwcostError(f"target network is of space {target_config.space!r}, not {space!r}")
        layout = _darts_layout(space, target_config, ops, batch)

    analytical = [m for m in metrics if m != LATENCY]
    op_cache: dict[OpKey, Costs] = {}
    lat_cache: dict[OpKey, float] = {}
    zero_none = space != "nb201"   # a none edge is absent from a derived darts/sharpdarts network

    def analytical_cost(key: OpKey, m: str) -> float:
        if key.op == "none" and zero_none:
            return 0.0
        if key not in op_cache:
            op_cache[key] = op_costs(key.space, key.op, key.c_in, key.c_out, key.h, key.w, key.stride,
                                     key.batch, **dict(key.extra))
        return float(getattr(op_cache[key], m))

    def latency(key: OpKey) -> float:
        if key not in lat_cache:
            if key.op == "none" and zero_none:
                try:
                    lat_cache[key] = float(latency_fn(key))
                except KeyError:   # not measured: a removed edge costs nothing
                    lat_cache[key] = 0.0
            else:
                lat_cache[key] = float(latency_fn(key))
        return lat_cache[key]

    def cost(key: OpKey, m: str) -> float:
        return latency(key) if m == LATENCY else analytical_cost(key, m)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shape = (len(layout.cell_types), len(layout.edges), len(ops), len(metrics))
        c = torch.zeros(shape, dtype=torch.float64)
        for k, e, o in itertools.product(*map(range, shape[:3])):
            for key, n in layout.occurrences[k][e][o].items():
                for mi, m in enumerate(metrics):
                    c[k, e, o, mi] += n * cost(key, m)

        fixed = torch.zeros(len(metrics), dtype=torch.float64)
        if LATENCY in metrics:
            fixed[metrics.index(LATENCY)] = sum(n * latency(key) for key, n in layout.fixed_keys.items())
        if analytical:
            found = []
            for cfg, chosen in layout.probes:
                net = build_network(cfg)
                total = network_costs(net, net.input_shape(batch))
                found.append({m: getattr(total, m) - sum(c[k, e, o, metrics.index(m)].item() for k, e, o in chosen)
                              for m in analytical})
            if found[0] != found[1]:
                raise HwcostError(f"the fixed cost of {space} is not genotype-independent: {found[0]} vs "
                                  f"{found[1]}; op keys and the network disagree")
            for m in analytical:
                fixed[metrics.index(m)] = found[0][m]
    finally:
        torch.set_num_threads(threads)

    keys = tuple(tuple(tuple(tuple(sorted(layout.occurrences[k][e][o].items(), key=lambda kv: kv[0].to_str()))
                             for o in range(len(ops))) for e in range(len(layout.edges)))
                 for k in range(len(layout.cell_types)))
    fixed_keys = tuple(sorted(layout.fixed_keys.items(), key=lambda kv: kv[0].to_str()))
    return CostTensor(c, fixed, metrics, ops, layout.cell_types, layout.edges, space,
                      _describe(target_config, batch), keys, fixed_keys)


# ---------------------------------------------------------------------------
# Identical parameter-free ops on one state: one node in the ONNX graph


def source_groups(edges) -> list[list[int]]:
    """Indices of the edges that read each state, for every state read by more than one edge."""
    by: dict[int, list[int]] = {}
    for e, (_, i) in enumerate(edges):
        by.setdefault(i, []).append(e)
    return [g for _, g in sorted(by.items()) if len(g) > 1]


def merge_saving(merge: torch.Tensor, p: torch.Tensor, edges) -> torch.Tensor:
    """What the merged calls save, per metric: for every state read by several edges and every op,
    ``merge`` times (the expected calls of that op on that state - the probability that at least one
    edge makes it), with ``p[..., k, e, o]`` the probability that edge e holds op o (0/1 for a derived
    network: then exactly (calls - 1) saved where an op reads a state more than once). ``merge``
    [k, e, o, m] is the same for every edge of one state (one key); leading dims of ``p`` are kept."""
    out = torch.zeros(p.shape[:-3] + merge.shape[-1:], dtype=merge.dtype, device=merge.device)
    for g in source_groups(edges):
        P = p[..., g, :].to(merge.dtype).clamp(0.0, 1.0)          # [..., k, |g|, o]
        dup = P.sum(-2) - (1 - (1 - P).prod(-2))                  # expected calls - P(any)
        out = out + torch.einsum("...ko,kom->...m", dup, merge[:, g].mean(1))
    return out


def with_onnx_merges(ct: CostTensor, per_call_ms: float, per_op_ms: float = 0.0) -> CostTensor:
    """``ct`` with its ``merge`` tensor for a runtime that runs the network as an ONNX graph: an edge's
    op that has no parameters or buffers (a pool, an identity) and is chosen on another edge reading the
    same state runs once (``spaces.opkeys.tagged_op_counts``). One merged call saves what the network's
    latency gives that call: its entry in ``c`` (per cell of the type) minus the isolation overhead the
    fixed part took off for it (``per_call_ms``) plus the in-context per-op term (``per_op_ms``), as
    ``costmodels.predict`` leaves the call out. Analytical counts are of the network as written: 0."""
    if LATENCY not in ct.metrics or not ct.keys:
        return ct
    li = ct.index(LATENCY)
    merge = torch.zeros_like(ct.c)
    free: dict = {}
    for k, e, o in itertools.product(range(len(ct.cell_types)), range(len(ct.edges)), range(len(ct.ops))):
        pairs = ct.keys[k][e][o]
        if (ct.ops[o] == "none" and ct.space != "nb201") or not pairs:   # a darts none edge is absent
            continue
        for key, _ in pairs:
            sig = (key.space, key.op, key.c_in, key.c_out, key.stride, key.extra)
            if sig not in free:
                free[sig] = parameter_free(build_op(key.space, key.op, key.c_in, key.c_out, key.stride,
                                                    **dict(key.extra)))
        if all(free[(key.space, key.op, key.c_in, key.c_out, key.stride, key.extra)] for key, _ in pairs):
            calls = sum(n for _, n in pairs)
            merge[k, e, o, li] = ct.c[k, e, o, li] - calls * (per_call_ms - per_op_ms)
    if not torch.any(merge != 0):
        return ct
    return dataclasses.replace(ct, merge=merge)
