"""Autograd kernels of the fused DARTS search cell (search/fast.py): depthwise and block-diagonal
pointwise convolutions with fast CPU backwards (trick 10), and the edge-batching copies (trick 4).

Each is exact in value and gradients (tests/test_fast_supernet.py compares them with ``F.conv2d``).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

CL = torch.channels_last


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


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
