"""The pure logic of sweeps (search/sweep.py): budget strings, RAPDARTS's lambda narrowing,
the Pareto front, and DCA-NAS's look-up graph."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from spaces.errors import HwcostError

from .objective import METRICS, parse_term


# ---------------------------------------------------------------------------
# Budget strings


def split_spec(text: str) -> tuple[str, str]:
    """``"params=1.5M"`` -> ``("params", "1.5M")``, ``"latency@pi=9ms"`` -> ``("latency@pi", "9ms")``
    (the resource checked against the known ones; a device name is checked by the search)."""
    name, sep, value = text.partition("=")
    resource, at, device = name.strip().partition("@")
    name = resource.strip().lower() + (f"@{device.strip()}" if at else "")
    if not sep or not value.strip():
        raise HwcostError(f"bad budget {text!r}: write NAME=VALUE[UNIT], e.g. params=1.5M, latency=4ms")
    if resource.strip().lower() not in METRICS:
        raise HwcostError(f"unknown resource {resource.strip()!r} in {text!r}; known: {', '.join(METRICS)}")
    return name, value.strip()


def budget_text(name: str, value: float) -> str:
    """A budget in base units written so that :func:`parse_term` reads it back exactly."""
    return f"{name}={value!r}{METRICS[name.partition('@')[0]][1]}"


def spread(range_text: str, count: int, log: bool = False) -> list[str]:
    """``"params=1M:4M"``, 4 -> ``count`` budgets spread evenly (or log-evenly) over the range."""
    name, value = split_spec(range_text)
    lo_text, sep, hi_text = value.partition(":")
    if not sep:
        raise HwcostError(f"bad range {range_text!r}: write NAME=LOW:HIGH, e.g. params=1M:4M")
    lo = parse_term(f"{name}={lo_text}", "hard").value
    hi = parse_term(f"{name}={hi_text}", "hard").value
    if not lo < hi:
        raise HwcostError(f"range {range_text!r}: LOW must be below HIGH")
    if count < 2:
        raise HwcostError(f"--count must be at least 2 to spread over a range, got {count}")
    values = np.geomspace(lo, hi, count) if log else np.linspace(lo, hi, count)
    return [budget_text(name, float(v)) for v in values]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "", text.replace("+", ""))


# ---------------------------------------------------------------------------
# Pure logic: lambda narrowing, Pareto front, look-up graph


def narrow_lambda_range(points: Iterable[tuple[float, float]], budget: float,
                        lo: float, hi: float) -> tuple[float, float]:
    """RAPDARTS's coarse-to-fine step: the next lambda range from (lambda, derived cost) points.

    The cost falls as lambda grows, so the points split at one lambda into
    "over the budget" (left) and "under" (right). The split is the one that
    misclassifies fewest points (searches are noisy, the trend need not be
    monotone); the new range is the bracket between the two points beside it.
    If every point is over the budget the range moves up by its own width (in
    decades), if every point is under it moves down, starting at the last point.
    """
    pts = sorted((float(l), float(c)) for l, c in points if l > 0 and c is not None and math.isfinite(c))
    if not pts:
        return lo, hi
    over = [c > budget for _, c in pts]
    # errors(k): points left of the split that are under + points right of it that are over
    errors = [sum(not o for o in over[:k]) + sum(over[k:]) for k in range(len(pts) + 1)]
    k = int(np.argmin(errors))
    width = math.log10(hi / lo) if hi > lo > 0 else 1.0
    if k == 0:                       # everything under: cheaper than needed, look at smaller lambda
        new = (pts[0][0] / 10 ** width, pts[0][0])
    elif k == len(pts):              # everything over: look at larger lambda
        new = (pts[-1][0], pts[-1][0] * 10 ** width)
    else:
        new = (pts[k - 1][0], pts[k][0])
    if not new[0] < new[1]:          # two searches at one lambda: keep a sliver around it
        new = (new[0] / 10 ** 0.05, new[1] * 10 ** 0.05)
    return new


def pareto_front(costs: list, accuracies: list[float]) -> list[int]:
    """Indices of the points no other point beats (every cost <=, accuracy >=, one of them strictly).

    ``costs``: one number per point, or one tuple per point (several resources, e.g. the latency on
    two devices: the front of a two-device budget sweep)."""
    if costs and isinstance(costs[0], (tuple, list)):
        pts = [(tuple(map(float, c)), float(a)) for c, a in zip(costs, accuracies)]

        def beats(p, q) -> bool:
            no_worse = all(x <= y for x, y in zip(p[0], q[0])) and p[1] >= q[1]
            return no_worse and (p[0] != q[0] or p[1] > q[1])
        return [i for i, q in enumerate(pts) if not any(beats(p, q) for j, p in enumerate(pts) if j != i)]
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return sorted(front)


def _isotonic(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit (pool adjacent violators); equal x are pooled first."""
    blocks: list[list[float]] = []           # [x, mean y, weight]
    for x, y in sorted(zip(xs, ys)):
        if blocks and blocks[-1][0] == x:
            b = blocks[-1]
            b[1], b[2] = (b[1] * b[2] + y) / (b[2] + 1), b[2] + 1
        else:
            blocks.append([x, y, 1.0])
    pooled: list[list] = []                  # [[xs], mean y, weight]
    for x, y, w in blocks:
        pooled.append([[x], y, w])
        while len(pooled) > 1 and pooled[-2][1] > pooled[-1][1]:
            b = pooled.pop()
            a = pooled[-1]
            a[0] += b[0]
            a[1], a[2] = (a[1] * a[2] + b[1] * b[2]) / (a[2] + b[2]), a[2] + b[2]
    fx = [x for p in pooled for x in p[0]]
    fy = [p[1] for p in pooled for _ in p[0]]
    return fx, fy


@dataclass
class LookupGraph:
    """DCA-NAS's look-up graph: search constraint K_d' -> evaluation-size cost K_d of the derived network.

    The fit is monotone (isotonic, then piecewise linear), so a larger search
    constraint never predicts a smaller network; it passes through every point
    of monotone data. It only answers inside what was measured: a constraint
    outside the searched ones, a target outside the derived costs, or a curve
    that does not rise (every search derived the same network, or the cost
    fell as the constraint grew) is refused with a :class:`HwcostError` that
    says why -- never turned into a number.
    """

    metric: str
    points: list[tuple[float, float]]        # (constraint, eval cost) as measured
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def __post_init__(self):
        pts = [(float(x), float(y)) for x, y in self.points]
        if not pts:
            raise HwcostError(f"look-up graph for {self.metric}: no finished search to build it from")
        if any(not (x > 0 and y > 0) for x, y in pts):
            raise HwcostError(f"look-up graph for {self.metric}: constraints and costs must be positive")
        self.points = sorted(pts)
        self.xs, self.ys = _isotonic([x for x, _ in pts], [y for _, y in pts])

    def check_invertible(self) -> None:
        """Refuse a curve that ties no constraint to a cost: one constraint, flat, or falling."""
        m, xs, ys = self.metric, self.xs, self.ys
        if len(set(xs)) < 2:
            raise HwcostError(f"the look-up graph needs finished searches at 2 different search constraints; "
                              f"it has {len(self.points)} at {xs[0]:.6g}")
        if ys[-1] > ys[0]:
            return
        raw = [y for _, y in self.points]
        if len(set(raw)) == 1:
            raise HwcostError(f"the look-up graph is flat: every search ({xs[0]:.6g} .. {xs[-1]:.6g}) derived "
                              f"{m} {raw[0]:.6g}, so no search constraint is tied to a target; search a wider "
                              f"range of constraints (or longer)")
        (x0, y0), (x1, y1) = self.points[0], self.points[-1]
        raise HwcostError(f"the look-up graph does not increase: constraint {x0:.6g} derived {m} {y0:.6g}, "
                          f"{x1:.6g} derived {y1:.6g}; no search constraint can be read off it (searches this "
                          f"short are noisy: search longer or over a wider range)")

    def _outside(self, what: str, value: float, lo: float, hi: float, hint: str) -> HwcostError:
        return HwcostError(f"{what} {self.metric} {value:.6g} is outside the measured range {lo:.6g} .. {hi:.6g} "
                           f"of the look-up graph; {hint}")

    def predict(self, constraint: float) -> float:
        """The evaluation-size cost a search at ``constraint`` should derive (inside the searched range)."""
        xs, ys = self.xs, self.ys
        if not xs[0] <= constraint <= xs[-1]:
            raise self._outside("search constraint", constraint, xs[0], xs[-1],
                                "search at it to know what it derives")
        return float(np.interp(constraint, xs, ys))

    def constraint_for(self, target: float) -> float:
        """The largest search constraint whose predicted cost is ``target`` (inside the measured range)."""
        self.check_invertible()
        xs, ys = self.xs, self.ys
        if not ys[0] <= target <= ys[-1]:
            side = (f"add search constraints above {xs[-1]:.6g}" if target > ys[-1]
                    else f"add search constraints below {xs[0]:.6g}")
            raise self._outside("target", target, ys[0], ys[-1], f"{side} to reach it")
        for i in range(len(xs) - 1, 0, -1):  # from the right: on a flat stretch take its right end
            if ys[i - 1] <= target <= ys[i]:
                if ys[i] == ys[i - 1]:
                    return xs[i]
                return xs[i - 1] + (target - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1])
        return xs[0]                         # unreachable: the target is inside [ys[0], ys[-1]]

    def pick(self, target: float) -> dict:
        """A pick for ``target``: its constraint and prediction, or ``refused`` with the reason (both None)."""
        try:
            k = self.constraint_for(target)
        except HwcostError as e:
            return {"target": target, "constraint": None, "predicted": None, "refused": str(e)}
        return {"target": target, "constraint": k, "predicted": self.predict(k)}

    def to_dict(self) -> dict:
        return {"metric": self.metric, "points": [list(p) for p in self.points],
                "fit": [[x, y] for x, y in zip(self.xs, self.ys)]}

    @classmethod
    def from_dict(cls, d: dict) -> "LookupGraph":
        return cls(d["metric"], [tuple(p) for p in d["points"]])
