"""A fast CPU forward for the DARTS search cell -- the same function of (x, alpha, weights).

``cell_forward(cell, s0, s1, weights, edge_weights)`` computes exactly what
``SearchCell.forward`` computes (DARTS eq. 2, PC-DARTS partial channels and edge
normalisation, Max-W: the weights arrive as a tensor per edge, so any weighting
works), with the same parameters and BN running statistics, reorganised for a
CPU where a few hundred tiny kernels per cell, not arithmetic, set the time.
``accelerate(model)`` switches a built ``DartsSupernet`` to it in place;
``forward(x, plain=True)`` still runs the textbook sum.

The tricks, each exact (the tests compare values, alpha/beta gradients, weight
gradients and running statistics with the plain sum):

1. *Levels.* Once node i is known, every edge i -> j (j > i) can run; the two
   cell inputs start together. A cell is 4 levels (8, 3, 2, 1 edges) instead of
   14 edges x 7 ops, and each level batches its edges.
2. *Channels-last* activations throughout (oneDNN's depthwise and pooling
   kernels are several times faster than NCHW on CPU).
3. *One ReLU per node*, shared by every conv op (and FactorizedReduce) on every
   edge leaving it: each of them starts with ReLU of the same tensor.
4. *Edge batching.* The ReLU'd input is repeated once per edge along channels;
   each conv stage of an op is then ONE call for all edges of the level: the
   depthwise kernels (concatenated, ``groups=channels``), the pointwise 1x1s
   (concatenated, ``groups=edges``: block-diagonal), the non-affine BNs (batch
   statistics are per channel, so one BN over the concatenation is the same).
   The parameters stay in the original modules; the fused kernels are
   ``torch.cat`` of them on every forward, so gradients reach the original
   parameters and ``state_dict`` keeps its meaning. Running statistics are
   gathered, updated by the one BN call, and written back to each module.
5. *Weights folded into the last BN*: ``w * BN(z)`` is BN(z) with affine weight
   w (no bias), so the op weighting costs nothing; with PC-DARTS the edge
   weight is folded in too (``beta_e * w_eo``).
6. *Parameter-free ops run once per node*, not once per edge: max/avg pooling
   of node i and its (train-mode, non-affine) BN are the same for every edge
   leaving i, so node j adds ``w_max * P_max(i) + w_avg * P_avg(i) + w_skip * x_i``;
   each edge's pooling BN still gets its running-statistics update.
7. ``none`` contributes 0 and is skipped.
8. *FactorizedReduce* of the four reducing edges of an input is one 1x1 conv:
   the even and the shifted-odd pixel grids are stacked along channels and each
   edge's two convs form a block-diagonal weight.
9. *PC-DARTS*: the channel shuffle is a fixed permutation and the node is a
   beta-weighted sum, so node j = shuffle(cat(sum_e beta_e op_e(x_a),
   sum_e beta_e bypass(x_b))): the bypass pooling runs once per node and the
   shuffle once per node instead of once per edge.
10. *Depthwise backward without oneDNN's slow paths* (``depthwise_conv2d``):
    oneDNN's fast depthwise weight-gradient kernel takes only kernels at most
    3 wide and no dilation; 5x5, dilated, and tiny (2x2) inputs fall to kernels
    that are 10-100x slower. Here the weight gradient is computed as ceil(F/3)
    column blocks of an F x 3 kernel over the F x F footprint (shifting the
    padded input by a storage offset, no copy), the input gradient of a
    dilated conv as a forward conv with the flipped kernel, a dilated stride-2
    conv as a plain conv on the even pixels, and taps that can only ever see
    padding (5x5 on a 2x2 map) are cropped away.

Only the train-mode forward of the ``darts`` space's ops is fused. In eval mode
(running statistics, per-edge BNs differ) and for ops it does not know
(``sharpdarts``), ``cell_forward`` runs each edge's ``MixedOp`` in turn, so it
is always correct. NAS-Bench-201 supernets keep the plain path.

Here: the execution (levels, conv groups, the cell forward) and ``accelerate``;
the autograd kernels are in :mod:`search.fast_kernels`, the grouped BNs in
:mod:`search.fast_bn`, the cell plan in :mod:`search.fast_plan`.
"""
from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_bn import _BNGroup
from .fast_kernels import CL, _nchw, _nhwc, _per_edge, _Repeat, depthwise_conv2d, pointwise_conv2d
from .fast_plan import KNOWN_OPS, _CellPlan, _ConvOp, _Level, _plan

__all__ = ["KNOWN_OPS", "accelerate", "cell_forward", "depthwise_conv2d", "pointwise_conv2d"]


# --------------------------------------------------------------------------
# the fused forward
# --------------------------------------------------------------------------

MERGE_MAX_POSITIONS = 1024   # batch x height x width up to which conv ops share kernels
MERGE_MAX_FOOTPRINT = 5


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``supernet.channel_shuffle`` on a channels-last tensor."""
    n, c, h, w = x.shape
    y = _nhwc(x).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
    return _nchw(y)


def _taps(k: int, d: int, size: int, stride: int) -> tuple[int, int]:
    """Range of kernel taps that can touch the input (stride 1): |t*d - pad| <= size - 1."""
    if stride != 1:
        return 0, k
    pad = d * (k - 1) // 2
    keep = [t for t in range(k) if abs(t * d - pad) <= size - 1]
    return keep[0], keep[-1] + 1


def _embed(w: torch.Tensor, k: int, d: int, size: int, stride: int, fm: int) -> torch.Tensor:
    """Kernel (.., k, k) with dilation d as a dense fm x fm kernel (zeros elsewhere), centred."""
    lo, hi = _taps(k, d, size, stride)
    w = w[:, :, lo:hi, lo:hi]
    k = hi - lo
    if d > 1 and k > 1:
        dense = w.new_zeros(w.shape[:2] + (d * (k - 1) + 1,) * 2)
        dense[:, :, ::d, ::d] = w
        w = dense
    q = (fm - w.shape[-1]) // 2
    return F.pad(w, (q, q, q, q)) if q else w


def _footprint(op: _ConvOp, size: int, stride: int) -> int:
    lo, hi = _taps(op.k, op.dilation, size, stride)
    return op.dilation * (hi - lo - 1) + 1


class _Terms:
    """Weighted terms of a node, summed when the node is needed."""

    def __init__(self):
        self.items: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> None:
        self.items.append(t)

    def total(self) -> torch.Tensor:
        out = self.items[0]
        for t in self.items[1:]:
            out = out + t
        return out


def _conv_group(lv: _Level, ops: list[_ConvOp], rep, We: torch.Tensor, size: int, merged: bool) -> torch.Tensor:
    """Conv ops of a level run together; returns sum_o w_eo op_o(x_e) as (n, ho, wo, E, c).

    ``merged``: the ops' kernels embedded in one dense footprint, so each stage is one
    call for all of them (tricks 4, 10: pays off on small maps, where calls cost more
    than arithmetic); otherwise ``ops`` is a single op run with its own kernel.
    """
    s, E, G = lv.stride, len(lv.edges), len(ops)
    n_sep = sum(op.sep for op in ops)
    key = tuple(op.name for op in ops)
    if key not in lv.cache:
        lv.cache[key] = [_BNGroup(mods) if mods else None
                         for mods in ([bn for op in ops if len(op.bn) > b for bn in op.bn[b]] for b in range(2))]
    bn0, bn1 = lv.cache[key]
    c = ops[0].dw[0][0].shape[0]
    weights = [_per_edge(We[:, op.index], c) for op in ops]
    x = rep(G, even=not merged and s == 2 and ops[0].dilation == 2)
    # block 1 of every op: (ReLU done) dw -> pw -> BN; a dil op ends here (weight folded in)
    if merged:
        fm = max(_footprint(op, size, s) for op in ops)
        kern = torch.cat([_embed(torch.cat(op.dw[0]), op.k, op.dilation, size, s, fm) for op in ops])
        y = depthwise_conv2d(x, kern, s, 1)
    elif s == 2 and ops[0].dilation == 2:   # x holds the even pixels: see depthwise_conv2d
        y = depthwise_conv2d(x, torch.cat(ops[0].dw[0]), 1, 1)
    else:
        y = depthwise_conv2d(x, torch.cat(ops[0].dw[0]), s, ops[0].dilation)
    y = pointwise_conv2d(y, torch.cat([w for op in ops for w in op.pw[0]]), G * E)
    bn_w = None if n_sep == G else torch.cat(
        [torch.ones_like(wt) if op.sep else wt for op, wt in zip(ops, weights)])
    y = bn0(y, bn_w)
    n, _, ho, wo = y.shape
    out = None
    if n_sep < G:
        yd = _nhwc(y)[..., n_sep * E * c:].reshape(n, ho, wo, G - n_sep, E, c)
        out = yd[:, :, :, 0] if G - n_sep == 1 else yd.sum(3)
    if n_sep:
        # block 2 of the sep ops: ReLU -> dw -> pw -> BN (weight folded in)
        y = y if n_sep == G else _nchw(_nhwc(y)[..., :n_sep * E * c])
        y = F.relu(y)
        seps = ops[:n_sep]
        if merged:
            fm = max(_footprint(op, ho, 1) for op in seps)
            kern = torch.cat([_embed(torch.cat(op.dw[1]), op.k, 1, ho, 1, fm) for op in seps])
        else:
            kern = torch.cat(seps[0].dw[1])
        y = depthwise_conv2d(y, kern, 1, 1)
        y = pointwise_conv2d(y, torch.cat([w for op in seps for w in op.pw[1]]), n_sep * E)
        y = bn1(y, torch.cat(weights[:n_sep]) if n_sep > 1 else weights[0])
        ys = _nhwc(y).reshape(n, ho, wo, n_sep, E, c)
        ys = ys[:, :, :, 0] if n_sep == 1 else ys.sum(3)
        out = ys if out is None else out + ys
    return out


def _run_level(lv: _Level, plan: _CellPlan, xa: dict, xb: dict, W: torch.Tensor, beta: torch.Tensor | None,
               acc: dict, acc_b: dict) -> None:
    """All edges leaving ``lv.sources``: adds their weighted outputs to the targets' terms."""
    S, T = len(lv.sources), lv.per_source
    E = S * T
    We = W[[e for e, _, _ in lv.edges]]          # (E, n_ops), beta already folded in
    n, c, h, w = xa[lv.sources[0]].shape
    s = lv.stride
    relu = {i: F.relu(xa[i]) for i in lv.sources} if (lv.convs or lv.fr_weights) else {}
    reps: dict = {}

    def rep(copies: int, even: bool = False) -> torch.Tensor:
        """Each edge's copy of its source's ReLU along channels, ``copies`` times (trick 4)."""
        if (copies, even) not in reps:
            if even:
                reps[(copies, even)] = rep(copies)[:, :, ::2, ::2].contiguous(memory_format=CL)
            else:
                r = torch.stack([_nhwc(relu[i]) for i in lv.sources], 3)           # n h w S c
                r = _Repeat.apply(r, copies, T)                                    # n h w G S T c
                reps[(copies, even)] = _nchw(r.view(n, h, w, copies * E * c))
        return reps[(copies, even)]

    total = None                                  # n, ho, wo, T, c: everything for the T targets
    if lv.convs:
        ho = (h - 1) // s + 1
        merge = n * ho * ho <= MERGE_MAX_POSITIONS and h == w
        small = [op for op in lv.convs if merge and _footprint(op, h, s) <= MERGE_MAX_FOOTPRINT]
        groups = ([small] if len(small) > 1 else []) + [[op] for op in lv.convs if len(small) < 2 or op not in small]
        z = None
        for ops in groups:
            y = _conv_group(lv, ops, rep, We, h, len(ops) > 1)
            z = y if z is None else z + y
    else:
        z = None
    if lv.fr_weights:
        # trick 8: FactorizedReduce of all reducing edges as one grouped 1x1 conv
        grids = torch.cat([torch.cat([relu[i][:, :, ::2, ::2], relu[i][:, :, 1::2, 1::2]], 1)
                           for i in lv.sources], 1).contiguous(memory_format=CL)
        wfr = torch.cat([torch.block_diag(w1.flatten(1), w2.flatten(1)) for w1, w2 in lv.fr_weights])
        y = F.conv2d(grids, wfr[:, :, None, None], None, 1, 0, 1, S)
        y = lv.fr_bn(y, _per_edge(We[:, lv.skip], c))
        y = _nhwc(y).reshape(y.shape[0], y.shape[2], y.shape[3], E, c)
        z = y if z is None else z + y
    if z is not None:
        zt = z.reshape(z.shape[0], z.shape[1], z.shape[2], S, T, c)
        total = zt[:, :, :, 0] if S == 1 else zt.sum(3)                  # sum over sources
    # trick 6: parameter-free ops once per source node, broadcast over its T edges
    for si, i in enumerate(lv.sources):
        terms = []
        for p, kind, bns in lv.pools:
            x = xa[i]
            pooled = (F.max_pool2d(x, 3, s, 1) if kind == "max"
                      else F.avg_pool2d(x, 3, s, 1, count_include_pad=False))
            terms.append((bns[si].shared(pooled), p))
        if lv.skip is not None and s == 1:
            terms.append((xa[i], lv.skip))
        for t, p in terms:
            t = _nhwc(t).unsqueeze(3)
            wcol = We[si * T:(si + 1) * T, p].unsqueeze(1)
            total = t * wcol if total is None else torch.addcmul(total, t, wcol)
    if total is not None:
        for t, zj in enumerate(total.unbind(3)):   # unbind: one gradient copy, not T zero-filled ones
            acc[lv.edges[t][2]].add(_nchw(zj))
    if plan.k > 1:
        # trick 9: the PC-DARTS bypass, pooled once per source, beta-weighted per edge
        btotal = None
        for si, i in enumerate(lv.sources):
            bypass = _nhwc(xb[i] if s == 1 else F.max_pool2d(xb[i], 2, 2)).unsqueeze(3)
            if beta is None:
                bcol = torch.ones((T, 1), dtype=bypass.dtype)
            else:
                bcol = beta[[e for e, _, _ in lv.edges[si * T:(si + 1) * T]]].unsqueeze(1)
            btotal = bypass * bcol if btotal is None else torch.addcmul(btotal, bypass, bcol)
        for t, bj in enumerate(btotal.unbind(3)):
            acc_b[lv.edges[t][2]].add(_nchw(bj))


def cell_forward(cell, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                 edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``SearchCell.forward(s0, s1, weights, edge_weights)``, fused (see the module docstring)."""
    s0 = s0.contiguous(memory_format=CL)
    s1 = s1.contiguous(memory_format=CL)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    plan = _plan(cell) if cell.training else None
    if plan is None:
        return cell.nodes(states, weights, edge_weights)   # the textbook loop (search/supernet.py)
    W = weights if edge_weights is None else weights * edge_weights.unsqueeze(1)
    K = plan.k
    nodes = plan.steps + 2
    acc = {j: _Terms() for j in range(2, nodes)}
    acc_b = {j: _Terms() for j in range(2, nodes)}
    xa, xb = {}, {}

    def node_ready(i: int) -> None:
        if i >= 2:
            node = acc[i].total()
            if K > 1:
                node = _shuffle(torch.cat([node, acc_b[i].total()], 1), K)
            states.append(node)
        x = states[i] = states[i].contiguous(memory_format=CL)
        if K == 1:
            xa[i] = x
        else:
            c = x.shape[1] // K
            xa[i] = x[:, :c].contiguous(memory_format=CL)
            xb[i] = x[:, c:]

    node_ready(0)
    node_ready(1)
    for lv in plan.levels:
        for i in lv.sources:
            if i not in xa:
                node_ready(i)
        _run_level(lv, plan, xa, xb, W, edge_weights, acc, acc_b)
    node_ready(nodes - 1)
    return torch.cat(states[-plan.multiplier:], dim=1)


# --------------------------------------------------------------------------
# switching a supernet
# --------------------------------------------------------------------------

def _fast_cell_forward(self, s0, s1, weights, edge_weights=None, plain=False):
    if plain:
        return type(self).forward(self, s0, s1, weights, edge_weights, plain=True)
    return cell_forward(self, s0, s1, weights, edge_weights)


def accelerate(model: nn.Module) -> nn.Module:
    """Make every DARTS search cell of ``model`` use :func:`cell_forward` (in place).

    Parameters, buffers and ``state_dict`` are untouched; ``model(x, plain=True)``
    still runs the textbook weighted sum. Returns ``model``.
    """
    for cell in getattr(model, "cells", []):
        cell.forward = types.MethodType(_fast_cell_forward, cell)
    return model
