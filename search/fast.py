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
"""
from __future__ import annotations

import threading
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

CL = torch.channels_last
CONV_OPS = {  # name -> (kernel, dilation, number of ReLU-dw-pw-BN blocks)
    "sep_conv_3x3": (3, 1, 2), "sep_conv_5x5": (5, 1, 2),
    "dil_conv_3x3": (3, 2, 1), "dil_conv_5x5": (5, 2, 1),
}
POOL_OPS = {"max_pool_3x3": "max", "avg_pool_3x3": "avg"}
KNOWN_OPS = set(CONV_OPS) | set(POOL_OPS) | {"none", "skip_connect"}


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)



# --------------------------------------------------------------------------
# depthwise convolution with a fast backward (trick 10)
# --------------------------------------------------------------------------

def _conv_bwd(gy, x, w, stride, padding, dilation, mask):
    return torch.ops.aten.convolution_backward(
        gy, x, w, None, [stride, stride], [padding, padding], [dilation, dilation],
        False, [0, 0], x.shape[1], mask)


_SCRATCH = threading.local()
SCRATCH_MAX_BYTES = 64 << 20


def _scratch(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A zero-filled buffer of ``shape`` kept between calls (only its interior is ever
    written, so its border stays zero): saves the fill and the page faults of a fresh one."""
    cache = getattr(_SCRATCH, "bufs", None)
    if cache is None:
        cache = _SCRATCH.bufs = {}
    key = (shape, like.dtype, like.device)
    buf = cache.pop(key, None)
    if buf is None:
        buf = like.new_zeros(shape)
        while cache and sum(b.numel() * b.element_size() for b in cache.values()) + \
                buf.numel() * buf.element_size() > SCRATCH_MAX_BYTES:
            cache.pop(next(iter(cache)))   # least recently used
    cache[key] = buf
    return buf


def _dw_weight_grad(x: torch.Tensor, gy: torch.Tensor, k: int, dilation: int, stride: int) -> torch.Tensor:
    """d loss / d w of a depthwise conv (padding d*(k-1)/2), by F x 3 column blocks.

    The dense F x F footprint (F = d*(k-1)+1) is padded once into a buffer with
    one spare image; block b of columns is the same buffer seen from a storage
    offset of b pixels, so oneDNN's fast F x 3 kernel reads it without a copy.
    Columns that run past the padded width wrap into the next row; they only
    meet output positions where the (zero-padded) gradient is zero.
    """
    N, C, H, W = x.shape
    Ho, Wo = gy.shape[-2:]
    Fp = dilation * (k - 1) + 1
    P = (Fp - 1) // 2
    Hp, Wp = H + 2 * P, W + 2 * P
    width = 3
    Wc = (Wp - width) // stride + 1
    if H * W <= 64:
        # small map: the zero border is most of the buffer; reuse zeroed buffers
        buf = _scratch(x, (N + 1, Hp, Wp, C))
        gbuf = _scratch(gy, (N, Ho, Wc, C))
    else:   # zero only the border
        buf = x.new_empty((N + 1, Hp, Wp, C))
        buf[N].zero_()
        buf[:N, :P].zero_()
        buf[:N, P + H:].zero_()
        buf[:N, P:P + H, :P].zero_()
        buf[:N, P:P + H, P + W:].zero_()
        gbuf = gy.new_empty((N, Ho, Wc, C))
        gbuf[:, :, Wo:].zero_()
    buf[:N, P:P + H, P:P + W] = x.permute(0, 2, 3, 1)
    gbuf[:, :, :Wo] = gy.permute(0, 2, 3, 1)
    xp = buf.permute(0, 3, 1, 2)
    gp = gbuf.permute(0, 3, 1, 2)
    shape_w = torch.empty((C, 1, Fp, width), dtype=x.dtype).contiguous(memory_format=CL)
    cols = []
    for b in range(0, Fp, width):
        view = xp.as_strided((N, C, Hp, Wp), xp.stride(), xp.storage_offset() + b * C)
        cols.append(_conv_bwd(gp, view, shape_w, stride, 0, 1, [False, True, False])[1])
    g = torch.cat(cols, 3)[:, :, :, :Fp] if len(cols) > 1 else cols[0][:, :, :, :Fp]
    return g[:, :, ::dilation, ::dilation].contiguous()


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride: int, dilation: int):
        k = w.shape[-1]
        pad = dilation * (k - 1) // 2
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, pad, dilation)
        return F.conv2d(x, w, None, stride, pad, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        stride, pad, dilation = ctx.conf
        k = w.shape[-1]
        gy = gy.contiguous(memory_format=CL)
        need_x, need_w = ctx.needs_input_grad[:2]
        # oneDNN's own depthwise kernels are fast for 3x3, no dilation, maps >= 4x4
        native_w = k == 3 and dilation == 1 and min(gy.shape[-2:]) >= 4
        if native_w and need_x:
            gx, gw, _ = _conv_bwd(gy, x, w, stride, pad, dilation, [True, True, False])
            return gx, gw, None, None
        gx = gw = None
        if need_x:
            if dilation == 1:
                gx = _conv_bwd(gy, x, w, stride, pad, 1, [True, False, False])[0]
            else:  # stride 1 here: the transposed conv is a conv with the flipped kernel
                gx = F.conv2d(gy, w.flip(-1, -2), None, 1, pad, dilation, x.shape[1])
        if need_w:
            gw = (_conv_bwd(gy, x, w, stride, pad, dilation, [False, True, False])[1] if native_w
                  else _dw_weight_grad(x, gy, k, dilation, stride).view_as(w))
        return gx, gw, None, None


class _PointwiseBMM(torch.autograd.Function):
    """Block-diagonal 1x1 conv (``groups`` blocks of c -> c) as one batched matmul over the
    blocks, reading and writing the channels-last memory in place (strided, no copies)."""

    @staticmethod
    def forward(ctx, x, w, groups: int):
        n, ch, h, wd = x.shape
        c = ch // groups
        xv = _nhwc(x).reshape(-1, groups, c).transpose(0, 1)                    # G, P, c (strided)
        out = x.new_empty((n * h * wd, groups, c))
        torch.bmm(xv, w.view(groups, c, c).transpose(1, 2), out=out.transpose(0, 1))
        ctx.save_for_backward(x, w)
        ctx.groups = groups
        return _nchw(out.view(n, h, wd, ch))

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        G = ctx.groups
        n, ch, h, wd = x.shape
        c = ch // G
        g = _nhwc(gy.contiguous(memory_format=CL)).reshape(-1, G, c).transpose(0, 1)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = x.new_empty((n * h * wd, G, c))
            torch.bmm(g, w.view(G, c, c), out=gx.transpose(0, 1))
            gx = _nchw(gx.view(n, h, wd, ch))
        if ctx.needs_input_grad[1]:
            xv = _nhwc(x).reshape(-1, G, c).transpose(0, 1)
            gw = torch.bmm(g.transpose(1, 2), xv).view_as(w)
        return gx, gw, None


def pointwise_conv2d(x: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
    """``F.conv2d(x, w, groups=groups)`` for a 1x1 kernel with c -> c blocks. oneDNN's grouped
    1x1 conv is slow for blocks of >= 16 channels on CPU; there a batched matmul is used."""
    c = x.shape[1] // groups
    if c < 16 or groups == 1 or x.device.type != "cpu":
        return F.conv2d(x, w, None, 1, 0, 1, groups)
    return _PointwiseBMM.apply(x.contiguous(memory_format=CL), w, groups)


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """``F.conv2d(x, w, stride=stride, padding=dilation*(k-1)//2, dilation=dilation, groups=C)``
    for a square odd kernel, with the backward of trick 10. Exact in value and gradients."""
    k = w.shape[-1]
    if dilation > 1 and stride > 1:
        # taps sit at s*i + d*t - d*(k-1)/2: with s = d = 2 only even pixels are read
        assert stride == dilation == 2, "only stride 2 with dilation 2"
        x = x[:, :, ::2, ::2].contiguous(memory_format=CL)
        stride = dilation = 1
    if stride == 1 and x.shape[-1] == x.shape[-2]:
        # crop taps that only ever see padding (offset |o| > H - 1): zero output, zero gradient
        H, pad = x.shape[-1], dilation * (k - 1) // 2
        keep = [t for t in range(k) if abs(t * dilation - pad) <= H - 1]
        if len(keep) < k:
            lo, hi = keep[0], keep[-1] + 1
            w = w[:, :, lo:hi, lo:hi]
            k = hi - lo
            if k == 1:
                return x * w.reshape(1, -1, 1, 1)
    if x.device.type != "cpu":
        # the tricks target oneDNN on CPU; elsewhere let PyTorch pick
        return F.conv2d(x, w, None, stride, dilation * (k - 1) // 2, dilation, x.shape[1])
    return _DepthwiseConv.apply(x.contiguous(memory_format=CL), w, stride, dilation)


# --------------------------------------------------------------------------
# batch norm over a concatenation of modules' channels (tricks 4 and 5)
# --------------------------------------------------------------------------

class _BNGroup:
    """Non-affine BN modules whose channels run as one concatenated BN call.

    Their running statistics are made views of one flat buffer, so the single
    ``F.batch_norm`` call updates every module in place (each gets exactly the
    update its own forward would give). If a module's buffers are replaced
    (``model.to(...)``, ``load_state_dict(assign=True)``) the views are rebuilt.
    """

    def __init__(self, mods: list[nn.BatchNorm2d]):
        self.mods = mods
        self.c = mods[0].num_features
        self.eps, self.momentum = mods[0].eps, mods[0].momentum
        self.tracked = mods[0].running_mean is not None
        self.bound: list = []

    def _stats(self):
        if self.bound and all(m._buffers["running_mean"] is a and m._buffers["running_var"] is b
                              and m._buffers["num_batches_tracked"] is n
                              for m, (a, b, n) in zip(self.mods, self.bound)):
            return self.flat
        ms, c = self.mods, self.c
        with torch.no_grad():
            rm = torch.cat([m.running_mean for m in ms])
            rv = torch.cat([m.running_var for m in ms])
            nbt = torch.stack([m.num_batches_tracked for m in ms])
        for i, m in enumerate(ms):
            m._buffers["running_mean"] = rm[i * c:(i + 1) * c]
            m._buffers["running_var"] = rv[i * c:(i + 1) * c]
            m._buffers["num_batches_tracked"] = nbt[i]
        self.bound = [(m._buffers["running_mean"], m._buffers["running_var"], m._buffers["num_batches_tracked"])
                      for m in ms]
        self.flat = (rm, rv, nbt)
        return self.flat

    def __call__(self, z: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Train-mode BN of ``z`` (channels = the modules' channels, in order), times ``weight``."""
        if not self.tracked:
            return F.batch_norm(z, None, None, weight, None, True, 0.0, self.eps)
        rm, rv, nbt = self._stats()
        out = F.batch_norm(z, rm, rv, weight, None, True, self.momentum, self.eps)
        nbt.add_(1)
        return out

    def shared(self, z: torch.Tensor) -> torch.Tensor:
        """BN(z) where every module sees the same ``z`` (trick 6): one BN call, then each
        module's running statistics take this batch's mean and unbiased variance."""
        if not self.tracked:
            return F.batch_norm(z, None, None, None, None, True, 0.0, self.eps)
        rm, rv, nbt = self._stats()
        # momentum 1: the "running" buffers come back holding the batch statistics
        mean, var = torch.zeros_like(rm[:self.c]), torch.ones_like(rv[:self.c])
        out = F.batch_norm(z, mean, var, None, None, True, 1.0, self.eps)
        with torch.no_grad():
            k = len(self.mods)
            rm.view(k, -1).mul_(1.0 - self.momentum).add_(mean, alpha=self.momentum)
            rv.view(k, -1).mul_(1.0 - self.momentum).add_(var, alpha=self.momentum)
            nbt.add_(1)
        return out


class _Repeat(torch.autograd.Function):
    """(n, h, w, S, c) -> (n, h, w, G, S, T, c) copies; the backward sums with plain adds
    (a one-call sum over the two strided copy axes is ~10x slower on CPU)."""

    @staticmethod
    def forward(ctx, r, G: int, T: int):
        n, h, w, S, c = r.shape
        ctx.dims = (G, T)
        return r.unsqueeze(3).unsqueeze(5).expand(n, h, w, G, S, T, c).contiguous()

    @staticmethod
    def backward(ctx, g):
        G, T = ctx.dims
        g = g.sum(3) if G > 1 else g[:, :, :, 0]
        out = g[:, :, :, :, 0]
        for t in range(1, T):
            out = out + g[:, :, :, :, t]
        return out, None, None


def _per_edge(vec: torch.Tensor, c: int) -> torch.Tensor:
    """(E,) -> (E*c,): each edge's value repeated over its c channels.

    Materialised: with a stride-0 weight, CPU batch-norm backward on channels-last
    input returns a wrong input gradient (torch 2.14; forward and weight grad are right).
    """
    return vec.unsqueeze(1).expand(vec.shape[0], c).contiguous().view(-1)


# --------------------------------------------------------------------------
# the plan of a cell: which edges run together, which modules hold what
# --------------------------------------------------------------------------

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


def _fallback(cell, states, weights, edge_weights):
    e = 0
    for j in range(2, cell.steps + 2):
        acc = None
        for i in range(j):
            h = cell.mixed[e](states[i], weights[e])
            if edge_weights is not None:
                h = edge_weights[e] * h
            acc = h if acc is None else acc + h
            e += 1
        states.append(acc)
    return torch.cat(states[-cell.multiplier:], dim=1)


def cell_forward(cell, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                 edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``SearchCell.forward(s0, s1, weights, edge_weights)``, fused (see the module docstring)."""
    s0 = s0.contiguous(memory_format=CL)
    s1 = s1.contiguous(memory_format=CL)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    plan = _plan(cell) if cell.training else None
    if plan is None:
        return _fallback(cell, states, weights, edge_weights)
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
