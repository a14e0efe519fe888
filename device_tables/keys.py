"""Keys that index a device table: one op occurrence, or one whole architecture.

A key is a plain frozen record (hashable, comparable) with one canonical string
form, so the same key indexes a table, a surrogate's input and a cost tensor,
and a table file stays readable and greppable:

    darts/sep_conv_3x3|b1|cin16|cout16|h32|w32|s1|c_mid=32
    arch:nb201/cifar10/|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|...|

``from_str`` accepts only the canonical form, so ``from_str(k.to_str()) == k``
and two spellings of one key can never coexist in a table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from .errors import KeyFormatError

ExtraValue = Union[int, float, str]

# A name (space, op, network, extra arg) must not contain the separators of the
# string form, nor whitespace, so that the string splits back unambiguously.
_NAME = re.compile(r"[^\s/|=:,]+")
_INT = re.compile(r"-?[0-9]+")
_ARCH_PREFIX = "arch:"
# (string prefix, dataclass field) of the fixed shape arguments, in order.
_SHAPE = (("b", "batch"), ("cin", "c_in"), ("cout", "c_out"), ("h", "h"), ("w", "w"), ("s", "stride"))


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise KeyFormatError(
            f"{what} must be a non-empty string without whitespace or any of / | = : , (got {value!r})"
        )


def _check_positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KeyFormatError(f"{what} must be a positive integer (got {value!r})")


def _is_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_extra_value(name: str, value: Any) -> None:
    if isinstance(value, bool):
        raise KeyFormatError(f"extra {name!r}: booleans are not allowed, use 0/1 (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise KeyFormatError(f"extra {name!r} must be finite (got {value!r})")
    if isinstance(value, str):
        # A string that reads as a number would come back as a number.
        if not _NAME.fullmatch(value) or _is_numeric(value):
            raise KeyFormatError(
                f"extra {name!r}: a string value must be a non-numeric name without "
                f"whitespace or separators (got {value!r})"
            )
    elif not isinstance(value, (int, float)):
        raise KeyFormatError(f"extra {name!r} must be an int, float or str (got {type(value).__name__})")


def _format_value(value: ExtraValue) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _parse_value(text: str) -> ExtraValue:
    if _INT.fullmatch(text):
        return int(text)
    if _is_numeric(text):
        return float(text)
    return text


def _normalise_extra(extra: Any) -> tuple[tuple[str, ExtraValue], ...]:
    """Sort extra args by name (a dict or pairs are accepted) and validate them."""
    items = list(extra.items()) if isinstance(extra, Mapping) else list(extra)
    pairs = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise KeyFormatError(f"extra must be (name, value) pairs (got {item!r})")
        _check_name("extra name", item[0])
        _check_extra_value(item[0], item[1])
        pairs.append(item)
    pairs.sort(key=lambda p: p[0])
    for a, b in zip(pairs, pairs[1:]):
        if a[0] == b[0]:
            raise KeyFormatError(f"extra name {a[0]!r} given twice")
    return tuple(pairs)


def _check_dict(cls_name: str, d: Any, required: set[str], optional: set[str]) -> None:
    if not isinstance(d, dict):
        raise KeyFormatError(f"{cls_name} fields must be an object (got {type(d).__name__})")
    missing = sorted(required - d.keys())
    unknown = sorted(d.keys() - required - optional)
    if missing:
        raise KeyFormatError(f"{cls_name} fields miss {', '.join(missing)}")
    if unknown:
        raise KeyFormatError(f"{cls_name} fields have unknown {', '.join(map(str, unknown))}")


@dataclass(frozen=True)
class OpKey:
    """One op at one shape: what a profiler measures and a cost model looks up."""

    space: str
    op: str
    batch: int
    c_in: int
    c_out: int
    h: int
    w: int
    stride: int
    extra: tuple[tuple[str, ExtraValue], ...] = field(default=())

    def __post_init__(self) -> None:
        _check_name("space", self.space)
        _check_name("op", self.op)
        for _, name in _SHAPE:
            _check_positive_int(name, getattr(self, name))
        object.__setattr__(self, "extra", _normalise_extra(self.extra))

    def to_str(self) -> str:
        parts = [f"{self.space}/{self.op}"]
        parts += [f"{prefix}{getattr(self, name)}" for prefix, name in _SHAPE]
        parts += [f"{name}={_format_value(value)}" for name, value in self.extra]
        return "|".join(parts)

    __str__ = to_str

    @classmethod
    def from_str(cls, s: str) -> "OpKey":
        try:
            if not isinstance(s, str):
                raise KeyFormatError(f"must be a string (got {type(s).__name__})")
            parts = s.split("|")
            space, slash, op = parts[0].partition("/")
            if not slash or len(parts) < 1 + len(_SHAPE):
                raise KeyFormatError("expected 'space/op|b<int>|cin<int>|cout<int>|h<int>|w<int>|s<int>[|name=value...]'")
            shape = {}
            for (prefix, name), text in zip(_SHAPE, parts[1:]):
                digits = text[len(prefix):]
                if not text.startswith(prefix) or not re.fullmatch(r"[0-9]+", digits):
                    raise KeyFormatError(f"expected {prefix}<int> for {name}, got {text!r}")
                shape[name] = int(digits)
            extra = []
            for text in parts[1 + len(_SHAPE):]:
                name, eq, value = text.partition("=")
                if not eq:
                    raise KeyFormatError(f"expected name=value, got {text!r}")
                extra.append((name, _parse_value(value)))
            key = cls(space=space, op=op, extra=tuple(extra), **shape)
            if key.to_str() != s:
                raise KeyFormatError(f"not in canonical form; write it as {key.to_str()!r}")
            return key
        except KeyFormatError as e:
            raise KeyFormatError(f"bad op key {s!r}: {e}") from None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"space": self.space, "op": self.op}
        d.update((name, getattr(self, name)) for _, name in _SHAPE)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OpKey":
        _check_dict("op key", d, {"space", "op"} | {n for _, n in _SHAPE}, {"extra"})
        extra = d.get("extra", {})
        if not isinstance(extra, dict):
            raise KeyFormatError(f"op key extra must be an object (got {type(extra).__name__})")
        return cls(**{**d, "extra": extra})


@dataclass(frozen=True)
class ArchKey:
    """One whole architecture of a space, on one network configuration/dataset."""

    space: str
    arch: str
    network: str

    def __post_init__(self) -> None:
        _check_name("space", self.space)
        _check_name("network", self.network)
        if not isinstance(self.arch, str) or not self.arch or not self.arch.isprintable():
            raise KeyFormatError(f"arch must be a non-empty printable string (got {self.arch!r})")

    def to_str(self) -> str:
        return f"{_ARCH_PREFIX}{self.space}/{self.network}/{self.arch}"

    __str__ = to_str

    @classmethod
    def from_str(cls, s: str) -> "ArchKey":
        try:
            if not isinstance(s, str) or not s.startswith(_ARCH_PREFIX):
                raise KeyFormatError(f"expected '{_ARCH_PREFIX}space/network/arch'")
            parts = s[len(_ARCH_PREFIX):].split("/", 2)
            if len(parts) != 3:
                raise KeyFormatError(f"expected '{_ARCH_PREFIX}space/network/arch'")
            return cls(space=parts[0], network=parts[1], arch=parts[2])
        except KeyFormatError as e:
            raise KeyFormatError(f"bad architecture key {s!r}: {e}") from None

    def as_dict(self) -> dict[str, Any]:
        return {"space": self.space, "arch": self.arch, "network": self.network}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchKey":
        _check_dict("architecture key", d, {"space", "arch", "network"}, set())
        return cls(**d)


Key = Union[OpKey, ArchKey]


def parse_key(s: str) -> Key:
    """Parse a canonical key string into an ``ArchKey`` (``arch:...``) or an ``OpKey``."""
    if isinstance(s, str) and s.startswith(_ARCH_PREFIX):
        return ArchKey.from_str(s)
    return OpKey.from_str(s)
