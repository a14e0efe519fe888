"""Derivation: the discrete network a search ends with, and its costs.

The DARTS rule (top-2 incoming edges without ``none``, beta-weighted for
PC-DARTS) and NB201's argmax per edge live with the derivation-aware expected
cost (:mod:`costmodels.expected_cost`), so search and cost agree on one rule.

With hard budgets, :func:`constrained_derive` returns the most probable
network (by the log-probabilities softmax(alpha) gives its choices) whose
costs lie in the band [floor * B, B] of every budget: exactly, by
enumeration, for NB201 (15,625 cells); greedily, by removing or upgrading one
chosen op at a time, for the DARTS spaces.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from costmodels.expected_cost import derive_darts, derive_nb201

NEG = -1e9


def derive(model, alphas: torch.Tensor, ops: tuple[str, ...]):
    """The genotype (darts/sharpdarts) or NB201 string the weights stand for."""
    w = F.softmax(alphas, dim=-1)
    if model.config.space == "nb201":
        return derive_nb201(w[0], ops)
    return derive_darts(w[0], w[1], ops, betas=model.betas, steps=model.config.steps)


def _violation(objective, costs: torch.Tensor) -> float:
    """How far the costs lie above their budgets (0 when every budget holds)."""
    v = 0.0
    for t in objective.terms:
        if t.kind == "hard":
            v += max(0.0, float(costs[objective.index(t.metric)]) / t.value - 1.0)
    return v


def _shortfall(objective, costs: torch.Tensor) -> float:
    """How far the costs lie under the floor of their budget band [floor B, B]."""
    v = 0.0
    for t in objective.terms:
        if t.kind == "hard":
            floor = objective.floor_of(t)
            if floor > 0:
                v += max(0.0, 1.0 - float(costs[objective.index(t.metric)]) / (floor * t.value))
    return v


@torch.no_grad()
def constrained_derive(model, expected, objective, ops: tuple[str, ...], max_moves: int = 200,
                       exact_cost=None, all_costs=None) -> dict:
    """The most probable network (sum of log softmax(alpha) of its choices) that meets the budgets.

    First the plain derivation. If a hard budget is broken, chosen ops are
    removed greedily (most budget regained per unit of log-probability lost),
    re-deriving after each removal; if a cost falls under ``floor * budget``,
    chosen ops are upgraded greedily (most cost added per log-probability lost)
    while every budget still holds. ``exact_cost(arch, costs)`` may replace the
    cost model's figures by better ones (an architecture-level table's own
    measurement). ``all_costs`` -- (archs, costs [n, metrics]) of every network
    of a small space -- makes the choice exact by enumeration.
    """
    alphas = model.alphas.detach().clone()
    logp = F.log_softmax(alphas, dim=-1)
    if all_costs is not None and objective.terms:
        return _enumerate(model, logp, objective, ops, *all_costs)

    def derived_cost(a):
        c = expected(a, model.betas, mode="derived")
        return exact_cost(derive(model, a, ops), c) if exact_cost is not None else c

    def best_move(candidates, measure, allowed=lambda c: True):
        """The candidate (trial alphas, log-probability it loses) that lowers ``measure`` most per unit
        of log-probability lost (and keeps ``allowed``); None when no candidate lowers it."""
        best, now = None, measure(costs)
        for trial, lost in candidates:
            c = derived_cost(trial)
            gain = now - measure(c)
            if gain > 0 and allowed(c):
                score = gain / (lost + 1e-9)
                if best is None or score > best[0]:
                    best = (score, trial, c)
        return best

    def removals():                 # drop a chosen op: its edge falls to the next most probable one
        for k, e, o in expected.chosen(alphas, model.betas):
            trial = alphas.clone()
            trial[k, e, o] = NEG
            yield trial, float(logp[k, e, o] - logp[k, e, int(torch.argmax(trial[k, e]))])

    non_none = [i for i, name in enumerate(ops) if name != "none"]

    def upgrades():                 # replace a chosen op by another (not none; not one a stage dropped)
        for k, e, o in expected.chosen(alphas, model.betas):
            for o2 in non_none:
                if o2 != o and torch.isfinite(alphas[k, e, o2]):
                    trial = alphas.clone()
                    trial[k, e, o2] = alphas[k, e].max() + 1.0
                    yield trial, float(logp[k, e, o] - logp[k, e, o2])

    violation = lambda c: _violation(objective, c)   # noqa: E731
    shortfall = lambda c: _shortfall(objective, c)   # noqa: E731
    costs = derived_cost(alphas)
    moves = 0
    while violation(costs) > 0 and moves < max_moves:                   # down: remove
        best = best_move(removals(), violation)
        if best is None:
            break
        _, alphas, costs = best
        moves += 1
    while any(objective.floor_of(t) > 0 for t in objective.terms if t.kind == "hard") \
            and violation(costs) == 0 and shortfall(costs) > 0 and moves < max_moves:   # up: upgrade
        best = best_move(upgrades(), shortfall, lambda c: violation(c) == 0)
        if best is None:
            break
        _, alphas, costs = best
        moves += 1
    return {"arch": derive(model, alphas, ops), "repaired": moves, "violation": _violation(objective, costs)}


def _enumerate(model, logp: torch.Tensor, objective, ops, archs: list, costs: torch.Tensor) -> dict:
    """Exact: the most probable architecture inside the budget band (else under the budgets)."""
    from spaces.nb201_arch import Nb201Arch
    idx = torch.tensor([[ops.index(op) for op in Nb201Arch.parse(a).ops] for a in archs])
    score = logp[0].gather(1, idx.T).sum(0)  # [n_archs]
    ok = torch.ones(len(archs), dtype=torch.bool)
    band = torch.ones(len(archs), dtype=torch.bool)
    for t in objective.terms:
        if t.kind == "hard":
            c = costs[:, objective.index(t.metric)]
            ok &= c <= t.value
            band &= (c <= t.value) & (c >= objective.floor_of(t) * t.value)
    plain = derive(model, model.alphas.detach(), ops)
    finite = torch.isfinite(score)  # architectures using an op a progressive stage dropped are out
    ok &= finite
    band &= finite
    pick = band if bool(band.any()) else ok
    if not bool(pick.any()):
        return {"arch": plain, "repaired": 0, "violation": float("inf")}
    best = int(torch.where(pick, score, torch.full_like(score, -math.inf)).argmax())
    moved = sum(a != b for a, b in zip(Nb201Arch.parse(archs[best]).ops, Nb201Arch.parse(str(plain)).ops))
    return {"arch": archs[best], "repaired": int(moved), "violation": 0.0}


def derived_costs(space: str, network: str, arch, cost_tensor, expected, model, table: str | None) -> dict:
    """Costs of the derived target network: analytical counts exactly, latency from the cost model
    (op-level table) or read from the table itself (architecture-level table)."""
    from costmodels.analytical import network_costs
    from spaces import Nb201NetConfig, build_network, network_config
    if space == "nb201":
        net = build_network(Nb201NetConfig(arch=str(arch)))
    else:
        net = build_network(network_config(network, arch, space))
    c = network_costs(net, net.input_shape())
    out = {"params": c.params, "macs": c.macs, "activation_bytes": c.activation_bytes, "model_bytes": c.model_bytes}
    from .costs import as_tables, derived_latency
    for metric, path in (as_tables(table) or {"latency_ms": None}).items():   # one or several devices
        if metric in cost_tensor.metrics:
            out.update(derived_latency(space, arch, cost_tensor, path, metric))
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}
