"""Expected cost of a search's architecture weights (RAPDARTS eq. 7-9), differentiable in alpha.

``ExpectedCost(cost_tensor)(alphas, betas)`` returns one value per metric, in the
cost tensor's units (ms, counts, bytes), for the *target* network:

* ``mode="expected"`` -- RAPDARTS eq. 7 per mixed op, eq. 9 summed over them,
  plus the fixed part:  E[C_m] = fixed_m + sum_k sum_e w_{k,e} sum_i p_{k,e,i} c_{k,e,i,m},
  p = softmax(alpha) over ops.  Its gradient is eq. 8,
  dE/dalpha_{k,e,j} = w_{k,e} p_j (c_j - sum_i p_i c_i).  Edge weights w_{k,e}: 1
  without beta; with PC-DARTS beta, ``2 * softmax(beta)`` over the node's incoming
  edges (the expected number of times an edge is picked when its node draws its
  2 edges from softmax(beta), with replacement), and 1 for a node with only 2
  inputs (it keeps both).  NB201 keeps every edge: beta is ignored.
* ``mode="derived"`` -- the value is the exact cost of the network derivation
  would produce now (:func:`derive_darts` / :func:`derive_nb201`); the gradient is
  straight-through from a relaxation (:meth:`ExpectedCost.relaxed`): ops
  renormalised over the non-``none`` ops, edges weighted by a soft top-2.

A cost tensor with a ``merge`` tensor (an ONNX Runtime table: identical
parameter-free ops on one state run once) takes off, per state and op,
``merge * (sum_e p_e - (1 - prod_e (1 - p_e)))`` -- expected calls minus the
probability of at least one -- with p the weights each mode gives the edge's op
(exact for a derived network; :func:`costmodels.cost_tensor.merge_saving`).

The derivation rule lives here so the search and the cost use one rule.  See
docs/expected_cost.md.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces.errors import HwcostError, unknown
from spaces.genotypes import Genotype
from spaces.nb201_arch import EDGES as NB201_EDGES, Nb201Arch

from .cost_tensor import CostTensor, darts_edges, merge_saving

MODES = ("expected", "derived")
EDGES_KEPT = 2     # a derived DARTS node keeps its 2 strongest incoming edges
_TINY = 1e-30      # floor of a weight before its log (one-hot weights have exact zeros)


# ---------------------------------------------------------------------------
# Derivation (DARTS rule; PC-DARTS beta; NB201 argmax) -- one rule for search and cost


def _nodes(edges) -> list[list[int]]:
    """Edge indices of each node's incoming edges, nodes in order."""
    targets = sorted({to for to, _ in edges})
    return [[e for e, (to, _) in enumerate(edges) if to == j] for j in targets]


def edge_softmax(betas: torch.Tensor, edges) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax(beta) over each node's incoming edges (eq. 2)."""
    out = torch.empty_like(betas)
    for idx in _nodes(edges):
        out[..., idx] = F.softmax(betas[..., idx], dim=-1)
    return out


def _non_none(ops) -> list[int]:
    return [o for o, name in enumerate(ops) if name != "none"]


def _darts_choice(w: torch.Tensor, edge_w: torch.Tensor | None, edges, ops) -> list[tuple[int, int]]:
    """(edge, op) pairs one cell keeps, in the original code's order.

    Per node: rank incoming edges by their strongest non-none op weight (times
    softmax(beta) with PC-DARTS), keep the top 2 (stable: on a tie the lower edge
    index, like the DARTS code's ``sorted``), each with its strongest non-none op
    (``argmax``: the first on a tie, like the DARTS code's loop).
    """
    keep = _non_none(ops)
    w = w.detach().to(torch.float64)   # one dtype, so that search and cost rank ties alike
    if edge_w is not None:
        w = w * edge_w.detach().to(torch.float64)[:, None]
    strength = w[:, keep].max(dim=-1).values
    best = torch.tensor(keep)[w[:, keep].argmax(dim=-1)]
    out = []
    for idx in _nodes(edges):
        order = torch.sort(strength[idx], descending=True, stable=True).indices[:EDGES_KEPT]
        out.extend((idx[int(r)], int(best[idx[int(r)]])) for r in order)
    return out


def derive_darts(weights_normal: torch.Tensor, weights_reduce: torch.Tensor, ops, betas=None,
                 steps: int = 4) -> Genotype:
    """The genotype the DARTS rule derives (``betas``: PC-DARTS logits [2, n_edges] or None)."""
    edges = darts_edges(steps)
    ew = None if betas is None else edge_softmax(betas.detach(), edges)
    cells = []
    for k, w in enumerate((weights_normal, weights_reduce)):
        if tuple(w.shape) != (len(edges), len(ops)):
            raise HwcostError(f"weights of a {steps}-step cell must have shape {(len(edges), len(ops))}, "
                              f"got {tuple(w.shape)}")
        cells.append(tuple((ops[o], edges[e][1])
                           for e, o in _darts_choice(w, None if ew is None else ew[k], edges, ops)))
    concat = tuple(range(2, steps + 2))
    return Genotype(cells[0], concat, cells[1], concat)


def derive_nb201(weights: torch.Tensor, ops) -> str:
    """The NB201 cell: argmax over every op (``none`` included) on each edge."""
    w = weights.detach().reshape(-1, len(ops))
    if w.shape[0] != len(NB201_EDGES):
        raise HwcostError(f"NB201 weights must have shape ({len(NB201_EDGES)}, {len(ops)}), "
                          f"got {tuple(weights.shape)}")
    return Nb201Arch(tuple(ops[int(o)] for o in w.argmax(dim=-1))).to_str()


def arch_weights(arch, ops, steps: int = 4) -> torch.Tensor:
    """One-hot weights [n_cell_types, n_edges, n_ops] of a genotype or NB201 string.

    A darts edge not in the genotype is one-hot on ``none`` (all zeros without it),
    so the weights derive back to ``arch`` and their cost is ``arch``'s cost.
    """
    ops = tuple(ops)
    if isinstance(arch, Genotype):
        edges = darts_edges(arch.steps)
        w = torch.zeros(2, len(edges), len(ops), dtype=torch.float64)
        if "none" in ops:
            w[..., ops.index("none")] = 1.0
        for k, cell in enumerate((arch.normal, arch.reduce)):
            for n, (op, src) in enumerate(cell):
                e = edges.index((n // 2 + 2, src))
                if w[k, e, _non_none(ops)].sum() > 0:
                    raise HwcostError(f"genotype takes edge {edges[e]} twice; it has no one-hot weights")
                w[k, e] = 0.0
                w[k, e, ops.index(op)] = 1.0
        return w
    a = arch if isinstance(arch, Nb201Arch) else Nb201Arch.parse(str(arch))
    w = torch.zeros(1, len(NB201_EDGES), len(ops), dtype=torch.float64)
    for e, op in enumerate(a.ops):
        w[0, e, ops.index(op)] = 1.0
    return w


# ---------------------------------------------------------------------------
# Soft top-2 (the relaxation of the edge choice)


def soft_topk(s: torch.Tensor, groups: list[list[int]], k: int = EDGES_KEPT, tau: float = 1.0) -> torch.Tensor:
    """g_e = sigmoid((s_e - t) / tau) with t per group such that sum_group g = k.

    Tends to the hard top-k indicator as tau -> 0; a group of <= k members
    keeps all (g = 1).  t is found by bisection and then takes one Newton step
    with autograd on, which gives it the implicit-function gradient
    dt/ds_j = g'_j / sum g': so sum g stays k to first order, and
    d(sum_e g_e C_e)/ds_e = (g'_e / tau) (C_e - sum_j g'_j C_j / sum g') -- eq. 8's
    form at edge level.
    """
    g = torch.ones_like(s)
    big = [idx for idx in groups if len(idx) > k]
    if not big:
        return g
    width = max(len(idx) for idx in big)
    index = torch.tensor([idx + [idx[0]] * (width - len(idx)) for idx in big], device=s.device)
    valid = torch.tensor([[True] * len(idx) + [False] * (width - len(idx)) for idx in big], device=s.device)
    S = torch.where(valid, s[..., index], torch.full_like(s[..., index], float("-inf")))
    with torch.no_grad():
        finite = torch.where(valid, S, torch.full_like(S, float("inf")))
        lo = finite.min(-1, keepdim=True).values - 40 * tau
        hi = S.max(-1, keepdim=True).values + 40 * tau
        for _ in range(24):   # brackets t to ~1e-7 of the spread; Newton (quadratic) finishes it
            mid = (lo + hi) / 2
            over = torch.sigmoid((S - mid) / tau).sum(-1, keepdim=True) > k
            lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
        t0 = (lo + hi) / 2
        for _ in range(2):
            sg = torch.sigmoid((S - t0) / tau)
            sl = (sg * (1 - sg)).sum(-1, keepdim=True).clamp_min(1e-12)
            t0 = torch.minimum(torch.maximum(t0 + tau * (sg.sum(-1, keepdim=True) - k) / sl, lo), hi)
    sig = torch.sigmoid((S - t0) / tau)
    slope = (sig * (1 - sig)).sum(-1, keepdim=True).clamp_min(1e-12)
    t = t0 + tau * (sig.sum(-1, keepdim=True) - k) / slope      # Newton step: carries dt/ds
    gs = torch.sigmoid((S - t) / tau)
    for n, idx in enumerate(big):
        g = g.index_copy(-1, torch.tensor(idx, device=s.device), gs[..., n, :len(idx)])
    return g


# ---------------------------------------------------------------------------
# The module


class ExpectedCost(nn.Module):
    """Expected (or derived) cost per metric of a target network, from alpha (and beta).

    ``forward(alphas, betas=None, weights=None, mode=None) -> Tensor[n_metrics]``:
    ``alphas`` is a tensor [n_cell_types, n_edges, n_ops] (or [n_edges, n_ops] for
    one cell type) or a dict cell type -> [n_edges, n_ops]; ``weights`` (same
    shapes) are op weights used as they are, instead of softmax(alphas) --
    probabilities, one-hot weights, sharpDARTS Max-W weights.  ``betas``: PC-DARTS
    edge logits [n_cell_types, n_edges] or None.
    """

    def __init__(self, cost_tensor: CostTensor, mode: str = "expected", metrics=None, tau: float = 1.0):
        super().__init__()
        if mode not in MODES:
            raise unknown("expected-cost mode", mode, MODES)
        if tau <= 0:
            raise HwcostError(f"tau must be positive, got {tau}")
        ct = cost_tensor
        self.metrics = tuple(metrics) if metrics is not None else ct.metrics
        idx = [ct.index(m) for m in self.metrics]
        self.register_buffer("c", ct.c[..., idx].to(torch.float64).clone())
        self.register_buffer("fixed", ct.fixed[idx].to(torch.float64).clone())
        # identical parameter-free ops on one state, merged in an ONNX graph (cost_tensor.merge_saving)
        self.register_buffer("merge", None if ct.merge is None else ct.merge[..., idx].to(torch.float64).clone())
        self.mode, self.tau = mode, float(tau)
        self.space, self.ops = ct.space, tuple(ct.ops)
        self.cell_types, self.edges = tuple(ct.cell_types), tuple(tuple(e) for e in ct.edges)
        self.nb201 = ct.space == "nb201"
        self.groups = _nodes(self.edges)
        self.register_buffer("non_none", torch.tensor([o != "none" for o in self.ops]))

    # -- inputs ------------------------------------------------------------

    def index(self, metric: str) -> int:
        if metric not in self.metrics:
            raise unknown("metric of this expected cost", metric, self.metrics)
        return self.metrics.index(metric)

    def named(self, values: torch.Tensor) -> dict[str, float]:
        """``forward``'s output as {metric: float}."""
        return {m: float(v) for m, v in zip(self.metrics, values.detach().cpu())}

    def _stack(self, x, what: str) -> torch.Tensor:
        if isinstance(x, Mapping):
            missing = [k for k in self.cell_types if k not in x]
            if missing:
                raise HwcostError(f"{what} lack cell type(s) {missing}; expected {list(self.cell_types)}")
            x = torch.stack([x[k] for k in self.cell_types])
        if x.dim() == 2 and len(self.cell_types) == 1:
            x = x[None]
        want = (len(self.cell_types), len(self.edges), len(self.ops))
        if tuple(x.shape) != want:
            raise HwcostError(f"{what} must have shape {want} (cell types, edges, ops), got {tuple(x.shape)}")
        return x

    def weights(self, alphas=None, weights=None) -> torch.Tensor:
        """Op weights in float64: ``weights`` as given, else softmax(alphas) (RAPDARTS eq. 3).

        The softmax runs in alphas' own dtype, as the search's does, so that both
        derive from the same numbers.
        """
        if weights is not None:
            return self._stack(weights, "weights").to(self.c.dtype)
        if alphas is None:
            raise HwcostError("give alphas (architecture logits) or weights")
        return F.softmax(self._stack(alphas, "alphas"), dim=-1).to(self.c.dtype)

    def _edge_softmax(self, betas) -> torch.Tensor | None:
        if betas is None or self.nb201:
            return None
        want = (len(self.cell_types), len(self.edges))
        if tuple(betas.shape) != want:
            raise HwcostError(f"betas must have shape {want} (cell types, edges), got {tuple(betas.shape)}")
        return edge_softmax(betas, self.edges).to(self.c.dtype)

    # -- values -------------------------------------------------------------

    def forward(self, alphas=None, betas=None, weights=None, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.mode
        if mode not in MODES:
            raise unknown("expected-cost mode", mode, MODES)
        w = self.weights(alphas, weights)
        if mode == "expected":
            return self.expected(w, betas)
        sel = self.selection(w, betas)
        hard = self.fixed + torch.einsum("keo,keom->m", sel, self.c) - self._merged(sel)
        soft = self.relaxed(w, betas)
        return hard + (soft - soft.detach())   # value: the derived network's; gradient: the relaxation's

    def expected(self, w: torch.Tensor, betas=None) -> torch.Tensor:
        """RAPDARTS eq. 7 per mixed op, eq. 9 summed over mixed ops, + fixed."""
        per_edge = torch.einsum("keo,keom->kem", w, self.c)            # eq. 7
        ew = self._edge_softmax(betas)
        if ew is None:
            return self.fixed + per_edge.sum(dim=(0, 1)) - self._merged(w)   # eq. 9
        mult = torch.ones_like(ew)
        for idx in self.groups:
            if len(idx) > EDGES_KEPT:
                mult[:, idx] = EDGES_KEPT * ew[:, idx]
        return self.fixed + torch.einsum("ke,kem->m", mult, per_edge) - self._merged(mult[..., None] * w)

    def _merged(self, p: torch.Tensor):
        """What merged calls save (0 without a ``merge`` tensor); ``p[k, e, o]``: edge e holds op o."""
        return 0.0 if self.merge is None else merge_saving(self.merge, p, self.edges)

    def selection(self, w: torch.Tensor, betas=None) -> torch.Tensor:
        """0/1 tensor [cell types, edges, ops] of the (edge, op) pairs derivation keeps."""
        mask = torch.zeros_like(w, dtype=self.c.dtype).detach()
        for k, e, o in self.chosen(weights=w, betas=betas):
            mask[k, e, o] = 1.0
        return mask

    def chosen(self, alphas=None, betas=None, weights=None) -> list[tuple[int, int, int]]:
        """(cell type, edge, op) of every edge op the derived network holds."""
        w = self.weights(alphas, weights).detach()
        if self.nb201:
            return [(0, e, int(o)) for e, o in enumerate(w[0].argmax(dim=-1))]
        ew = self._edge_softmax(betas)
        return [(k, e, o) for k in range(len(self.cell_types))
                for e, o in _darts_choice(w[k], None if ew is None else ew[k], self.edges, self.ops)]

    def relaxed(self, w: torch.Tensor, betas=None) -> torch.Tensor:
        """The smooth stand-in whose gradient the derived mode passes straight through.

        nb201: the plain expectation (derivation is an argmax per edge).  darts:
        q = weights renormalised over the non-none ops (a derived edge never holds
        none); each edge weighted by a soft top-2 of its log-strength
        log(max non-none weight) (+ log softmax(beta)) among its node's edges.
        """
        if self.nb201:
            return self.expected(w)
        nn_w = w * self.non_none.to(w.dtype)
        q = nn_w / nn_w.sum(-1, keepdim=True).clamp_min(_TINY)
        per_edge = torch.einsum("keo,keom->kem", q, self.c)
        s = torch.log(nn_w.max(dim=-1).values.clamp_min(_TINY))
        ew = self._edge_softmax(betas)
        if ew is not None:
            s = s + torch.log(ew.clamp_min(_TINY))
        g = soft_topk(s, self.groups, EDGES_KEPT, self.tau)
        return self.fixed + torch.einsum("ke,kem->m", g, per_edge) - self._merged(g[..., None] * q)

    def derive(self, alphas=None, betas=None, weights=None):
        """The derived architecture: a Genotype (darts, sharpdarts) or an NB201 string."""
        w = self.weights(alphas, weights).detach()
        if self.nb201:
            return derive_nb201(w[0], self.ops)
        steps = len(self.groups)
        if self.edges != darts_edges(steps):
            raise HwcostError(f"edges {self.edges} are not those of a {steps}-step DARTS cell")
        return derive_darts(w[0], w[1], self.ops, betas=betas, steps=steps)

    def extra_repr(self) -> str:
        return (f"space={self.space}, mode={self.mode}, metrics={list(self.metrics)}, "
                f"cell_types={list(self.cell_types)}, edges={len(self.edges)}, ops={len(self.ops)}")
