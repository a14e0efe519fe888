"""The DARTS space (DARTS, PC-DARTS, P-DARTS and RAPDARTS share it).

Searchable ops in the original code's order; ``affine=False`` builds the
search variant (non-affine BNs and a BN after each pooling op), ``affine=True``
the eval variant.
"""
from __future__ import annotations

import torch.nn as nn

from . import blocks as B
from .registry import register_op, register_space

SPACE = "darts"
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

register_space(SPACE, "DARTS / PC-DARTS / P-DARTS cell space (8 ops, 14 edges per cell)", PRIMITIVES)


# none and skip_connect are the same in every space (nb201 and sharpdarts register these too).
@register_op(SPACE, "none")
def none_op(c_in, c_out, stride, affine):
    """Zeros (spatially subsampled at stride 2)."""
    return B.Zero(stride)


@register_op(SPACE, "max_pool_3x3")
def _max_pool(c_in, c_out, stride, affine):
    """3x3 max pool, padding 1 (+ non-affine BN in the search variant)."""
    return B.PoolBN("max", stride, c_in, with_bn=not affine)


@register_op(SPACE, "avg_pool_3x3")
def _avg_pool(c_in, c_out, stride, affine):
    """3x3 average pool, padding 1, count_include_pad=False (+ BN in the search variant)."""
    return B.PoolBN("avg", stride, c_in, with_bn=not affine)


@register_op(SPACE, "skip_connect", parametric=False)
def skip_connect(c_in, c_out, stride, affine):
    """Identity at stride 1; FactorizedReduce at stride 2."""
    return B.Identity() if stride == 1 else B.FactorizedReduce(c_in, c_out, affine)


@register_op(SPACE, "sep_conv_3x3", parametric=True)
def _sep3(c_in, c_out, stride, affine):
    """Two (ReLU, dw 3x3, pw 1x1, BN) blocks."""
    return B.SepConv(c_in, c_out, 3, stride, 1, affine)


@register_op(SPACE, "sep_conv_5x5", parametric=True)
def _sep5(c_in, c_out, stride, affine):
    """Two (ReLU, dw 5x5, pw 1x1, BN) blocks."""
    return B.SepConv(c_in, c_out, 5, stride, 2, affine)


@register_op(SPACE, "dil_conv_3x3", parametric=True)
def _dil3(c_in, c_out, stride, affine):
    """ReLU, dw 3x3 dilation 2, pw 1x1, BN."""
    return B.DilConv(c_in, c_out, 3, stride, 2, 2, affine)


@register_op(SPACE, "dil_conv_5x5", parametric=True)
def _dil5(c_in, c_out, stride, affine):
    """ReLU, dw 5x5 dilation 2, pw 1x1, BN."""
    return B.DilConv(c_in, c_out, 5, stride, 4, 2, affine)


def register_cell_fixed_parts(space: str) -> None:
    """The non-searched parts of a DARTS-style cell network, registered in ``space``.

    darts and sharpdarts share them; registering them per space keeps op keys
    and tables per space.
    """

    @register_op(space, "preprocess", searchable=False, parametric=True)
    def _pre(c_in, c_out, stride, affine):
        """Cell input preprocessing: ReLU, 1x1 conv, BN."""
        return B.ReLUConvBN(c_in, c_out, 1, stride, 0, affine)

    @register_op(space, "factorized_reduce", searchable=False, parametric=True,
                 example={"stride": 2})
    def _fr(c_in, c_out, stride, affine):
        """Preprocessing of s0 after a reduction cell (stride 2)."""
        return B.FactorizedReduce(c_in, c_out, affine)

    @register_op(space, "stem_cifar", searchable=False, parametric=True,
                 example={"c_in": 3, "c_out": 24})
    def _stem(c_in, c_out, stride, affine):
        """3x3 conv (3 -> 3C) + BN."""
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))

    @register_op(space, "stem0_imagenet", searchable=False, parametric=True,
                 example={"c_in": 3, "c_out": 16, "stride": 2, "h": 32})
    def _stem0(c_in, c_out, stride, affine):
        """conv 3x3 s2 (3 -> C/2), BN, ReLU, conv 3x3 s2 (C/2 -> C), BN."""
        return nn.Sequential(
            nn.Conv2d(c_in, c_out // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_out // 2, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out))

    @register_op(space, "stem1_imagenet", searchable=False, parametric=True,
                 example={"stride": 2})
    def _stem1(c_in, c_out, stride, affine):
        """ReLU, conv 3x3 s2 (C -> C), BN."""
        return nn.Sequential(nn.ReLU(inplace=False),
                             nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(c_out))

    @register_op(space, "classifier", searchable=False, parametric=True,
                 example={"c_out": 10})
    def _cls(c_in, c_out, stride, affine):
        """Global average pool -> linear (c_out = number of classes)."""
        return B.Classifier(c_in, c_out)

    @register_op(space, "aux_head_cifar", searchable=False, parametric=True,
                 example={"c_out": 10})
    def _aux_c(c_in, c_out, stride, affine):
        """Auxiliary head (8x8 input), c_out = number of classes."""
        return B.AuxHeadCIFAR(c_in, c_out)

    @register_op(space, "aux_head_imagenet", searchable=False, parametric=True,
                 example={"c_out": 10, "h": 14})
    def _aux_i(c_in, c_out, stride, affine):
        """Auxiliary head (14x14 input), c_out = number of classes."""
        return B.AuxHeadImageNet(c_in, c_out)

    register_sum_concat(space, concat=True)


def register_sum_concat(space: str, concat: bool) -> None:
    """Node sum (and the cell output concat) as ops, so tables and profiles see them."""

    @register_op(space, "node_sum", searchable=False, same_channels=True, extras=("n_inputs",),
                 example={"n_inputs": 2})
    def _sum(c_in, c_out, stride, affine, n_inputs=2):
        """Sum of a node's incoming edges."""
        return B.NodeSum(n_inputs)

    if concat:
        @register_op(space, "concat", searchable=False, extras=("n_inputs",),
                     example={"c_out": 32, "n_inputs": 4})
        def _cat(c_in, c_out, stride, affine, n_inputs=4):
            """Channel concat of n inputs of c_in channels each (c_out = n * c_in)."""
            return B.Concat(n_inputs)


register_cell_fixed_parts(SPACE)
