"""DCA-NAS search-time techniques (Dutta et al., Sec. 3.3 and Appendix A), as supernet options.

The hard device constraint with its Lagrange multiplier (eq. 2-4, Algorithm 1)
is the objective's hard budget (:mod:`search.objective`); with
``cost_mode="derived"`` the searched cost is the derived network's own cost, so
the look-up graph from search-size to eval-size constraint (eq. 4's LUG) is not
needed. What this module adds is what makes DCA-NAS *fast*:

* **Weight sharing** (eq. 5): the op ``o`` on every edge leaving node ``i`` uses
  the same weights ``w_o^i`` -- one module per (source node, op type), not per
  edge. With batch-statistics BN, ``o(w_o^i, z_i)`` is then the same tensor for
  every target node ``j > i``, so it is computed once and reused; each edge
  still mixes it with its own ``softmax(alpha^{i,j})``.
* **Channel bottleneck**: a 1x1 conv (+ non-affine BN) per source node shrinks
  its ``C`` channels to ``C / b`` before the ops, the ops run at ``C / b``, and a
  1x1 conv (+ non-affine BN) per target node brings the node's sum back to
  ``C``. (The paper says only "1x1 convolutional layers reduce the depth of
  output channels of operations"; projecting down once per source and up once
  per node is the cheapest placement that keeps every op's input and output
  narrow, and it composes with weight sharing.)
* **Derived cells** (Appendix A, Fig. 1): only two cells carry trainable
  alpha -- the first normal cell and the first reduction cell; every other cell
  runs, at each iteration, the discrete cell the DARTS rule derives from the
  current alpha of its type (top-2 incoming edges, strongest non-``none`` op;
  NB201: argmax per edge), with its own weights and no architecture
  parameters. Alpha therefore gets its gradient from the two mixed cells only.

Each option is a :class:`~search.supernet.SupernetConfig` flag
(``share_weights``, ``bottleneck``, ``derived_cells``); any of them set makes
:func:`~search.supernet.build_supernet` build the supernets below. These cells
have no fused CPU path (search/fast.py): they set ``fast_unsupported``.
Not combined with PC-DARTS partial channels (``partial_k > 1``) nor with
P-DARTS op subsets: both are refused with a clear error.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from costmodels.cost_tensor import darts_edges
from costmodels.expected_cost import derive_darts
from spaces import build_op
from spaces.errors import HwcostError
from spaces.nb201_arch import EDGES as NB201_EDGES
from spaces.networks import preprocess_inputs
from spaces.skeleton import build_darts_skeleton, build_nb201_skeleton

from .supernet import SupernetConfig, _SupernetBase, register_supernet, search_skeleton


def uses_dcanas(cfg: SupernetConfig) -> bool:
    return bool(cfg.share_weights or cfg.bottleneck > 1 or cfg.derived_cells)


def _check(cfg: SupernetConfig) -> None:
    if cfg.bottleneck < 1:
        raise HwcostError(f"channel bottleneck must be >= 1 (1 = off), got {cfg.bottleneck}")
    if cfg.C % cfg.bottleneck:
        raise HwcostError(f"channel bottleneck {cfg.bottleneck} must divide the supernet channels C={cfg.C}")
    if cfg.partial_k > 1:
        raise HwcostError("DCA-NAS options (shared weights, bottleneck, derived cells) do not combine with "
                          f"PC-DARTS partial channels (K={cfg.partial_k}); use partial_k=1")
    if cfg.op_subsets is not None:
        raise HwcostError("DCA-NAS options do not combine with P-DARTS op subsets (pdarts/rapdarts)")
    if cfg.space != "nb201" and "skip_connect" in cfg.ops() and (cfg.C // cfg.bottleneck) % 2:
        raise HwcostError(f"C / bottleneck = {cfg.C // cfg.bottleneck} must be even: the reduction cell's "
                          f"skip_connect is a FactorizedReduce with two halves")


class Projection(nn.Sequential):
    """1x1 conv + non-affine BN: the channel bottleneck's down or up projection."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=False))


class DcaGraph(nn.Module):
    """The DAG of one cell: nodes from input states through (shared, bottlenecked) ops.

    ``edges``: (to, from) pairs, targets in order; ``n_inputs`` states come in;
    ``stride(i)`` is the stride of every edge leaving node ``i``.
    """

    def __init__(self, space: str, C: int, edges, n_inputs: int, stride, primitives: tuple[str, ...],
                 share: bool, bottleneck: int):
        super().__init__()
        self.edges, self.n_inputs, self.primitives, self.share = tuple(edges), n_inputs, primitives, share
        self.targets = sorted({j for j, _ in self.edges})
        self.sources = sorted({i for _, i in self.edges})
        cb = C // bottleneck
        self.live = [o for o, p in enumerate(primitives) if p != "none"]
        self.none = primitives.index("none") if "none" in primitives else None

        def op_list(i):
            return nn.ModuleList(build_op(space, p, cb, cb, stride(i), affine=False) for p in primitives)

        # eq. 5: w_o^i (one op per source node) with sharing; w_o^{i,j} (one per edge) without
        self.ops = nn.ModuleDict({f"s{i}": op_list(i) for i in self.sources} if share else
                                 {f"e{e}": op_list(i) for e, (_, i) in enumerate(self.edges)})
        self.down = nn.ModuleDict({f"s{i}": Projection(C, cb) for i in self.sources}) if bottleneck > 1 else None
        self.up = nn.ModuleDict({f"n{j}": Projection(cb, C) for j in self.targets}) if bottleneck > 1 else None

    def op_module(self, e: int, o: int) -> nn.Module:
        return self.ops[f"s{self.edges[e][1]}" if self.share else f"e{e}"][o]

    def forward(self, inputs: list[torch.Tensor], weights: torch.Tensor | None = None,
                choice: list[tuple[int, int]] | None = None, plain: bool = False) -> list[torch.Tensor]:
        """All node states. ``weights`` [edges, ops]: the mixed cell (eq. 5); ``choice``: the
        (edge, op) pairs of a derived cell. ``plain``: every edge's full weighted sum, ``none``
        included, nothing reused (the textbook form, for tests)."""
        states = list(inputs)
        x = {}        # source -> its (projected) input to the ops
        cache = {}    # (source or edge, op) -> op output: computed once, used by every edge
        picked = None if choice is None else {}
        if choice is not None:
            for e, o in choice:
                picked.setdefault(e, []).append(o)

        def inp(i):
            if i not in x:
                x[i] = self.down[f"s{i}"](states[i]) if self.down is not None else states[i]
            return x[i]

        def out(e, o):
            key = (("s", self.edges[e][1]) if self.share else ("e", e), o)
            if plain or key not in cache:
                y = self.op_module(e, o)(inp(self.edges[e][1]))
                if plain:
                    return y
                cache[key] = y
            return cache[key]

        for j in self.targets:
            acc = None
            for e, (to, i) in enumerate(self.edges):
                if to != j:
                    continue
                if weights is None:
                    terms = [out(e, o) for o in picked.get(e, []) if o != self.none]
                elif plain:
                    terms = [weights[e, o] * out(e, o) for o in range(len(self.primitives))]
                else:
                    terms = [weights[e, o] * out(e, o) for o in self.live]
                for t in terms:
                    acc = t if acc is None else acc + t
            if acc is None:   # every edge into j is `none` (zeros, at the edges' stride)
                e0 = next(e for e, (to, _) in enumerate(self.edges) if to == j)
                acc = self.op_module(e0, self.none)(inp(self.edges[e0][1]))
            states.append(self.up[f"n{j}"](acc) if self.up is not None else acc)
        return states


class DcaDartsCell(nn.Module):
    """A DARTS cell (preprocessing, 4 nodes, concat) built on :class:`DcaGraph`."""

    fast_unsupported = "DCA-NAS cell (shared weights / bottleneck / derived)"

    def __init__(self, cfg: SupernetConfig, c_pp: int, c_p: int, C: int, reduction: bool, reduction_prev: bool,
                 searchable: bool):
        super().__init__()
        s = cfg.space
        self.reduction, self.steps, self.multiplier, self.searchable = reduction, cfg.steps, cfg.multiplier, searchable
        self.preprocess0, self.preprocess1 = preprocess_inputs(s, c_pp, c_p, C, reduction_prev, affine=False)
        self.edges = darts_edges(cfg.steps)
        self.graph = DcaGraph(s, C, self.edges, 2, lambda i: 2 if reduction and i < 2 else 1, cfg.ops(),
                              cfg.share_weights, cfg.bottleneck)

    def forward(self, s0, s1, weights=None, choice=None, plain=False):
        states = self.graph([self.preprocess0(s0), self.preprocess1(s1)], weights, choice, plain)
        return torch.cat(states[-self.multiplier:], dim=1)


def _genotype_choice(genotype, edges) -> list[list[tuple[int, int]]]:
    """(edge, op name) pairs of each cell type of a genotype (normal, reduce)."""
    return [[(edges.index((n // 2 + 2, src)), op) for n, (op, src) in enumerate(cell)]
            for cell in (genotype.normal, genotype.reduce)]


class DcaDartsSupernet(_SupernetBase):
    """DARTS skeleton (stem, cells with reductions at L/3 and 2L/3, GAP, linear) of DCA-NAS cells.

    With ``derived_cells`` the first normal cell (cell 0) and the first reduction cell
    (cell L//3) are mixed; every other cell runs the currently derived cell of its type.
    """
    cell_types = ("normal", "reduce")

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        _check(cfg)
        self.config = cfg
        self.edges = darts_edges(cfg.steps)
        build_darts_skeleton(self, search_skeleton(cfg), cfg.space,
                             lambda c: DcaDartsCell(cfg, c.C_prev_prev, c.C_prev, c.C, c.reduction, c.reduction_prev,
                                                    searchable=not cfg.derived_cells or c.first_of_type),
                             cfg.num_classes)
        self._init_arch(len(cfg.ops()), use_beta=False)

    def derived_choice(self) -> list[list[tuple[int, int]]]:
        """The (edge, op) pairs the DARTS rule derives now, per cell type."""
        w = torch.softmax(self.arch_logits().detach(), dim=-1)
        g = derive_darts(w[0], w[1], self.config.ops(), steps=self.config.steps)
        ops = self.config.ops()
        return [[(e, ops.index(op)) for e, op in cell] for cell in _genotype_choice(g, self.edges)]

    def forward(self, x, plain: bool = False):
        w = self.op_weights()
        choice = self.derived_choice() if self.config.derived_cells else None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            k = int(cell.reduction)
            if cell.searchable:
                out = cell(s0, s1, weights=w[k], plain=plain)
            else:
                out = cell(s0, s1, choice=choice[k])
            s0, s1 = s1, out
        return self.classifier(s1)


class DcaNb201Cell(nn.Module):
    fast_unsupported = "DCA-NAS cell (shared weights / bottleneck / derived)"

    def __init__(self, cfg: SupernetConfig, C: int, searchable: bool):
        super().__init__()
        self.searchable = searchable
        self.graph = DcaGraph(cfg.space, C, NB201_EDGES, 1, lambda i: 1, cfg.ops(), cfg.share_weights,
                              cfg.bottleneck)

    def forward(self, x, weights=None, choice=None, plain=False):
        return self.graph([x], weights, choice, plain)[-1]


class DcaNb201Supernet(_SupernetBase):
    """NAS-Bench-201 skeleton of DCA-NAS cells; with ``derived_cells`` only the first cell is mixed."""
    cell_types = ("cell",)

    def __init__(self, cfg: SupernetConfig):
        super().__init__()
        _check(cfg)
        self.config = cfg
        self.edges = NB201_EDGES
        build_nb201_skeleton(self, search_skeleton(cfg),
                             lambda c: DcaNb201Cell(cfg, c.c_in, searchable=not cfg.derived_cells
                                                    or (c.stage == 0 and c.n == 0)),
                             cfg.num_classes, body="layers", wrap=nn.ModuleList)
        self._init_arch(len(cfg.ops()), use_beta=False)

    def derived_choice(self) -> list[tuple[int, int]]:
        """NB201 derivation: the argmax op of every edge (``none`` included)."""
        return [(e, int(o)) for e, o in enumerate(self.arch_logits().detach()[0].argmax(dim=-1))]

    def forward(self, x, plain: bool = False):
        w = self.op_weights()
        choice = self.derived_choice() if self.config.derived_cells else None
        x = self.stem(x)
        for layer in self.layers:
            if not isinstance(layer, DcaNb201Cell):
                x = layer(x)
            elif layer.searchable:
                x = layer(x, weights=w[0], plain=plain)
            else:
                x = layer(x, choice=choice)
        return self.classifier(x)


register_supernet("dcanas-darts", lambda c: c.space in ("darts", "sharpdarts") and uses_dcanas(c), DcaDartsSupernet)
register_supernet("dcanas-nb201", lambda c: c.space == "nb201" and uses_dcanas(c), DcaNb201Supernet)
