"""The plan of a fused DARTS search cell (search/fast.py): which edges run together (levels,
trick 1), which modules hold each op's parameters and BNs, and whether a cell can be fused at all."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from .fast_bn import _BNGroup

CONV_OPS = {  # name -> (kernel, dilation, number of ReLU-dw-pw-BN blocks)
    "sep_conv_3x3": (3, 1, 2), "sep_conv_5x5": (5, 1, 2),
    "dil_conv_3x3": (3, 2, 1), "dil_conv_5x5": (5, 2, 1),
}
POOL_OPS = {"max_pool_3x3": "max", "avg_pool_3x3": "avg"}
KNOWN_OPS = set(CONV_OPS) | set(POOL_OPS) | {"none", "skip_connect"}


@dataclass
class _ConvOp:
    name: str
    index: int                  # position in the primitives (column of the weights)
    k: int
    dilation: int
    dw: list[list[nn.Parameter]]   # per block, one per edge
    pw: list[list[nn.Parameter]]
    bn: list[list[nn.BatchNorm2d]]

    @property
    def sep(self) -> bool:
        return len(self.dw) == 2


@dataclass
class _Level:
    sources: list[int]
    edges: list[tuple[int, int, int]]   # (edge index, source node, target node), source-major
    per_source: int                     # edges leaving each source
    stride: int
    convs: list[_ConvOp] = field(default_factory=list)   # sep ops first
    pools: list[tuple[int, str, list[_BNGroup]]] = field(default_factory=list)
    # (primitive index, kind, per source: the pooling BNs of its edges)
    skip: int | None = None             # primitive index of skip_connect
    fr_weights: list[tuple[nn.Parameter, nn.Parameter]] = field(default_factory=list)
    fr_bn: _BNGroup | None = None
    cache: dict = field(default_factory=dict)   # BN groups of conv-op groupings


class _CellPlan:
    def __init__(self, cell):
        mixed = list(cell.mixed)
        self.prims = tuple(mixed[0].primitives)
        self.k = mixed[0].k
        self.steps, self.multiplier = cell.steps, cell.multiplier
        index = {(j, i): e for e, (j, i) in enumerate(cell.edges)}
        self.levels: list[_Level] = []
        for src in ([0, 1], *([i] for i in range(2, self.steps + 1))):
            lv_edges = [(index[(j, i)], i, j) for i in src for j in range(max(src) + 1, self.steps + 2)]
            lv = _Level(src, lv_edges, len(lv_edges) // len(src), mixed[lv_edges[0][0]].stride)
            ops = [mixed[e].ops for e, _, _ in lv_edges]
            T = lv.per_source
            for p, name in enumerate(self.prims):
                if name in CONV_OPS:
                    k, d, nblocks = CONV_OPS[name]
                    blocks = [[list(o[p])[b] if nblocks == 2 else o[p] for o in ops] for b in range(nblocks)]
                    # a DilConv block is ReLU, dw, pw, BN
                    lv.convs.append(_ConvOp(name, p, k, d, [[m[1].weight for m in bl] for bl in blocks],
                                            [[m[2].weight for m in bl] for bl in blocks],
                                            [[m[3] for m in bl] for bl in blocks]))
                elif name in POOL_OPS:
                    lv.pools.append((p, POOL_OPS[name],
                                     [_BNGroup([ops[si * T + t][p][1] for t in range(T)]) for si in range(len(src))]))
                elif name == "skip_connect":
                    lv.skip = p
                    if lv.stride == 2:
                        lv.fr_weights = [(o[p].conv_1.weight, o[p].conv_2.weight) for o in ops]
                        lv.fr_bn = _BNGroup([o[p].bn for o in ops])
            lv.convs.sort(key=lambda op: not op.sep)
            self.levels.append(lv)

    @staticmethod
    def supports(cell) -> tuple[bool, str]:
        mixed = getattr(cell, "mixed", None)
        if mixed is None or not hasattr(cell, "preprocess0"):
            return False, "not a DARTS search cell"
        for m in mixed:
            for name, op in zip(m.primitives, m.ops):
                if getattr(op, "hw_space", None) != "darts" or name not in KNOWN_OPS:
                    return False, f"op {getattr(op, 'hw_space', '?')}/{name} has no fused kernel"
            if m.primitives != mixed[0].primitives or m.k != mixed[0].k:
                return False, "edges with different primitives or partial_k"
            for bn in m.modules():
                if isinstance(bn, nn.modules.batchnorm._BatchNorm) and (bn.affine or bn.momentum is None):
                    return False, "affine BN or cumulative (momentum=None) running averages"
        for inputs in (True, False):  # a level is either the two inputs or one inner node
            if len({m.stride for (_, i), m in zip(cell.edges, mixed) if (i < 2) == inputs}) > 1:
                return False, "edges of a level with different strides"
        return True, ""


def _plan(cell) -> _CellPlan | None:
    """The cell's plan, built on first use (None: the cell has ops without fused kernels)."""
    if getattr(cell, "fast_unsupported", None):  # per-edge op subsets, skip dropout, DCA-NAS cells
        return None
    key = tuple(id(m) for m in cell.mixed)
    cached = cell.__dict__.get("_fast_plan")
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = _CellPlan(cell) if _CellPlan.supports(cell)[0] else None
    cell.__dict__["_fast_plan"] = (key, plan)
    return plan
