"""Building blocks shared by the spaces (the DARTS code's ``operations.py``).

Each class is the structure of the original implementations (see
REFERENCE.md); the registries in ``darts.py``, ``sharpdarts.py`` and
``nb201.py`` name them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN (DARTS preprocessing, NB201's nor_conv)."""

    def __init__(self, c_in, c_out, kernel_size, stride, padding, affine=True, dilation=1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

    def __init__(self, c_in, c_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two DilConv blocks with dilation 1; only the first carries the stride."""

    def __init__(self, c_in, c_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine))


class SharpSepConv(nn.Sequential):
    """sharpDARTS Fig. 3: ReLU -> dw k x k (stride, dilation) -> 1x1 to c_mid -> BN
    -> ReLU -> dw k x k -> 1x1 to c_out -> BN; c_mid = C_mid or c_out * C_mid_mult."""

    def __init__(self, c_in, c_out, kernel_size, stride, dilation=1, affine=True,
                 c_mid_mult=1, c_mid=None):
        cmid = c_mid if c_mid else int(c_out * c_mid_mult)
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, pad, dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, cmid, 1, bias=False),
            nn.BatchNorm2d(cmid, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(cmid, cmid, kernel_size, 1, (kernel_size - 1) // 2, groups=cmid, bias=False),
            nn.Conv2d(cmid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros, spatially subsampled at stride 2."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (on x and on x shifted by one pixel), concat, BN."""

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        if c_out % 2:
            from .errors import HwcostError
            raise HwcostError(f"FactorizedReduce needs an even c_out, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class PoolBN(nn.Sequential):
    """3x3 pooling (padding 1); in the search supernet a non-affine BN follows."""

    def __init__(self, kind: str, stride: int, c: int, with_bn: bool):
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        layers = [pool] + ([nn.BatchNorm2d(c, affine=False)] if with_bn else [])
        super().__init__(*layers)


class NodeSum(nn.Module):
    """A cell node: the sum of its incoming edges (a module so it can be profiled)."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.n_inputs = n_inputs

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """Channel concatenation of a cell's output nodes."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.n_inputs = n_inputs

    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class Classifier(nn.Module):
    """Global average pool -> linear (the DARTS networks' head)."""

    def __init__(self, c_in, num_classes, pre_act: bool = False, affine: bool = True):
        super().__init__()
        # NB201 puts BN + ReLU before the pooling ("lastact").
        self.pre = (nn.Sequential(nn.BatchNorm2d(c_in, affine=affine), nn.ReLU(inplace=False))
                    if pre_act else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.linear(torch.flatten(self.pool(self.pre(x)), 1))


class _AuxHead(nn.Module):
    """DARTS auxiliary head: ReLU, 5x5 average pool, 1x1 conv to 128, BN, ReLU, 2x2 conv to 768,
    BN, ReLU, (global average pool,) linear."""

    def __init__(self, c_in, num_classes, pool_stride: int, global_pool: bool):
        super().__init__()
        self.global_pool = global_pool
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(c_in, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        if self.global_pool:
            x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(x, 1))


class AuxHeadCIFAR(_AuxHead):
    """Auxiliary head after cell 2L/3, input 8x8 (pooled to 2x2, then 1x1)."""

    def __init__(self, c_in, num_classes):
        super().__init__(c_in, num_classes, pool_stride=3, global_pool=False)


class AuxHeadImageNet(_AuxHead):
    """Auxiliary head after cell 2L/3, input 14x14 (pooled to 5x5, 4x4, then averaged; mobile setting)."""

    def __init__(self, c_in, num_classes):
        super().__init__(c_in, num_classes, pool_stride=2, global_pool=True)
