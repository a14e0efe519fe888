"""Genotypes in the DARTS form, built-ins by name, and safe parsing.

A genotype file is JSON (``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat":
[2, 3, 4, 5], "reduce": [...], "reduce_concat": [...]}``) or the Python literal
papers publish (``Genotype(normal=[('sep_conv_3x3', 0), ...], ...)``), parsed
with :mod:`ast` -- never ``eval``.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import HwcostError, unknown

Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {"normal": [list(e) for e in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(e) for e in self.reduce], "reduce_concat": list(self.reduce_concat)}

    def __str__(self) -> str:
        f = lambda edges: "[" + ", ".join(f"({o!r}, {i})" for o, i in edges) + "]"  # noqa: E731
        return (f"Genotype(normal={f(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={f(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    def validate(self, space: str | None = None) -> "Genotype":
        """Check edge counts, input indices, concat nodes and (given a space) op names."""
        from .registry import get_space
        ops = None
        if space is not None:
            sp = get_space(space)
            ops = [o for o in sp.searchable_ops() if o != "none"]
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            if len(edges) == 0 or len(edges) % 2:
                raise HwcostError(f"genotype {cell} cell needs 2 edges per node, got {len(edges)} edges")
            steps = len(edges) // 2
            for k, (op, src) in enumerate(edges):
                node = k // 2
                if not isinstance(src, int) or not 0 <= src < node + 2:
                    raise HwcostError(
                        f"genotype {cell} edge {k} ({op!r}, {src!r}): node {node + 2} can only take "
                        f"inputs 0..{node + 1} (the two cell inputs and earlier nodes)")
                if ops is not None and op not in ops:
                    raise unknown(f"op in {cell} edge {k} of a {space} genotype", op, ops)
            concat = getattr(self, cell + "_concat")
            if not concat or any(not isinstance(c, int) or not 2 <= c < steps + 2 for c in concat):
                raise HwcostError(f"genotype {cell}_concat {list(concat)} must list nodes in 2..{steps + 1}")
        return self


def _edges(value, where: str) -> tuple[Edge, ...]:
    out = []
    try:
        pairs = [tuple(e) for e in value]
    except TypeError:
        pairs = None
    for pair in pairs if pairs is not None else [None]:
        ok = (pair is not None and len(pair) == 2 and isinstance(pair[0], str)
              and isinstance(pair[1], int) and not isinstance(pair[1], bool))
        if not ok:
            raise HwcostError(f"malformed genotype: {where} must be a list of [op_name, input_index] pairs")
        out.append(pair)
    return tuple(out)


def genotype_from_dict(d: dict, source: str = "genotype") -> Genotype:
    if not isinstance(d, dict):
        raise HwcostError(f"malformed genotype in {source}: expected an object with normal/reduce fields")
    missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
    if missing:
        raise HwcostError(f"malformed genotype in {source}: missing field(s) {missing}")
    try:
        nc, rc = tuple(d["normal_concat"]), tuple(d["reduce_concat"])
    except TypeError:
        raise HwcostError(f"malformed genotype in {source}: *_concat must be lists of node indices") from None
    return Genotype(_edges(d["normal"], f"{source}: normal"), nc,
                    _edges(d["reduce"], f"{source}: reduce"), rc)


def parse_genotype(text: str, source: str = "genotype") -> Genotype:
    """Parse JSON or a ``Genotype(...)`` literal (``range(2, 6)`` allowed for concat)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return genotype_from_dict(json.loads(text), source)
        except json.JSONDecodeError as e:
            raise HwcostError(f"malformed genotype JSON in {source}: {e}") from None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise HwcostError(f"malformed genotype in {source}: not JSON and not a Genotype(...) literal ({e.msg})") from None
    if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", None) == "Genotype"):
        raise HwcostError(f"malformed genotype in {source}: expected Genotype(normal=..., ...)")
    fields = {}
    for kw in tree.keywords:
        node = kw.value
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range"
                and all(isinstance(a, ast.Constant) and isinstance(a.value, int) for a in node.args)):
            fields[kw.arg] = list(range(*[a.value for a in node.args]))
            continue
        try:
            fields[kw.arg] = ast.literal_eval(node)
        except ValueError:
            raise HwcostError(f"malformed genotype in {source}: field {kw.arg!r} is not a literal") from None
    return genotype_from_dict(fields, source)


def _g(normal, reduce) -> Genotype:
    return Genotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5))


# Published genotypes (REFERENCE.md), name -> (space, genotype).
BUILTIN: dict[str, tuple[str, Genotype]] = {
    "DARTS_V1": ("darts", _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)])),
    "DARTS_V2": ("darts", _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)])),
    "PC_DARTS_CIFAR": ("darts", _g(
        [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)])),
    "PC_DARTS_IMAGENET": ("darts", _g(
        [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
        [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
         ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)])),
    "PDARTS": ("darts", _g(
        [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
         ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)])),
    "SHARP_DARTS": ("sharpdarts", _g(
        [("choke_conv_3x3", 0), ("choke_conv_3x3", 1), ("skip_connect", 0), ("choke_conv_3x3", 1),
         ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1)],
        [("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("flood_conv_3x3", 0)])),
    "SHARPSEPCONV_DARTS": ("sharpdarts", _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1)],
        [("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 2), ("avg_pool_3x3", 0),
         ("skip_connect", 2), ("avg_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 3)])),
}


def load_genotype(name_or_path: str, space: str | None = None) -> tuple[str, Genotype]:
    """A built-in name or a file path -> (space, validated genotype).

    For a file the space is the one asked for (default ``darts``); for a
    built-in it must match the space asked for, if any.
    """
    if name_or_path in BUILTIN:
        g_space, g = BUILTIN[name_or_path]
        if space is not None and space != g_space:
            raise HwcostError(f"genotype {name_or_path} belongs to space {g_space!r}, not {space!r}")
        return g_space, g.validate(g_space)
    path = Path(name_or_path)
    if not path.is_file():
        raise unknown("genotype (not a built-in name, and no such file)", name_or_path, BUILTIN)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise HwcostError(f"cannot read genotype file {path}: {e}") from None
    space = space or "darts"
    return space, parse_genotype(text, str(path)).validate(space)


def random_genotype(rng, space: str = "darts", steps: int = 4, skew: float | None = None) -> Genotype:
    """A random derived genotype: each node takes 2 distinct earlier states, each through a
    random non-``none`` op of ``space`` (what a DARTS derivation can produce). ``rng`` is a
    ``random.Random`` or a seed.

    ``skew``: each cell draws its ops from its own mix, op weights ~ Dirichlet(``skew``) (small:
    a cell of mostly one or two ops, as searches derive -- pools and skips in one cell type,
    convolutions in the other); None: every op equally likely."""
    import random
    from .registry import get_space
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    ops = [o for o in get_space(space).searchable_ops() if o != "none"]
    cells = []
    for _ in range(2):
        weights = None if skew is None else [rng.gammavariate(skew, 1.0) + 1e-12 for _ in ops]
        edges = []
        for node in range(steps):
            for src in sorted(rng.sample(range(node + 2), 2)):
                edges.append((rng.choice(ops) if weights is None else rng.choices(ops, weights)[0], src))
        cells.append(tuple(edges))
    concat = tuple(range(2, steps + 2))
    return Genotype(cells[0], concat, cells[1], concat).validate(space)
