"""Registries of spaces and ops: each op is defined once and found by name.

An op factory has the signature ``factory(c_in, c_out, stride, affine, **extra)``
and returns an ``nn.Module``.  :func:`build_op` tags the module it returns with
``hw_space``, ``hw_op`` and ``hw_args`` so that anything downstream (shape
enumeration for profiling, cost tensors) can identify it without a hand-kept
list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from .errors import HwcostError, unknown


@dataclass(frozen=True)
class OpSpec:
    space: str
    name: str
    factory: Callable[..., nn.Module]
    searchable: bool       # a candidate on an edge (else a fixed part: stem, preprocessing, ...)
    parametric: bool       # has weights (convs) -- sharpDARTS's Max-W study counts these
    same_channels: bool    # searchable ops map C -> C; fixed parts may change channels
    extras: tuple[str, ...] = ()  # names of op-specific shape arguments (part of the op key)
    doc: str = ""
    # A shape the op takes: build_op kwargs plus the input's h (tests, docs).
    example: tuple[tuple[str, int], ...] = (("c_in", 8), ("c_out", 8), ("stride", 1), ("h", 8))


@dataclass
class Space:
    name: str
    description: str
    ops: dict[str, OpSpec] = field(default_factory=dict)
    # Candidate ops of a search, in the order the original code lists them.
    primitives: tuple[str, ...] = ()

    def op(self, name: str) -> OpSpec:
        if name not in self.ops:
            raise unknown(f"op in space {self.name!r}", name, self.ops)
        return self.ops[name]

    def searchable_ops(self) -> list[str]:
        return [n for n, s in self.ops.items() if s.searchable]

    def fixed_ops(self) -> list[str]:
        return [n for n, s in self.ops.items() if not s.searchable]


_SPACES: dict[str, Space] = {}


def register_space(name: str, description: str, primitives: tuple[str, ...] = ()) -> Space:
    """A new, empty space; a name registers once (a second space of that name is an error)."""
    if name in _SPACES:
        raise HwcostError(f"space {name!r} is registered already; pick another name")
    _SPACES[name] = Space(name, description, primitives=tuple(primitives))
    return _SPACES[name]


def register_op(space: str, name: str, *, searchable: bool = True, parametric: bool = False,
                same_channels: bool | None = None, extras: tuple[str, ...] = (), example: dict | None = None):
    """Decorator: ``@register_op("darts", "sep_conv_3x3", parametric=True)``.

    ``example`` overrides the default example shape (c_in=c_out=8, stride 1, 8x8).
    An op name registers once per space (a second registration is an error).
    """

    def deco(factory):
        if space not in _SPACES:
            raise unknown("space (register it before its ops)", space, _SPACES)
        sp = _SPACES[space]
        if name in sp.ops:
            raise HwcostError(f"op {name!r} is registered already in space {space!r}; pick another name")
        ex = {"c_in": 8, "c_out": 8, "stride": 1, "h": 8, **(example or {})}
        sp.ops[name] = OpSpec(space, name, factory, searchable, parametric,
                              searchable if same_channels is None else same_channels,
                              tuple(extras), (factory.__doc__ or "").strip(), tuple(sorted(ex.items())))
        return factory

    return deco


def get_space(name: str) -> Space:
    _load_builtin_spaces()
    if name not in _SPACES:
        raise unknown("space", name, _SPACES)
    return _SPACES[name]


def list_spaces() -> list[str]:
    _load_builtin_spaces()
    return sorted(_SPACES)


def build_op(space: str, name: str, c_in: int, c_out: int | None = None, stride: int = 1,
             affine: bool = True, **extra) -> nn.Module:
    """Build op ``name`` of ``space``; the one constructor every layer uses."""
    spec = get_space(space).op(name)
    c_out = c_in if c_out is None else c_out
    for label, v in (("c_in", c_in), ("c_out", c_out), ("stride", stride)):
        if not isinstance(v, int) or v < 1:
            raise HwcostError(f"{space}/{name}: {label} must be a positive integer, got {v!r}")
    if spec.same_channels and c_in != c_out:
        raise HwcostError(f"{space}/{name} maps C -> C channels; cannot take c_in={c_in}, c_out={c_out}")
    if stride not in (1, 2):
        raise HwcostError(f"{space}/{name}: stride must be 1 or 2, got {stride}")
    unknown_extra = set(extra) - set(spec.extras)
    if unknown_extra:
        raise HwcostError(f"{space}/{name} takes no argument(s) {sorted(unknown_extra)}; "
                          f"its extra arguments are {list(spec.extras) or 'none'}")
    module = spec.factory(c_in, c_out, stride, affine, **extra)
    module.hw_space, module.hw_op = space, name
    module.hw_args = dict(c_in=c_in, c_out=c_out, stride=stride, **extra)
    return module


def example_inputs(module: nn.Module, batch: int, h: int, w: int, dtype=None) -> tuple:
    """Random inputs of the shape an op built by :func:`build_op` takes."""
    import torch
    args = module.hw_args
    n = getattr(module, "n_inputs", 1)
    return tuple(torch.randn(batch, args["c_in"], h, w, dtype=dtype) for _ in range(n))


_loaded = False


def _load_builtin_spaces() -> None:
    """Import the modules that register the built-in spaces (once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import darts, nb201, sharpdarts  # noqa: F401  (registration side effects)
