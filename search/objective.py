"""The objective's resource terms: soft penalties and hard budgets.

* soft: ``lambda * E[C_m]`` (RAPDARTS eq. 10; several terms add up);
* hard: ``E[C_m] <= B_m`` through a Lagrange multiplier updated by dual ascent
  (DCA-NAS eq. 4, Algorithm 1): the alpha loss carries ``mu * (E[C_m] / B_m - 1)``
  and after each alpha step ``mu <- max(0, mu + eta * (E[C_m] / B_m - 1))``.
  The constraint is normalised by the budget so one dual step size serves
  budgets in ms, parameters or MACs alike.

Budgets are given in user units: ``latency=4ms``, ``params=1.5M``,
``macs=300M``, ``memory=12MiB``. A budget below the cheapest network the space
can derive (:func:`attainable_range`, from the cost tensor before any training)
is refused with the attainable range (:func:`check_attainable`).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from spaces.errors import HwcostError

# user name -> (metric in the cost tensor, its unit, the units it accepts with their factors)
METRICS = {
    "latency": ("latency_ms", "ms", {"ms": 1.0, "s": 1e3, "us": 1e-3}),
    "params": ("params", "", {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}),
    "macs": ("macs", "", {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}),
    "flops": ("macs", "", {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}),  # FLOPs counted as MACs (state it)
    "memory": ("activation_bytes", "B", {"b": 1.0, "kb": 1e3, "mb": 1e6, "kib": 2**10, "mib": 2**20, "gb": 1e9, "gib": 2**30}),
}
_SPEC = re.compile(r"^\s*([a-z_]+)(?:@([A-Za-z0-9_.-]+))?\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*([a-z]*)\s*$",
                   re.I)
# Resources that differ per device: ``latency@NAME=...`` names the device table (``--table NAME=T``).
PER_DEVICE = ("latency",)
DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def device_metric(metric: str, device: str | None) -> str:
    """The cost tensor's name of a per-device metric: ``latency_ms@raspi4`` (plain ``latency_ms``
    for the one device of a bare ``--table``)."""
    return metric if device is None else f"{metric}@{device}"


def split_metric(metric: str) -> tuple[str, str | None]:
    """``latency_ms@raspi4`` -> (``latency_ms``, ``raspi4``); ``params`` -> (``params``, None)."""
    base, _, device = metric.partition("@")
    return base, device or None


@dataclass
class ResourceTerm:
    metric: str          # name in the cost tensor, e.g. "latency_ms"
    kind: str            # "hard" or "soft"
    value: float         # budget (hard) or lambda (soft), in the metric's base unit
    multiplier: float = 0.0  # Lagrange multiplier of a hard term
    floor: float | None = None   # this term's band floor (fraction of value); None: the objective's
    given: float | None = None   # the budget as the user gave it, when ``value`` aims lower (a confidence margin)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_term(text: str, kind: str) -> ResourceTerm:
    """``latency=4ms`` (budget) or ``params=1e-7`` (penalty) -> a term."""
    m = _SPEC.match(text)
    if not m:
        raise HwcostError(f"bad {'budget' if kind == 'hard' else 'penalty'} {text!r}: write NAME=VALUE[UNIT], "
                          f"e.g. latency=4ms, params=1.5M, macs=300M, memory=12MiB")
    name, device, number, unit = m.group(1).lower(), m.group(2), float(m.group(3)), m.group(4).lower()
    if name not in METRICS:
        raise HwcostError(f"unknown resource {name!r} in {text!r}; known: {', '.join(METRICS)}")
    if device is not None and name not in PER_DEVICE:
        raise HwcostError(f"{text!r}: {name} is the same on every device; write {name}=... without @{device}")
    metric, base_unit, units = METRICS[name]
    metric = device_metric(metric, device)
    if kind == "soft":
        if unit:
            raise HwcostError(f"penalty {text!r}: a lambda has no unit (it multiplies {metric} in {base_unit or 'counts'})")
        return ResourceTerm(metric, "soft", number)
    if unit not in units:
        need = "a unit (" + ", ".join(u for u in units if u) + ")" if "" not in units else \
            "no unit or one of " + ", ".join(u for u in units if u)
        raise HwcostError(f"budget {text!r}: unit {unit or '(none)'!r} is not valid for {name}; use {need}")
    value = number * units[unit]
    if not value > 0 or not math.isfinite(value):
        raise HwcostError(f"budget {text!r} must be a positive number")
    return ResourceTerm(metric, "hard", value)


class Objective:
    """Resource terms on top of the task loss; owns the Lagrange multipliers."""

    def __init__(self, terms: list[ResourceTerm], metrics: tuple[str, ...], dual_lr: float = 0.5,
                 floor: float = 0.0):
        if not 0.0 <= floor < 1.0:
            raise HwcostError(f"budget floor must be in [0, 1), got {floor}")
        self.terms, self.metrics, self.dual_lr, self.floor = terms, tuple(metrics), dual_lr, floor
        devices = sorted({d for d in (split_metric(m)[1] for m in self.metrics) if d})
        for t in terms:
            if t.metric in self.metrics:
                continue
            base, device = split_metric(t.metric)
            if devices and device is None and base == "latency_ms":
                raise HwcostError(f"several device tables are given ({', '.join(devices)}): name the device of "
                                  f"each latency term, e.g. latency@{devices[0]}=...")
            if device is not None:
                raise HwcostError(f"unknown device {device!r} in a {_USER_NAME.get(base, base)}@{device} term; "
                                  + (f"the devices are {', '.join(devices)} (--table NAME=TABLE)" if devices else
                                     "give its table as --table NAME=TABLE"))
            raise HwcostError(f"no cost for {t.metric!r}: the cost model provides {', '.join(self.metrics)}"
                              + (" (pass --table for latency)" if t.metric == "latency_ms" else ""))

    def index(self, metric: str) -> int:
        return self.metrics.index(metric)

    def floor_of(self, t: ResourceTerm) -> float:
        """The lower end of a hard term's band [floor B, B], as a fraction of its value."""
        return self.floor if t.floor is None else t.floor

    def penalty(self, costs: torch.Tensor) -> torch.Tensor:
        """The differentiable resource part of the alpha loss."""
        total = costs.new_zeros(())
        for t in self.terms:
            c = costs[self.index(t.metric)]
            total = total + (t.value * c if t.kind == "soft" else t.multiplier * (c / t.value - 1.0))
        return total

    @torch.no_grad()
    def dual_step(self, costs: torch.Tensor) -> None:
        """Dual ascent on each hard term's multiplier (DCA-NAS Algorithm 1, 'Update lambda').

        Over budget the multiplier grows. With a floor f > 0 the budget is
        treated as a band [f B, B]: under f B the multiplier falls (it may turn
        negative and pull the cost up, as DCA-NAS's unconstrained lambda does),
        inside the band it stays.
        """
        for t in self.terms:
            if t.kind != "hard":
                continue
            c = float(costs[self.index(t.metric)])
            floor = self.floor_of(t)
            if c > t.value:
                t.multiplier += self.dual_lr * (c / t.value - 1.0)
            elif c < floor * t.value:
                t.multiplier += self.dual_lr * (c / (floor * t.value) - 1.0)
            if floor == 0.0:
                t.multiplier = max(0.0, t.multiplier)

    def report(self, costs: torch.Tensor) -> dict:
        out = {m: float(costs[i]) for i, m in enumerate(self.metrics)}
        for t in self.terms:
            if t.kind == "hard":
                out[f"mu_{t.metric}"] = t.multiplier
        return out

    def satisfied(self, costs: dict) -> dict[str, bool]:
        return {t.metric: costs[t.metric] <= t.value for t in self.terms if t.kind == "hard"}


# --- what the space can reach -------------------------------------------------------------------

# The names budgets are given under (``latency=…``), per metric of the cost tensor.
_USER_NAME = {"latency_ms": "latency", "params": "params", "macs": "macs", "activation_bytes": "memory"}


def user_name(metric: str) -> str:
    """The name a budget on ``metric`` is written under: ``latency``, ``latency@raspi4``, ``params``."""
    base, device = split_metric(metric)
    name = _USER_NAME.get(base, base)
    return name if device is None else f"{name}@{device}"


def attainable_range(expected, all_costs=None) -> dict[str, tuple[float, float]]:
    """The lowest and highest cost, per metric, of any network derivation can produce.

    ``expected`` is the search's :class:`costmodels.expected_cost.ExpectedCost`: its cost tensor
    is the target network's, with the fixed part (stem, classifier, preprocessing) and whatever
    overhead handling the search applies, so the figures are the ones a budget is judged by.
    The derivation rule is its rule: darts-like spaces keep, per node, the 2 incoming edges
    (all of them if it has 2) each with a non-``none`` op; nb201 one op (``none`` included) per
    edge. Costs add up over the chosen (edge, op) pairs, so each metric's extreme is the sum of
    per-node extremes (each metric on its own: one network need not reach every minimum).
    ``all_costs`` -- ``(archs, costs [n, metrics])`` of every network of a small space in
    ``expected.metrics`` order, e.g. an architecture-level table's measurements -- answers exactly.
    A cost tensor with a ``merge`` tensor (an ONNX Runtime table: a parameter-free op repeated on one
    state runs once) does not add up: its minima come from :func:`_min_cell_with_merges`.
    """
    from costmodels.expected_cost import EDGES_KEPT
    if all_costs is not None:
        costs = all_costs[1]
        out = {}
        for i, m in enumerate(expected.metrics):
            col = costs[:, i][torch.isfinite(costs[:, i])]
            out[m] = (float(col.min()), float(col.max())) if len(col) else (math.inf, math.inf)
        return out
    c, fixed = expected.c, expected.fixed                   # [cell types, edges, ops, metrics], [metrics]
    merge = getattr(expected, "merge", None)
    if merge is not None and not expected.nb201:
        out = attainable_range(_without_merges(expected))    # the maxima (no repeats), and every metric unmerged
        allowed = [o for o, ok in enumerate(expected.non_none.tolist()) if ok]
        for i, m in enumerate(expected.metrics):
            if bool(torch.any(merge[..., i] != 0)):
                lo = float(fixed[i]) + sum(_min_cell_with_merges(c[k, ..., i], merge[k, ..., i], expected.edges,
                                                                 expected.groups, allowed)
                                           for k in range(c.shape[0]))
                out[m] = (lo, out[m][1])
        return out
    if expected.nb201:
        lo = fixed + c.min(dim=2).values.sum(dim=(0, 1))
        hi = fixed + c.max(dim=2).values.sum(dim=(0, 1))
    else:
        allowed = c[:, :, expected.non_none]                # a derived darts edge never holds none
        e_lo, e_hi = allowed.min(dim=2).values, allowed.max(dim=2).values   # [cell types, edges, metrics]
        lo, hi = fixed.clone(), fixed.clone()
        for idx in expected.groups:                          # each node's incoming edges
            keep = min(EDGES_KEPT, len(idx))
            lo = lo + e_lo[:, idx].sort(dim=1).values[:, :keep].sum(dim=(0, 1))
            hi = hi + e_hi[:, idx].sort(dim=1, descending=True).values[:, :keep].sum(dim=(0, 1))
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(expected.metrics)}


def _without_merges(expected):
    """What :func:`attainable_range` reads of ``expected``, without its ``merge`` (costs that add up)."""
    from types import SimpleNamespace
    return SimpleNamespace(c=expected.c, fixed=expected.fixed, metrics=expected.metrics, nb201=expected.nb201,
                           non_none=expected.non_none, groups=expected.groups, edges=expected.edges, merge=None)


def _min_cell_with_merges(c, merge, edges, groups, allowed) -> float:
    """The cheapest cell derivation can produce when a parameter-free op repeated on one state runs once
    (``merge`` > 0: a repeat costs ``c - merge``; ``costmodels.cost_tensor.merge_saving``). Exact, by
    dynamic programming over the nodes in order, keyed by the (state, op) pairs used so far; per edge only
    the cheapest op that never merges can matter beside the ops that do."""
    import itertools
    from costmodels.expected_cost import EDGES_KEPT
    c, merge = c.tolist(), merge.tolist()
    free = {e: [o for o in allowed if merge[e][o] != 0] for e in range(len(edges))}
    fixed_ops = {e: [o for o in allowed if merge[e][o] == 0] for e in range(len(edges))}
    cand = {e: free[e] + ([min(fixed_ops[e], key=lambda o: c[e][o])] if fixed_ops[e] else []) for e in free}

    def cost(e, o, used):
        src = edges[e][1]
        return c[e][o] - merge[e][o] if (src, o) in used else c[e][o]

    frontier = {frozenset(): 0.0}
    for n, idx in enumerate(groups):
        keep = min(EDGES_KEPT, len(idx))
        if n == len(groups) - 1:       # the last node: each edge on its own, then its cheapest edges
            return min(total + sum(sorted(min(cost(e, o, used) for o in cand[e]) for e in idx)[:keep])
                       for used, total in frontier.items())
        nxt: dict = {}
        for used, total in frontier.items():
            for pick in itertools.combinations(idx, keep):
                for ops in itertools.product(*(cand[e] for e in pick)):
                    add = sum(cost(e, o, used) for e, o in zip(pick, ops))
                    key = used | {(edges[e][1], o) for e, o in zip(pick, ops) if merge[e][o] != 0}
                    if total + add < nxt.get(key, float("inf")):
                        nxt[key] = total + add
        frontier = nxt
    return min(frontier.values())


def _shown(metric: str, value: float, up: bool) -> str:
    """``value`` as a budget is written (``latency=…ms``, ``params=…M``), to 4 significant digits,
    rounded up (a minimum: the figure shown is attainable) or down (a maximum)."""
    unit, scale = {"latency_ms": ("ms", 1.0), "activation_bytes": ("MiB", 2**20)}.get(split_metric(metric)[0],
                                                                                       ("", 1.0))
    if unit == "":
        unit, scale = next(((u, s) for u, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(value) >= s), ("", 1.0))
    x = value / scale
    if x > 0 and math.isfinite(x):
        q = 10.0 ** (math.floor(math.log10(x)) - 3)
        x = (math.ceil(x / q * (1 + 1e-12)) if up else math.floor(x / q * (1 + 1e-12))) * q
    return f"{x:.4g}{unit}"


def check_attainable(terms: list[ResourceTerm], ranges: dict[str, tuple[float, float]], what: str = "") -> None:
    """A hard budget below the cheapest network the space can derive is one error, before any
    training, giving the attainable range of every budgeted metric. (A budget inside the range
    but missed by a search is reported as not met; one above it always holds.)"""
    hard = [t for t in terms if t.kind == "hard" and t.metric in ranges]
    low = [t for t in hard if t.value < ranges[t.metric][0] * (1 - 1e-9)]
    if not low:
        return
    name = lambda t: user_name(t.metric)  # noqa: E731
    said = ", ".join(f"{name(t)}={_shown(t.metric, t.value, up=False)}" for t in low)
    span = "; ".join(f"{name(t)} {_shown(t.metric, ranges[t.metric][0], up=True)} … "
                     f"{_shown(t.metric, ranges[t.metric][1], up=False)}" for t in hard)
    raise HwcostError(f"budget {said} {'is' if len(low) == 1 else 'are'} below the cheapest network "
                      f"{what or 'the space'} can derive; attainable: {span} (each on its own); "
                      f"give a budget inside that range")
