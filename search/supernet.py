"""The one-shot supernet: mixed ops, search cells, networks (DARTS eq. 2).

Every candidate op comes from :func:`spaces.build_op` (search variant,
``affine=False``), so the supernet mixes exactly the modules the profiler
measured and the eval network runs.

* ``MixedOp``: ``sum_o w_o * o(x)`` (DARTS eq. 2). ``none`` outputs zeros, so its
  term is skipped: the value and every gradient are unchanged (its weight
  still takes part in the softmax that produced ``w``).
* PC-DARTS: with ``partial_k > 1`` only the first C/K channels go through the
  ops; the rest bypass (max-pooled when the edge reduces); channel shuffle with
  K groups; each node sums its edges weighted by softmax(beta) (edge
  normalisation).
* Max-W (sharpDARTS eq. 3): ``w_o -> 1 - max(w) + w_o``, an option of every strategy.
* P-DARTS per-edge op subsets (``op_subsets``): alpha keeps the full op list,
  dropped ops are masked to -inf (softmax 0, so the expected cost sees them with
  probability 0) and their modules are not built; skip-connect dropout on the
  identity skip (``set_skip_dropout``).
* DCA-NAS options (shared weights, channel bottleneck, derived cells) live in
  :mod:`search.dcanas`, registered with :func:`register_supernet`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodels.cost_tensor import darts_edges
from costmodels.expected_cost import edge_softmax
from spaces import build_op, get_space
from spaces.errors import HwcostError
from spaces.nb201_arch import EDGES as NB201_EDGES
from spaces.networks import preprocess_inputs
from spaces.skeleton import build_darts_skeleton, build_nb201_skeleton, darts_skeleton, nb201_skeleton


@dataclass(frozen=True)
class SupernetConfig:
    """The search proxy (DARTS: C=16, 8 cells, 4 steps, multiplier 4, stem x3)."""
    space: str = "darts"
    C: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    num_classes: int = 10
    in_channels: int = 3
    partial_k: int = 1            # PC-DARTS K; 1 = every channel through the mixed op
    primitives: tuple[str, ...] | None = None  # default: the space's primitives
    max_w: bool = False           # sharpDARTS Max-W weighting (eq. 3)
    nb201_N: int = 5              # cells per stage in the nb201 supernet
    # P-DARTS: op indices (into ops()) each (cell type, edge) keeps; None = every op everywhere
    op_subsets: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    # DCA-NAS (search/dcanas.py)
    share_weights: bool = False   # one op per (source node, op type), shared by the edges leaving it (eq. 5)
    bottleneck: int = 1           # 1x1 convs shrink the channels through the ops by this factor (1 = off)
    derived_cells: bool = False   # only the first normal / reduction cell is mixed; the rest run the derived cell

    def ops(self) -> tuple[str, ...]:
        sp = get_space(self.space)
        prims = tuple(self.primitives or sp.primitives)
        for p in prims:
            if p not in sp.searchable_ops():
                raise HwcostError(f"primitive {p!r} is not a searchable op of space {self.space!r}")
        return prims

    def subset(self, k: int, e: int) -> tuple[int, ...]:
        """Op indices edge ``e`` of cell type ``k`` keeps (P-DARTS); every op without subsets."""
        n = len(self.ops())
        if self.op_subsets is None:
            return tuple(range(n))
        idx = tuple(self.op_subsets[k][e])
        if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
            raise HwcostError(f"op subset {idx} of cell type {k}, edge {e} must be distinct indices in 0..{n - 1}")
        return idx

    def op_mask(self, n_types: int, n_edges: int) -> torch.Tensor | None:
        """Bool [cell types, edges, ops]: True where the op is kept (None: no subsets)."""
        if self.op_subsets is None:
            return None
        if len(self.op_subsets) != n_types or any(len(t) != n_edges for t in self.op_subsets):
            raise HwcostError(f"op_subsets must list {n_types} cell type(s) x {n_edges} edges")
        mask = torch.zeros(n_types, n_edges, len(self.ops()), dtype=torch.bool)
        for k in range(n_types):
            for e in range(n_edges):
                mask[k, e, list(self.subset(k, e))] = True
        return mask

    def to_dict(self) -> dict:
        return asdict(self)


def search_skeleton(cfg: SupernetConfig):
    """The macro skeleton of the search proxy: DARTS CIFAR, or NB201 with ``nb201_N`` cells per stage."""
    if cfg.space == "nb201":
        return nb201_skeleton(cfg.C, cfg.nb201_N, in_channels=cfg.in_channels)
    return darts_skeleton(cfg.C, cfg.layers, cfg.multiplier, "cifar", cfg.stem_multiplier, cfg.in_channels)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def mix_weights(alpha: torch.Tensor, max_w: bool = False) -> torch.Tensor:
    """softmax over the last axis; with Max-W, w_i -> 1 - max(w) + w_i (sharpDARTS eq. 3)."""
    w = F.softmax(alpha, dim=-1)
    if max_w:
        w = 1.0 - w.max(dim=-1, keepdim=True).values + w
    return w


class MixedOp(nn.Module):
    """``index``: which columns of the full weight vector the built ops take (P-DARTS subsets).

    ``skip_drop``: P-DARTS dropout on the identity skip's output (the original code
    wraps only the stride-1 Identity; at stride 2 skip_connect is a FactorizedReduce).
    """

    def __init__(self, space: str, C: int, stride: int, primitives: tuple[str, ...], partial_k: int = 1,
                 index: tuple[int, ...] | None = None):
        super().__init__()
        if C % partial_k:
            raise HwcostError(f"PC-DARTS K={partial_k} must divide the channels C={C}")
        index = tuple(range(len(primitives))) if index is None else tuple(index)
        primitives = tuple(primitives[i] for i in index)
        self.k, self.stride, self.primitives, self.index = partial_k, stride, primitives, index
        c = C // partial_k
        self.ops = nn.ModuleList(build_op(space, p, c, c, stride, affine=False) for p in primitives)
        self.live = [i for i, p in enumerate(primitives) if p != "none"]
        self.skip = primitives.index("skip_connect") if "skip_connect" in primitives and stride == 1 else None
        self.skip_drop = 0.0

    def _op(self, i: int, x: torch.Tensor) -> torch.Tensor:
        y = self.ops[i](x)
        if i == self.skip and self.skip_drop > 0:
            y = F.dropout(y, self.skip_drop, self.training)
        return y

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return self._mix(x, weights)
        c = x.shape[1] // self.k
        xa, xb = x[:, :c], x[:, c:]
        out = self._mix(xa, weights)
        if self.stride == 2:
            xb = F.max_pool2d(xb, 2, 2)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.k)

    def _mix(self, x, weights):
        out = None
        for i in self.live:
            y = weights[self.index[i]] * self._op(i, x)
            out = y if out is None else out + y
        if out is None:  # only `none` on this edge
            out = self.ops[0](x) * weights[self.index[0]]
        return out

    def forward_plain(self, x, weights):
        """The textbook weighted sum over every op, ``none`` included (for tests)."""
        w = [weights[i] for i in self.index]
        if self.k == 1:
            return sum(wi * self._op(i, x) for i, wi in enumerate(w))
        c = x.shape[1] // self.k
        out = sum(wi * self._op(i, x[:, :c]) for i, wi in enumerate(w))
        xb = F.max_pool2d(x[:, c:], 2, 2) if self.stride == 2 else x[:, c:]
        return channel_shuffle(torch.cat([out, xb], dim=1), self.k)


class SearchCell(nn.Module):
    def __init__(self, cfg: SupernetConfig, c_pp: int, c_p: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        s = cfg.space
        self.reduction, self.steps, self.multiplier = reduction, cfg.steps, cfg.multiplier
        self.preprocess0, self.preprocess1 = preprocess_inputs(s, c_pp, c_p, C, reduction_prev, affine=False)
        self.edges = darts_edges(cfg.steps)
        k = int(reduction)
        self.mixed = nn.ModuleList(MixedOp(s, C, 2 if reduction and i < 2 else 1, cfg.ops(), cfg.partial_k,
                                           cfg.subset(k, e))
                                   for e, (_, i) in enumerate(self.edges))
        self.has_subsets = cfg.op_subsets is not None

    @property
    def fast_unsupported(self) -> str | None:
        """Why search/fast.py's fused cell must not run this cell (None: it may).

        The fused cell indexes the weights by primitive position and has no skip
        dropout; checked on every call, as the dropout rate changes during a run.
        """
        if self.has_subsets:
            return "per-edge op subsets (P-DARTS)"
        if any(m.skip_drop > 0 for m in self.mixed):
            return "skip-connect dropout (P-DARTS)"
        return None

    def forward(self, s0, s1, weights, edge_weights=None, plain=False):
        return self.nodes([self.preprocess0(s0), self.preprocess1(s1)], weights, edge_weights, plain)

    def nodes(self, states, weights, edge_weights=None, plain=False):
        """From the preprocessed inputs ``states``: each node sums its mixed edges (DARTS eq. 2,
        beta-weighted with PC-DARTS edge normalisation); the cell concatenates the last
        ``multiplier`` nodes. (search/fast.py's fallback path is this loop.)"""
        e = 0
        for j in range(2, self.steps + 2):
            acc = None
            for i in range(j):
                op = self.mixed[e]
                h = op.forward_plain(states[i], weights[e]) if plain else op(states[i], weights[e])
                if edge_weights is not None:
                    h = edge_weights[e] * h
                acc = h if acc is None else acc + h
                e += 1
            states.append(acc)
        return torch.cat(states[-self.multiplier:], dim=1)


class _SupernetBase(nn.Module):
    cell_types: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]

    def _init_arch(self, n_ops: int, use_beta: bool) -> None:
        n_types, n_edges = len(self.cell_types), len(self.edges)
        # DARTS: alphas initialised 1e-3 * N(0, 1); PC-DARTS betas likewise.
        self.alphas = nn.Parameter(1e-3 * torch.randn(n_types, n_edges, n_ops))
        self.betas = nn.Parameter(1e-3 * torch.randn(n_types, n_edges)) if use_beta else None
        mask = self.config.op_mask(n_types, n_edges)
        if mask is not None:
            self.register_buffer("op_mask", mask)
        else:
            self.op_mask = None

    def arch_logits(self) -> torch.Tensor:
        """alpha with the ops a P-DARTS stage dropped at -inf (their softmax weight is exactly 0).

        The mask is applied here, not stored in alpha: Adam's weight decay on a
        -inf entry would turn it into NaN.
        """
        if self.op_mask is None:
            return self.alphas
        return self.alphas.masked_fill(~self.op_mask, float("-inf"))

    def set_skip_dropout(self, p: float) -> None:
        """P-DARTS: dropout rate on every identity skip-connect output."""
        for m in self.modules():
            if hasattr(m, "skip_drop"):
                m.skip_drop = float(p)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.alphas, self.betas) if p is not None]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def op_weights(self) -> torch.Tensor:
        return mix_weights(self.arch_logits(), self.config.max_w)

    def edge_weights(self) -> torch.Tensor | None:
        """softmax(beta) over each node's incoming edges (PC-DARTS edge normalisation)."""
        return None if self.betas is None else edge_softmax(self.betas, self.edges)


class DartsSupernet(_SupernetBase):
    """Stem -> cells (reductions at L/3 and 2L/3) -> GAP -> linear."""
    cell_types = ("normal", "reduce")

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        self.config = cfg
        self.edges = darts_edges(cfg.steps)
        build_darts_skeleton(self, search_skeleton(cfg), cfg.space,
                             lambda c: SearchCell(cfg, c.C_prev_prev, c.C_prev, c.C, c.reduction, c.reduction_prev),
                             cfg.num_classes)
        self._init_arch(len(cfg.ops()), use_beta=cfg.partial_k > 1)

    def forward(self, x, plain: bool = False):
        w, ew = self.op_weights(), self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            k = 1 if cell.reduction else 0
            s0, s1 = s1, cell(s0, s1, w[k], None if ew is None else ew[k], plain)
        return self.classifier(s1)


class Nb201SearchCell(nn.Module):
    def __init__(self, cfg: SupernetConfig, C: int):
        super().__init__()
        self.mixed = nn.ModuleList(MixedOp(cfg.space, C, 1, cfg.ops(), cfg.partial_k, cfg.subset(0, e))
                                   for e in range(len(NB201_EDGES)))

    def forward(self, x, weights, edge_weights=None, plain=False):
        nodes = [x]
        for j in range(1, 4):
            acc = None
            for e, (to, i) in enumerate(NB201_EDGES):
                if to != j:
                    continue
                op = self.mixed[e]
                h = op.forward_plain(nodes[i], weights[e]) if plain else op(nodes[i], weights[e])
                if edge_weights is not None:
                    h = edge_weights[e] * h
                acc = h if acc is None else acc + h
            nodes.append(acc)
        return nodes[-1]


class Nb201Supernet(_SupernetBase):
    """NAS-Bench-201 skeleton with mixed edges (one shared alpha for all 15 cells)."""
    cell_types = ("cell",)

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        self.config = cfg
        self.edges = NB201_EDGES
        build_nb201_skeleton(self, search_skeleton(cfg), lambda c: Nb201SearchCell(cfg, c.c_in), cfg.num_classes,
                             body="layers", wrap=nn.ModuleList)
        self._init_arch(len(cfg.ops()), use_beta=cfg.partial_k > 1)

    def forward(self, x, plain: bool = False):
        w, ew = self.op_weights(), self.edge_weights()
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, w[0], None if ew is None else ew[0], plain) if isinstance(layer, Nb201SearchCell) else layer(x)
        return self.classifier(x)


# (name, applies(cfg), build(cfg)); the first that applies builds. Options registered later
# (search/dcanas.py) come first, so a config with their flags gets their supernet.
SUPERNETS: list[tuple[str, Callable[[SupernetConfig], bool], Callable[[SupernetConfig], _SupernetBase]]] = []


def register_supernet(name: str, applies: Callable[[SupernetConfig], bool],
                      build: Callable[[SupernetConfig], _SupernetBase]) -> None:
    """Add a supernet; it is tried before those registered earlier. A name registers once."""
    if any(s[0] == name for s in SUPERNETS):
        raise HwcostError(f"supernet {name!r} is registered already; pick another name "
                          f"(registered: {', '.join(s[0] for s in SUPERNETS)})")
    SUPERNETS.insert(0, (name, applies, build))


register_supernet("darts", lambda c: c.space in ("darts", "sharpdarts"), DartsSupernet)
register_supernet("nb201", lambda c: c.space == "nb201", Nb201Supernet)


def build_supernet(cfg: SupernetConfig) -> _SupernetBase:
    from . import dcanas  # noqa: F401  (registers the DCA-NAS supernets)
    for _, applies, build in SUPERNETS:
        if applies(cfg):
            return build(cfg)
    raise HwcostError(f"no supernet for space {cfg.space!r}")
