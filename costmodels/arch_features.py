"""Features of a whole NAS-Bench-201 network, computed from its cell string.

An architecture-level table gives one latency per cell string; a surrogate
learns it from a few measured rows.  What it can learn from depends on which
edges the device's runtime actually executes, and that differs by runtime:

* ``all`` -- an eager runtime (PyTorch; the HELP columns of desktop CPUs, GPUs,
  Pixel 2, FPGA and Eyeriss behave so) runs every edge, ``none`` included
  (``x.mul(0)`` is a kernel too), whether or not its result is used.
* ``feeding`` -- a graph runtime that removes dead code (the HW-NAS-Bench
  Raspberry Pi 4 and Pixel 3 columns, measured through TFLite, behave so)
  drops edges whose result never reaches the cell output, yet still runs
  edges that read a node the input never reaches.  When the cell output does
  not depend on the input at all the whole network is constant: 69% of those
  341 cells measure under 0.5 ms on the Pi, against a median of 26 ms.
* ``live`` -- edges on an input -> output path (``Nb201Arch.live_edges``): the
  ops that matter for what the network computes.

The tables say which applies.  Over connected cells, a linear fit on per-op
counts explains R^2 = 0.95 of raspi4 latency when counted over ``feeding``
edges, 0.86 over ``live`` and 0.87 over ``all`` edges; on gold_6226 ``all``
explains 0.98 and the other two 0.82-0.88.  So every edge set is offered and
the surrogate lets the training rows choose (``arch_surrogate``).

Everything here is deterministic, depends only on the string, and uses no
torch itself.  Network-level MACs/params follow the NB201 CIFAR macro skeleton
(``spaces.skeleton.nb201_skeleton``, the one ``spaces.nb201.Nb201Network`` is built from); with ``edges="all"`` they reproduce the
NAS-Bench-201 paper's range, 7.78-220.12 MMACs and 0.073-1.532 M parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from spaces.errors import HwcostError
from spaces.nb201_arch import EDGES, NB201_OPS, NUM_NODES, Nb201Arch
from spaces.skeleton import Nb201Skeleton, nb201_skeleton

EDGE_SETS = ("all", "live", "feeding")
OUTPUT = NUM_NODES - 1

# op_cost(op_name, channels, hw) -> cost of one edge running that op at that shape
# (ms from an op-level table, or any proxy); or a dict {(op, C, H): cost}.
OpCost = Union[Callable[[str, int, int], float], Mapping[tuple, float]]
ArchLike = Union[str, Nb201Arch]


@dataclass(frozen=True)
class Nb201Macro:
    """The numbers of an NB201 CIFAR network; its layout is :func:`spaces.skeleton.nb201_skeleton`'s."""

    C: int = 16
    N: int = 5
    input_size: int = 32
    num_classes: int = 10
    in_channels: int = 3

    @property
    def skeleton(self) -> Nb201Skeleton:
        return nb201_skeleton(self.C, self.N, self.input_size, self.in_channels)

    @property
    def stages(self) -> tuple[tuple[int, int], ...]:
        """(channels, feature-map side) of the three stages: (16,32), (32,16), (64,8)."""
        return self.skeleton.stages


NB201_CIFAR = Nb201Macro()


def as_arch(arch: ArchLike) -> Nb201Arch:
    """Accept a cell string or a parsed cell; bad strings raise ``HwcostError``."""
    if isinstance(arch, Nb201Arch):
        return arch
    if not isinstance(arch, str):
        raise HwcostError(f"an NB201 architecture must be a string like "
                          f"|op~0|+|op~0|op~1|+|op~0|op~1|op~2|, got {type(arch).__name__}")
    return _parse(arch)


@lru_cache(maxsize=1 << 16)
def _parse(text: str) -> Nb201Arch:
    return Nb201Arch.parse(text)


def canonical(arch: ArchLike) -> str:
    """The standard string of a cell (validates it)."""
    return as_arch(arch).to_str()


# ---------------------------------------------------------------- edge sets

def _reaches_output(arch: Nb201Arch) -> set[int]:
    """Nodes with a path of non-``none`` edges to the output node."""
    reach = {OUTPUT}
    for e in reversed(range(len(EDGES))):  # EDGES is topologically ordered
        j, i = EDGES[e]
        if arch.ops[e] != "none" and j in reach:
            reach.add(i)
    return reach


def edge_mask(arch: ArchLike, edges: str) -> tuple[bool, ...]:
    """Which of the six edges a runtime of kind ``edges`` executes (module docstring).

    An edge is ``feeding`` when its destination node reaches the output through
    non-``none`` edges, whatever its own op.  ``all`` and ``feeding`` include
    ``none`` edges (an eager ``x.mul(0)`` costs a kernel); ``live`` never does.
    """
    arch = as_arch(arch)
    if edges == "all":
        return (True,) * len(EDGES)
    if edges == "live":
        return arch.live_edges()
    if edges == "feeding":
        reach = _reaches_output(arch)
        return tuple(j in reach for j, _ in EDGES)
    raise HwcostError(f"unknown edge set {edges!r}; known: {', '.join(EDGE_SETS)}")


def op_counts(arch: ArchLike, edges: str = "all") -> np.ndarray:
    """How many edges of the set carry each op, in ``NB201_OPS`` order (5 numbers)."""
    arch = as_arch(arch)
    out = np.zeros(len(NB201_OPS))
    for op, keep in zip(arch.ops, edge_mask(arch, edges)):
        if keep:
            out[NB201_OPS.index(op)] += 1
    return out


def onehot(arch: ArchLike) -> np.ndarray:
    """Edge-by-op one-hot (6 x 5 = 30), the usual baseline encoding."""
    out = np.zeros((len(EDGES), len(NB201_OPS)))
    for e, op in enumerate(as_arch(arch).ops):
        out[e, NB201_OPS.index(op)] = 1.0
    return out.ravel()


def n_adds(arch: ArchLike, edges: str = "all") -> int:
    """Element-wise additions a node sum performs over the set's non-``none`` inputs."""
    arch = as_arch(arch)
    mask = edge_mask(arch, edges)
    adds = 0
    for j in range(2, NUM_NODES):
        k = sum(1 for e, (to, _) in enumerate(EDGES) if to == j and mask[e] and arch.ops[e] != "none")
        adds += max(k - 1, 0)
    return adds


ALL_OPS = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def longest_live_path(arch: ArchLike, ops: Sequence[str] = ALL_OPS) -> int:
    """Most ops of kind ``ops`` met in sequence on one live path input -> output.

    The default counts every op (0..3); ``ops=("nor_conv_3x3", "nor_conv_1x1")``
    counts the convolutions a sample must wait for one after another.
    """
    arch = as_arch(arch)
    live = arch.live_edges()
    depth = {0: 0}
    for e, (j, i) in enumerate(EDGES):
        if live[e] and i in depth:
            depth[j] = max(depth.get(j, 0), depth[i] + (arch.ops[e] in ops))
    return depth.get(OUTPUT, 0)


# ------------------------------------------------------- analytic MACs/params

def _edge_macs(op: str, c: int, hw: int) -> int:
    """MACs of one cell edge (convs only; pooling, BN, ReLU, adds count zero)."""
    if op == "nor_conv_3x3":
        return 9 * c * c * hw * hw
    if op == "nor_conv_1x1":
        return c * c * hw * hw
    return 0


def _edge_params(op: str, c: int) -> int:
    """Parameters of one cell edge: conv weights (no bias) + affine BN."""
    if op == "nor_conv_3x3":
        return 9 * c * c + 2 * c
    if op == "nor_conv_1x1":
        return c * c + 2 * c
    return 0


def _fixed_macs(m: Nb201Macro) -> int:
    """Stem, the residual reduction blocks and the linear head."""
    sk = m.skeleton
    macs = sk.stem.c_in * sk.stem.c_out * 9 * sk.input_size ** 2     # stem 3x3 conv
    for r in sk.resblocks:
        c_in, c_out, hw = r.c_in, r.c_out, r.h // r.stride            # hw = output side
        macs += 9 * c_in * c_out * hw * hw                              # conv_a, stride 2
        macs += 9 * c_out * c_out * hw * hw                             # conv_b
        macs += c_in * c_out * hw * hw                                  # 2x2 avg pool + 1x1 conv
    return macs + sk.C_out * m.num_classes                             # linear


def _fixed_params(m: Nb201Macro) -> int:
    sk = m.skeleton
    params = sk.stem.c_in * sk.stem.c_out * 9 + 2 * sk.stem.c_out      # stem conv + BN
    for r in sk.resblocks:
        params += 9 * r.c_in * r.c_out + 2 * r.c_out + 9 * r.c_out * r.c_out + 2 * r.c_out + r.c_in * r.c_out
    c_last = sk.C_out
    return params + 2 * c_last + c_last * m.num_classes + m.num_classes  # lastact BN + linear


def network_macs(arch: ArchLike, edges: str = "all", macro: Nb201Macro = NB201_CIFAR) -> int:
    """Multiply-accumulates of the whole network, counting cell edges of the set only.

    ``edges="all"`` is what NB201 reports (dead edges are computed by the real
    network); ``"live"`` is what a network pruned to its function would cost.
    """
    arch = as_arch(arch)
    mask = edge_mask(arch, edges)
    cell = sum(_edge_macs(op, c, hw) for c, hw in macro.stages
               for op, keep in zip(arch.ops, mask) if keep)
    return _fixed_macs(macro) + macro.N * cell


def network_params(arch: ArchLike, edges: str = "all", macro: Nb201Macro = NB201_CIFAR) -> int:
    """Trainable parameters of the whole network, counting cell edges of the set only."""
    arch = as_arch(arch)
    mask = edge_mask(arch, edges)
    cell = sum(_edge_params(op, c) for c, _ in macro.stages
               for op, keep in zip(arch.ops, mask) if keep)
    return _fixed_params(macro) + macro.N * cell


# ------------------------------------------------------- op-level knowledge

def ops_proxy(op: str, channels: int, hw: int) -> float:
    """Default per-edge cost when no op-level table is given: arithmetic operations.

    A k x k conv does k^2 C^2 H^2 MACs, a 3x3 average pool 9 C H^2 adds; skip and
    none do none.  Only the ratios matter (the surrogate fits a scale).
    """
    if op == "avg_pool_3x3":
        return 9.0 * channels * hw * hw
    return float(_edge_macs(op, channels, hw))


def resolve_op_cost(op_cost: OpCost | None) -> Callable[[str, int, int], float]:
    """A callable from a callable, a ``{(op, C, H): cost}`` dict, or ``None`` (the proxy)."""
    if op_cost is None:
        return ops_proxy
    if callable(op_cost):
        return op_cost
    if isinstance(op_cost, Mapping):
        table = {(str(k[0]), int(k[1]), int(k[2])): float(v) for k, v in op_cost.items()}

        def lookup(op: str, c: int, hw: int) -> float:
            try:
                return table[(op, c, hw)]
            except KeyError:
                raise HwcostError(f"the op-cost table has no entry for op {op!r} at C={c}, H=W={hw}; "
                                  f"an NB201 prior needs every op at every stage shape") from None
        return lookup
    raise HwcostError(f"op_cost must be a callable (op, C, H) -> cost or a dict, got {type(op_cost).__name__}")


def op_cost_table(op_cost: OpCost | None,
                  macro: Nb201Macro = NB201_CIFAR) -> dict[tuple[str, int, int], float]:
    """Evaluate ``op_cost`` at every (op, C, H) a cell edge occurs at: 5 ops x 3 stages."""
    f = resolve_op_cost(op_cost)
    return {(op, c, hw): float(f(op, c, hw)) for c, hw in macro.stages for op in NB201_OPS}


def table_cost(arch: ArchLike, op_cost: OpCost | None = None, edges: str = "all",
               macro: Nb201Macro = NB201_CIFAR) -> float:
    """Sum of per-edge costs over the set's edges of every cell of the network.

    With ``op_cost`` from an op-level latency table this is that table's
    prediction of the cells' latency; the surrogate fits only a scale and an
    offset to it, which is what lets 10 measured rows suffice.
    """
    arch = as_arch(arch)
    f = resolve_op_cost(op_cost)
    mask = edge_mask(arch, edges)
    return float(macro.N * sum(f(op, c, hw) for c, hw in macro.stages
                               for op, keep in zip(arch.ops, mask) if keep))


# ---------------------------------------------------------- feature sets

def _present(a: Nb201Arch) -> list[float]:
    return list(op_counts(a, "all"))


def _pruned(a: Nb201Arch) -> list[float]:
    connected = a.is_connected()
    return list(op_counts(a, "feeding") * connected) + [float(not connected)]


def _graph(a: Nb201Arch) -> list[float]:
    connected = a.is_connected()
    return [n_adds(a, "all"), n_adds(a, "feeding") * connected, longest_live_path(a),
            longest_live_path(a, ("nor_conv_3x3", "nor_conv_1x1"))]


def _onehot(a: Nb201Arch) -> list[float]:
    return list(onehot(a))


# Blocks of columns, each computed from the parsed cell (cached per string):
#   onehot   edge x op indicators, the baseline encoding
#   present  per-op counts over all six edges (eager runtime)
#   pruned   per-op counts over feeding edges, zero for a disconnected cell, and
#            the disconnected flag (runtime that removes dead code)
#   graph    node-sum additions over all / feeding edges; longest live path in
#            ops and in convolutions (sequential work on a small device)
#   prior_*  an op-level table summed over all / feeding edges (``_prior_rows``)
_BLOCKS: dict[str, tuple[Callable, list[str]]] = {
    "onehot": (_onehot, [f"e{j}{i}_{op}" for j, i in EDGES for op in NB201_OPS]),
    "present": (_present, [f"all_{op}" for op in NB201_OPS]),
    "pruned": (_pruned, [f"feeding_{op}" for op in NB201_OPS] + ["disconnected"]),
    "graph": (_graph, ["adds_all", "adds_feeding", "depth_live", "conv_depth_live"]),
}
_PRIOR_NAMES = {"prior_all": ["cost_all"], "prior_pruned": ["cost_feeding", "disconnected"]}

# Named feature sets: the blocks they concatenate.  Count columns and costs are
# >= 0 and add up to latency on a physical device, so a non-negative linear fit
# on them is meaningful; ``disconnected`` is the one column whose sign is free.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "onehot": ("onehot",),
    "present": ("present",),
    "pruned": ("pruned",),
    "counts": ("present", "pruned"),
    "structural": ("present", "pruned", "graph"),
    "prior_all": ("prior_all",),
    "prior_pruned": ("prior_pruned",),
    "prior": ("prior_all", "prior_pruned"),
}
FREE_SIGN_COLUMNS = ("disconnected",)


def feature_names(features: str) -> list[str]:
    """Column names of a feature set, in order."""
    if features not in FEATURE_SETS:
        raise HwcostError(f"unknown feature set {features!r}; known: {', '.join(FEATURE_SETS)}")
    return [n for b in FEATURE_SETS[features] for n in (_PRIOR_NAMES.get(b) or _BLOCKS[b][1])]


@lru_cache(maxsize=None)  # bounded: NB201 has 15,625 cells
def _block_row(arch: str, block: str) -> tuple[float, ...]:
    return tuple(float(x) for x in _BLOCKS[block][0](_parse(arch)))


def _prior_rows(archs: list[str], block: str, op_cost: OpCost | None,
                macro: Nb201Macro = NB201_CIFAR) -> np.ndarray:
    """``table_cost`` over all edges (``prior_all``), or over feeding edges of
    connected cells plus the disconnected flag (``prior_pruned``), for many cells.

    Summing per op first (weight = N x sum over stages of op_cost) gives the same
    numbers as ``table_cost``, from the cached counts.
    """
    f = resolve_op_cost(op_cost)
    w = np.array([macro.N * sum(float(f(op, c, hw)) for c, hw in macro.stages) for op in NB201_OPS])
    if block == "prior_all":
        present = np.array([_block_row(a, "present") for a in archs]).reshape(len(archs), -1)
        return (present @ w)[:, None]
    pruned = np.array([_block_row(a, "pruned") for a in archs]).reshape(len(archs), -1)
    return np.column_stack([pruned[:, :-1] @ w, pruned[:, -1]])


def featurize(archs: Sequence[ArchLike], features: str = "structural",
              op_cost: OpCost | None = None) -> np.ndarray:
    """Rows of features (len(archs) x len(feature_names(features))), deterministic.

    ``op_cost`` is used by the ``prior*`` sets only (``None``: ``ops_proxy``).
    """
    names = feature_names(features)
    strings = [canonical(a) for a in archs]
    cols = []
    for block in FEATURE_SETS[features]:
        if block in _PRIOR_NAMES:
            cols.append(_prior_rows(strings, block, op_cost))
        else:
            cols.append(np.array([_block_row(a, block) for a in strings], dtype=float)
                        .reshape(len(strings), len(_BLOCKS[block][1])))
    return np.hstack(cols).reshape(len(strings), len(names))
