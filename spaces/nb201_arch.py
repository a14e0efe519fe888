"""NAS-Bench-201 architecture strings, without torch.

A cell has 4 nodes; node 0 is the input and nodes 1, 2, 3 each sum one edge
from every earlier node, 6 edges in all.  The standard string lists the
inputs of nodes 1, 2 and 3::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

Edge order everywhere in hwcost is the string's order:
(1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import HwcostError

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4
# (to_node, from_node) for the six edges, in string order.
EDGES = tuple((j, i) for j in range(1, NUM_NODES) for i in range(j))


@dataclass(frozen=True)
class Nb201Arch:
    """One cell: ``ops[e]`` is the op on edge ``EDGES[e]``."""

    ops: tuple[str, ...]

    def __post_init__(self):
        if len(self.ops) != len(EDGES):
            raise HwcostError(f"an NB201 cell has {len(EDGES)} edges, got {len(self.ops)}")
        for op in self.ops:
            if op not in NB201_OPS:
                raise HwcostError(f"unknown NB201 op {op!r}; known: {', '.join(NB201_OPS)}")

    @classmethod
    def parse(cls, text: str) -> "Nb201Arch":
        """Parse the standard string; every malformed part gets a precise message."""
        s = text.strip()
        nodes = s.split("+")
        if len(nodes) != NUM_NODES - 1:
            raise HwcostError(
                f"bad NB201 architecture {text!r}: expected {NUM_NODES - 1} nodes separated by '+', "
                f"got {len(nodes)}; the form is |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
        ops: list[str] = []
        for j, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
                raise HwcostError(f"bad NB201 architecture {text!r}: node {j} must be written |op~i|...|")
            parts = node[1:-1].split("|")
            if len(parts) != j:
                raise HwcostError(
                    f"bad NB201 architecture {text!r}: node {j} needs {j} input edge(s), got {len(parts)}")
            for i, part in enumerate(parts):
                op, sep, src = part.partition("~")
                if not sep or src != str(i):
                    raise HwcostError(
                        f"bad NB201 architecture {text!r}: edge {part!r} of node {j} must read op~{i}")
                ops.append(op)
        return cls(tuple(ops))

    def to_str(self) -> str:
        out, e = [], 0
        for j in range(1, NUM_NODES):
            out.append("|" + "|".join(f"{self.ops[e + i]}~{i}" for i in range(j)) + "|")
            e += j
        return "+".join(out)

    __str__ = to_str

    def live_edges(self) -> tuple[bool, ...]:
        """Which edges lie on a path input -> output once ``none`` edges are removed.

        An edge that is not ``none`` but feeds a node with no path to the
        output (or starts at a node unreachable from the input) computes
        nothing the network uses.
        """
        present = [op != "none" for op in self.ops]
        reach_in = {0}
        for e, (j, i) in enumerate(EDGES):  # EDGES is topologically ordered
            if present[e] and i in reach_in:
                reach_in.add(j)
        reach_out = {NUM_NODES - 1}
        for e in reversed(range(len(EDGES))):
            j, i = EDGES[e]
            if present[e] and j in reach_out:
                reach_out.add(i)
        return tuple(present[e] and EDGES[e][1] in reach_in and EDGES[e][0] in reach_out
                     for e in range(len(EDGES)))

    def is_connected(self) -> bool:
        """Whether the output depends on the input at all."""
        return any(self.live_edges())


def all_archs() -> list[Nb201Arch]:
    """All 5**6 = 15,625 cells, in a fixed order."""
    return [Nb201Arch(ops) for ops in itertools.product(NB201_OPS, repeat=len(EDGES))]
