"""Macro skeletons, each laid out once: where the cells sit and what they see.

A *skeleton* is plain data (no modules): the stems, one slot per position of
the body with its channels (and, for NB201, its resolution and stride), the
auxiliary head's position and the classifier's width.  The eval networks
(:mod:`spaces.networks`, :mod:`spaces.nb201`), the supernets
(``search/supernet.py``, ``search/dcanas.py``) and the closed-form NB201 counts
(``costmodels/arch_features.py``) all read the same skeleton; the builders
below turn one into modules, asking a *cell factory* for the cell at each slot.

The builders construct modules in the original code's order (stems, cells with
the auxiliary head right after its cell, classifier), so a seed gives the same
initial weights and ``state_dict`` keys as the networks the papers published.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch.nn as nn

from .errors import HwcostError
from .registry import build_op


@dataclass(frozen=True)
class Fixed:
    """A non-searched part: ``build_op(space, op, c_in, c_out, stride)`` stored as ``name``."""
    name: str
    op: str
    c_in: int
    c_out: int
    stride: int = 1


# ------------------------------------------------------------------ DARTS

@dataclass(frozen=True)
class CellSlot:
    """One cell of a DARTS-style network (the DARTS code's loop variables)."""
    index: int
    C_prev_prev: int        # channels of s0
    C_prev: int             # channels of s1
    C: int                  # the cell's width (doubled at a reduction)
    reduction: bool
    reduction_prev: bool    # s0 is at twice s1's resolution: preprocess it with a FactorizedReduce
    first_of_type: bool     # the first normal / the first reduction cell (DCA-NAS mixes only these)


@dataclass(frozen=True)
class DartsSkeleton:
    """Stems -> L cells (reductions at L//3 and 2L//3) -> GAP + linear; aux head after cell 2L//3."""
    stems: tuple[Fixed, ...]
    cells: tuple[CellSlot, ...]
    aux_pos: int            # the auxiliary head reads this cell's output
    C_aux: int              # ... of this many channels
    C_out: int              # channels into the classifier


def darts_skeleton(C: int, layers: int, multiplier: int | tuple[int, int], stem: str = "cifar",
                   stem_multiplier: int = 3, in_channels: int = 3) -> DartsSkeleton:
    """The DARTS CIFAR (``stem="cifar"``) or ImageNet mobile (``"imagenet"``) skeleton.

    ``multiplier``: how many nodes a cell concatenates (its output is
    ``multiplier * C`` channels); ``(normal, reduce)`` when the two cell types differ.
    """
    m_normal, m_reduce = (multiplier, multiplier) if isinstance(multiplier, int) else multiplier
    if stem == "cifar":
        c_stem = stem_multiplier * C
        stems = (Fixed("stem", "stem_cifar", in_channels, c_stem),)
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
    elif stem == "imagenet":
        stems = (Fixed("stem0", "stem0_imagenet", in_channels, C, 2), Fixed("stem1", "stem1_imagenet", C, C, 2))
        # stem1 halves the resolution again: the first cell sees a "reduced previous".
        c_pp, c_p, reduction_prev = C, C, True
    else:
        raise HwcostError(f"unknown DARTS stem {stem!r}; known: cifar, imagenet")
    reductions, aux_pos = (layers // 3, 2 * layers // 3), 2 * layers // 3
    slots, seen, c_aux, c_curr = [], set(), 0, C
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
        slots.append(CellSlot(i, c_pp, c_p, c_curr, reduction, reduction_prev, reduction not in seen))
        seen.add(reduction)
        reduction_prev = reduction
        c_pp, c_p = c_p, (m_reduce if reduction else m_normal) * c_curr
        if i == aux_pos:
            c_aux = c_p
    return DartsSkeleton(stems, tuple(slots), aux_pos, c_aux, c_p)


def build_darts_skeleton(net: nn.Module, sk: DartsSkeleton, space: str, make_cell: Callable[[CellSlot], nn.Module],
                         num_classes: int, aux_head: str | None = None) -> None:
    """Give ``net`` its stems, ``cells`` (``make_cell(slot)`` each), ``auxiliary_head``
    (op ``aux_head``, or None) and ``classifier``."""
    for f in sk.stems:
        setattr(net, f.name, build_op(space, f.op, f.c_in, f.c_out, f.stride))
    net.cells = nn.ModuleList()
    net.auxiliary_head = None
    for slot in sk.cells:
        net.cells.append(make_cell(slot))
        if slot.index == sk.aux_pos and aux_head:
            net.auxiliary_head = build_op(space, aux_head, sk.C_aux, num_classes)
    net.classifier = build_op(space, "classifier", sk.C_out, num_classes)


# --------------------------------------------------------------- NAS-Bench-201

NB201_STAGES = 3


@dataclass(frozen=True)
class Nb201Slot:
    """A place in the NB201 body: a cell (``kind="cell"``) or a residual reduction block."""
    index: int
    kind: str               # "cell" or "resblock" (an op of the nb201 space)
    stage: int
    n: int                  # the cell's number within its stage (0 for a resblock)
    c_in: int
    c_out: int
    stride: int
    h: int                  # side of the (square) input


@dataclass(frozen=True)
class Nb201Skeleton:
    """stem -> N cells -> resblock -> N cells -> resblock -> N cells -> BN/ReLU/GAP/linear."""
    stem: Fixed
    input_size: int         # side of the stem's input
    body: tuple[Nb201Slot, ...]
    stages: tuple[tuple[int, int], ...]   # (channels, side) of each stage's cells
    C_out: int              # channels into the classifier

    @property
    def resblocks(self) -> tuple[Nb201Slot, ...]:
        return tuple(s for s in self.body if s.kind != "cell")


@lru_cache(maxsize=64)
def nb201_skeleton(C: int = 16, N: int = 5, input_size: int = 32, in_channels: int = 3) -> Nb201Skeleton:
    """The NB201 CIFAR skeleton: three stages of N cells; each new stage doubles C and halves the side."""
    body, stages, c, h = [], [], C, input_size
    for stage in range(NB201_STAGES):
        if stage:
            body.append(Nb201Slot(len(body), "resblock", stage, 0, c, 2 * c, 2, h))
            c, h = 2 * c, h // 2
        stages.append((c, h))
        for n in range(N):
            body.append(Nb201Slot(len(body), "cell", stage, n, c, c, 1, h))
    return Nb201Skeleton(Fixed("stem", "stem", in_channels, C), input_size, tuple(body), tuple(stages), c)


def build_nb201_skeleton(net: nn.Module, sk: Nb201Skeleton, make_cell: Callable[[Nb201Slot], nn.Module],
                         num_classes: int, body: str = "cells",
                         wrap: Callable[[list], nn.Module] = lambda mods: nn.Sequential(*mods)) -> None:
    """Give ``net`` its ``stem``, the body (``make_cell(slot)`` at each cell, resblocks between
    stages) as ``wrap(modules)`` named ``body``, and ``classifier``."""
    space = "nb201"
    setattr(net, sk.stem.name, build_op(space, sk.stem.op, sk.stem.c_in, sk.stem.c_out, sk.stem.stride))
    setattr(net, body, wrap([make_cell(s) if s.kind == "cell" else build_op(space, s.kind, s.c_in, s.c_out, s.stride)
                             for s in sk.body]))
    net.classifier = build_op(space, "classifier", sk.C_out, num_classes)
