"""NAS-Bench-201: ops, cell and the CIFAR macro skeleton (C=16, N=5)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from . import blocks as B
from .darts import none_op, register_sum_concat, skip_connect
from .nb201_arch import EDGES, NB201_OPS, Nb201Arch
from .registry import build_op, register_op, register_space
from .skeleton import build_nb201_skeleton, nb201_skeleton

SPACE = "nb201"
register_space(SPACE, "NAS-Bench-201 cell space (5 ops, 6 edges, 15,625 cells)", NB201_OPS)

register_op(SPACE, "none")(none_op)
register_op(SPACE, "skip_connect")(skip_connect)   # cells never change shape: always the identity


@register_op(SPACE, "nor_conv_1x1", parametric=True)
def _conv1(c_in, c_out, stride, affine):
    """ReLU, 1x1 conv, BN."""
    return B.ReLUConvBN(c_in, c_out, 1, stride, 0, affine)


@register_op(SPACE, "nor_conv_3x3", parametric=True)
def _conv3(c_in, c_out, stride, affine):
    """ReLU, 3x3 conv (padding 1), BN."""
    return B.ReLUConvBN(c_in, c_out, 3, stride, 1, affine)


@register_op(SPACE, "avg_pool_3x3")
def _pool(c_in, c_out, stride, affine):
    """3x3 average pool, padding 1, count_include_pad=False (no BN)."""
    return B.PoolBN("avg", stride, c_in, with_bn=False)


class ResBlock(nn.Module):
    """NB201's residual reduction block: two ReLUConvBN 3x3 (first stride 2),
    shortcut 2x2 average pool + 1x1 conv."""

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        self.conv_a = B.ReLUConvBN(c_in, c_out, 3, 2, 1, affine)
        self.conv_b = B.ReLUConvBN(c_out, c_out, 3, 1, 1, affine)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0),
                                        nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


register_op(SPACE, "stem", searchable=False, parametric=True, example={"c_in": 3, "c_out": 16})(
    lambda c_in, c_out, stride, affine: nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)))
register_op(SPACE, "resblock", searchable=False, parametric=True, example={"c_out": 16, "stride": 2})(
    lambda c_in, c_out, stride, affine: ResBlock(c_in, c_out, affine))
register_op(SPACE, "classifier", searchable=False, parametric=True, example={"c_out": 10})(
    lambda c_in, c_out, stride, affine: B.Classifier(c_in, c_out, pre_act=True, affine=affine))
register_sum_concat(SPACE, concat=False)


class Nb201Cell(nn.Module):
    """Node j = sum over i < j of edge (j <- i) applied to node i; output node 3."""

    def __init__(self, arch: Nb201Arch, c: int, affine=True):
        super().__init__()
        self.arch = arch
        self.edges = nn.ModuleList(build_op(SPACE, op, c, c, 1, affine) for op in arch.ops)
        self.sums = nn.ModuleList(build_op(SPACE, "node_sum", c, c, 1, affine, n_inputs=j)
                                  for j in range(2, 4))

    def forward(self, x):
        nodes = [x]
        for j in range(1, 4):
            ins = [self.edges[e](nodes[i]) for e, (to, i) in enumerate(EDGES) if to == j]
            nodes.append(ins[0] if j == 1 else self.sums[j - 2](*ins))
        return nodes[-1]


@dataclass(frozen=True)
class Nb201NetConfig:
    arch: str
    C: int = 16
    N: int = 5
    num_classes: int = 10
    input_size: int = 32


class Nb201Network(nn.Module):
    """stem -> N cells -> resblock -> N cells -> resblock -> N cells -> BN/ReLU/GAP/linear."""

    def __init__(self, config: Nb201NetConfig):
        super().__init__()
        self.config = config
        arch = Nb201Arch.parse(config.arch)
        build_nb201_skeleton(self, nb201_skeleton(config.C, config.N, config.input_size),
                             lambda s: Nb201Cell(arch, s.c_in), config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.cells(self.stem(x)))

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, 3, self.config.input_size, self.config.input_size)
