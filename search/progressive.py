"""P-DARTS progressive search (Chen et al. 2019), the base of RAPDARTS (Green et al.).

The search runs in stages; each stage is a fresh supernet, deeper than the last
(5 -> 11 -> 17 cells on CIFAR), whose edges hold only the ops the previous stage
found strongest (8 -> 5 -> 3 per edge, by softmax(alpha) of that stage):

* :func:`keep_strongest` -- the op subsets of the next stage;
* :func:`skip_dropout_rate` -- dropout on identity skip-connect outputs, rate
  0.1 / 0.4 / 0.7 by stage, decaying within a stage;
* :func:`cap_skips` -- after the last stage the normal cell keeps at most 2
  skip connects: the weakest chosen one is removed (its probability set to 0,
  as P-DARTS's ``delete_min_sk_prob``) and the cell re-derived, until it holds.

``none`` can survive a stage transition (P-DARTS's ``get_min_k``); after the
last stage it is always dropped (``get_min_k_no_zero``), which is what the DARTS
derivation rule does (strongest non-``none`` op per edge). RAPDARTS is this
with expected-cost terms in the alpha loss of every stage (the objective's
terms; nothing more here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from costmodels.cost_tensor import darts_edges
from costmodels.expected_cost import derive_darts
from spaces.errors import HwcostError

PDARTS_LAYERS = (5, 11, 17)
PDARTS_DROPOUT = (0.1, 0.4, 0.7)
PDARTS_SCALE = 0.2      # exp(-0.2 (epoch - warm-up)) decay of the dropout rate once alpha trains
PDARTS_MAX_SKIPS = 2


@dataclass(frozen=True)
class Stage:
    index: int
    layers: int          # cells of this stage's supernet (nb201: cells per stage = layers // 3)
    ops_per_edge: int    # ops each edge holds during this stage
    skip_dropout: float  # initial dropout rate on skip-connect outputs


def default_stage_ops(n_ops: int, n_stages: int) -> tuple[int, ...]:
    """P-DARTS's 8 -> 5 -> 3, as shares of the op list: (n, round(5n/8), round(3n/8)), at least 2.

    darts: (8, 5, 3); sharpdarts (9 ops): (9, 6, 3); nb201 (5 ops): (5, 3, 2).
    More than three stages continue the geometric decay.
    """
    out = [n_ops]
    for s in range(1, n_stages):
        share = (5 / 8, 3 / 8)[s - 1] if s <= 2 else (3 / 8) * (3 / 5) ** (s - 2)
        out.append(max(2, min(out[-1], round(n_ops * share))))
    return tuple(out)


def plan_stages(layers: Sequence[int], ops_per_edge: Sequence[int] | None, dropout: Sequence[float] | None,
                n_ops: int) -> list[Stage]:
    """Validate the stage options and zip them into stages."""
    layers = tuple(int(x) for x in layers)
    if not layers:
        raise HwcostError("progressive search needs at least one stage (--stages, e.g. 5,11,17)")
    if any(x < 1 for x in layers) or any(b < a for a, b in zip(layers, layers[1:])):
        raise HwcostError(f"stages {list(layers)} must be positive cell counts that do not decrease (e.g. 5,11,17)")
    ops = tuple(int(x) for x in (ops_per_edge if ops_per_edge else default_stage_ops(n_ops, len(layers))))
    if len(ops) != len(layers):
        raise HwcostError(f"--stage-ops gives {len(ops)} value(s) for {len(layers)} stage(s)")
    if ops[0] != n_ops:
        raise HwcostError(f"the first stage searches every op: --stage-ops must start with {n_ops}, got {ops[0]}")
    if any(b > a for a, b in zip(ops, ops[1:])) or ops[-1] < 2:
        raise HwcostError(f"ops per edge {list(ops)} must not increase and the last stage needs at least 2 "
                          f"(the final derivation drops none and may drop a skip connect)")
    # default: P-DARTS's rates, the last one repeated past three stages
    drop = tuple(float(x) for x in (dropout if dropout else
                                    [PDARTS_DROPOUT[min(i, 2)] for i in range(len(layers))]))
    if len(drop) != len(layers):
        raise HwcostError(f"--skip-dropout gives {len(drop)} rate(s) for {len(layers)} stage(s)")
    if any(not 0.0 <= p < 1.0 for p in drop):
        raise HwcostError(f"skip-connect dropout rates {list(drop)} must lie in [0, 1)")
    return [Stage(i, n, k, p) for i, (n, k, p) in enumerate(zip(layers, ops, drop))]


def skip_dropout_rate(rate: float, epoch: int, epochs: int, warmup: int, scale: float = PDARTS_SCALE) -> float:
    """P-DARTS's schedule within a stage (its train_search.py).

    Weights-only epochs: ``rate * (E - e - 1) / E`` (linear); once alpha trains:
    ``rate * exp(-scale * (e - warmup))``.
    """
    if epoch < warmup:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-scale * (epoch - warmup))


def keep_strongest(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask [.., edges, ops]: the ``k`` ops of each edge with the largest softmax(logits).

    ``logits`` carries the ops dropped earlier at -inf (never kept again). On a
    tie the op listed first wins. An edge with fewer than ``k`` live ops keeps them all.
    """
    p = F.softmax(logits.detach().to(torch.float64), dim=-1)
    alive = torch.isfinite(logits)
    n = p.shape[-1]
    # stable descending sort: ties keep the lower index first
    order = torch.sort(torch.where(alive, p, torch.full_like(p, -1.0)), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n).expand_as(order))
    return alive & (rank < k)


def subsets_of(mask: torch.Tensor) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """A mask [types, edges, ops] as SupernetConfig.op_subsets."""
    return tuple(tuple(tuple(int(i) for i in torch.nonzero(row).flatten()) for row in per_type) for per_type in mask)


def mask_of(subsets, n_ops: int) -> torch.Tensor:
    mask = torch.zeros(len(subsets), len(subsets[0]), n_ops, dtype=torch.bool)
    for k, per_type in enumerate(subsets):
        for e, idx in enumerate(per_type):
            mask[k, e, list(idx)] = True
    return mask


def cap_skips(logits: torch.Tensor, ops: Sequence[str], max_skips: int = PDARTS_MAX_SKIPS, steps: int = 4,
              betas: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], bool]:
    """At most ``max_skips`` skip connects in the derived normal cell (P-DARTS).

    While the cell derived from ``logits`` (DARTS rule) has more, the chosen
    skip-connect edge with the smallest skip probability loses its skip (logit
    -inf: probability 0) and the cell is derived again -- that edge may then
    carry its next-best op or lose its place to another edge.  Returns the new
    logits [2, edges, ops], the edges whose skip was removed, and whether the
    cap holds (it cannot when every remaining candidate is a node's only way to
    keep two edges with a non-``none`` op).
    """
    ops = tuple(ops)
    if "skip_connect" not in ops:
        return logits, [], True
    sk = ops.index("skip_connect")
    edges = darts_edges(steps)
    logits = logits.detach().clone()
    removed: list[int] = []
    for _ in range(len(edges) + 1):
        p = F.softmax(logits, dim=-1)
        g = derive_darts(p[0], p[1], ops, betas=betas, steps=steps)
        chosen = [edges.index((n // 2 + 2, src)) for n, (op, src) in enumerate(g.normal) if op == "skip_connect"]
        if len(chosen) <= max_skips:
            return logits, removed, True
        # A skip can go if its edge keeps another live non-none op, or if its node has other
        # edges to choose from (a row of -inf has no softmax; node 2's two edges always stay).
        others = [o for o, name in enumerate(ops) if name not in ("none", "skip_connect")]
        n_in = {j: sum(1 for to, _ in edges if to == j) for j, _ in edges}
        candidates = [e for e in chosen if int(torch.isfinite(logits[0, e]).sum()) > 1 and
                      (bool(torch.isfinite(logits[0, e, others]).any()) or n_in[edges[e][0]] > 2)]
        if not candidates:
            return logits, removed, False
        e = min(candidates, key=lambda e: (float(p[0, e, sk]), e))
        logits[0, e, sk] = float("-inf")
        removed.append(e)
    return logits, removed, False
