"""Eval networks built from a DARTS-form genotype (darts and sharpdarts spaces).

``CifarNetConfig`` / ``ImageNetConfig`` are the single source of configuration;
``build_network`` turns a config into a module.  Every op comes from
:func:`spaces.registry.build_op`, so the profiler and the cost model see the
same modules the network runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .errors import HwcostError
from .blocks import Identity
from .genotypes import Genotype
from .registry import build_op, get_space
from .skeleton import build_darts_skeleton, darts_skeleton


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def preprocess_inputs(space: str, C_prev_prev: int, C_prev: int, C: int, reduction_prev: bool,
                      affine: bool = True) -> tuple[nn.Module, nn.Module]:
    """A DARTS cell's input preprocessing, both to C channels: s0 by a FactorizedReduce
    when the previous cell reduced (else a 1x1 ReLUConvBN), s1 by a 1x1 ReLUConvBN."""
    pre0 = (build_op(space, "factorized_reduce", C_prev_prev, C, 2, affine) if reduction_prev
            else build_op(space, "preprocess", C_prev_prev, C, 1, affine))
    return pre0, build_op(space, "preprocess", C_prev, C, 1, affine)


class Cell(nn.Module):
    """A derived cell: preprocess s0/s1, 4 nodes of 2 edges each, concat."""

    def __init__(self, space: str, genotype: Genotype, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool, op_kwargs: dict | None = None):
        super().__init__()
        self.reduction = reduction
        sp = get_space(space)
        op_kwargs = op_kwargs or {}
        self.preprocess0, self.preprocess1 = preprocess_inputs(space, c_pp, c_p, c, reduction_prev)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = tuple(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.indices = tuple(src for _, src in edges)
        self.ops = nn.ModuleList()
        for op, src in edges:
            stride = 2 if reduction and src < 2 else 1
            extra = {k: v for k, v in op_kwargs.items() if k in sp.op(op).extras}
            self.ops.append(build_op(space, op, c, c, stride, **extra))
        self.steps = len(edges) // 2
        self.sums = nn.ModuleList(build_op(space, "node_sum", c, c, n_inputs=2) for _ in range(self.steps))
        self.cat = build_op(space, "concat", c, c * len(self.concat), n_inputs=len(self.concat))
        self.multiplier = len(self.concat)
        self.drop_prob = 0.0

    def forward(self, s0, s1):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                if self.training and self.drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, self.drop_prob)  # drop-path skips identity edges
                hs.append(h)
            states.append(self.sums[i](*hs))
        return self.cat(*[states[j] for j in self.concat])


@dataclass(frozen=True)
class _CellNetConfig:
    """Fields of both DARTS-space eval networks (defaults: the CIFAR network's)."""
    genotype: Genotype
    space: str = "darts"
    C: int = 36
    layers: int = 20
    num_classes: int = 10
    auxiliary: bool = False
    drop_path_prob: float = 0.0
    input_size: int = 32
    op_kwargs: dict = field(default_factory=dict)  # e.g. {"c_mid": 32} for sharpDARTS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["genotype"] = self.genotype.to_dict()
        return d


@dataclass(frozen=True)
class CifarNetConfig(_CellNetConfig):
    """The CIFAR eval network (DARTS: C=36, 20 cells, reductions at L/3, 2L/3)."""


@dataclass(frozen=True)
class ImageNetConfig(_CellNetConfig):
    """The ImageNet mobile-setting network (C=48, 14 cells, 224x224)."""
    C: int = 48
    layers: int = 14
    num_classes: int = 1000
    input_size: int = 224


class _CellNetwork(nn.Module):
    """Shared body: the DARTS skeleton (:func:`spaces.skeleton.darts_skeleton`) of derived cells."""

    def __init__(self, config, stem: str):
        super().__init__()
        self.config = cfg = config
        g = cfg.genotype
        sk = darts_skeleton(cfg.C, cfg.layers, (len(g.normal_concat), len(g.reduce_concat)), stem)
        self.aux_pos = sk.aux_pos
        build_darts_skeleton(
            self, sk, cfg.space,
            lambda s: Cell(cfg.space, g, s.C_prev_prev, s.C_prev, s.C, s.reduction, s.reduction_prev, cfg.op_kwargs),
            cfg.num_classes, aux_head=f"aux_head_{stem}" if cfg.auxiliary else None)
        self.set_drop_path(cfg.drop_path_prob)

    def set_drop_path(self, p: float) -> None:
        """Drop-path rate of every cell (the training loop ramps it linearly)."""
        for cell in self.cells:
            cell.drop_prob = p

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_pos and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(s1)
        return (logits, logits_aux) if self.training and self.auxiliary_head is not None else logits

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, 3, self.config.input_size, self.config.input_size)


class NetworkCIFAR(_CellNetwork):
    def __init__(self, config: CifarNetConfig):
        super().__init__(config, "cifar")

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_CellNetwork):
    def __init__(self, config: ImageNetConfig):
        super().__init__(config, "imagenet")

    def forward(self, x):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))


def build_network(config) -> nn.Module:
    """A config dataclass -> the network it describes."""
    from .nb201 import Nb201NetConfig, Nb201Network
    if isinstance(config, CifarNetConfig):
        return NetworkCIFAR(config)
    if isinstance(config, ImageNetConfig):
        return NetworkImageNet(config)
    if isinstance(config, Nb201NetConfig):
        return Nb201Network(config)
    raise HwcostError(f"no network builder for {type(config).__name__}")


NETWORKS = ("cifar10", "imagenet")


def network_config(network: str, genotype: Genotype, space: str = "darts", **overrides):
    """A named preset -> its config.

    sharpdarts ops keep their own middle widths (choke 32, flood x4, sep x1):
    that reproduces the paper's 1.98M (SHARP_DARTS) and 3.6M (SHARPSEPCONV_DARTS)
    parameters; ``op_kwargs={"c_mid": 32}`` forces one width on every conv.
    """
    if network == "cifar10":
        return CifarNetConfig(genotype=genotype, space=space, **overrides)
    if network == "imagenet":
        return ImageNetConfig(genotype=genotype, space=space, **overrides)
    from .errors import unknown
    raise unknown("network", network, NETWORKS)
