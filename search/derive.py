"""Derivation: the discrete network a search ends with, and its costs.

The DARTS rule (top-2 incoming edges without ``none``, beta-weighted for
PC-DARTS) and NB201's argmax per edge live with the derivation-aware expected
cost (:mod:`costmodels.expected_cost`), so search and cost agree on one rule.

If the derived network breaks a hard budget, :func:`constrained_derive`
repairs it greedily: it removes, one at a time, the currently chosen
(edge, op) whose removal buys the most budget per unit of log-probability
lost, re-deriving after each removal, until every budget holds.
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
    v = 0.0
    for t in objective.terms:
        if t.kind == "hard":
            v += max(0.0, float(costs[objective.index(t.metric)]) / t.value - 1.0)
    return v


@torch.no_grad()
def constrained_derive(model, expected, objective, ops: tuple[str, ...], max_moves: int = 200,
                       exact_cost=None) -> dict:
    """Derive; while a hard budget is broken, drop the cheapest-to-lose chosen op and re-derive.

    ``exact_cost(arch, costs) -> costs`` may replace the cost model's figures by
    better ones (an architecture-level table's own measurement of ``arch``).
    """
    alphas = model.alphas.detach().clone()
    logp = F.log_softmax(alphas, dim=-1)

    def derived_cost(a):
        c = expected(a, model.betas, mode="derived")
        return exact_cost(derive(model, a, ops), c) if exact_cost is not None else c

    costs = derived_cost(alphas)
    repaired = 0
    while _violation(objective, costs) > 0 and repaired < max_moves:
        best = None
        chosen = expected.chosen(alphas, model.betas)  # (cell type, edge, op) of the derived network
        for k, e, o in chosen:
            trial = alphas.clone()
            trial[k, e, o] = NEG
            c = derived_cost(trial)
            gain = _violation(objective, costs) - _violation(objective, c)
            if gain <= 0:
                continue
            nxt = int(torch.argmax(trial[k, e]))
            loss = float(logp[k, e, o] - logp[k, e, nxt]) + 1e-9
            score = gain / loss
            if best is None or score > best[0]:
                best = (score, trial, c)
        if best is None:
            break
        _, alphas, costs = best
        repaired += 1
    return {"arch": derive(model, alphas, ops), "repaired": repaired,
            "violation": _violation(objective, costs)}


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
    if "latency_ms" in cost_tensor.metrics:
        from .costs import derived_latency
        out.update(derived_latency(space, arch, cost_tensor, table))
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}
