"""The ``calibration`` field of a device table: its in-context latency model, as data.

A table's entries time each op *alone*; a network runs them in context (fused,
re-laid-out, with warm or cold caches, one call instead of many).  ``hwcost
calibrate`` measures whole networks on the table's device and fits how the sum
of isolated ops maps to a network's time (``costmodels.incontext``).  What it
fits is stored here, with the networks it was fitted on and their residuals,
so that any later prediction can be explained and re-fitted without running
anything.  This module only validates the structure (standard library only:
a table is read on the board that measured it).

Layout::

    "calibration": {
      "model": "hwcost.in_context/1",
      "created": ISO date, "host": {"cpu": ...}, "backend": "ort-cpu",
      "per_call_ms": 0.0029,            # isolation overhead removed per op call (known, not fitted)
      "factors": {"sep_conv_3x3": 0.96, ...},  # in-context factor per op group, >= 0
      "default_factor": 0.97,           # for a group no calibration network had
      "per_op_ms": 0.0004,              # fitted per-op-call term (either sign)
      "lambda": 0.1,                    # shrinkage of the factors towards their mean
      "structure": "groups",            # optional: sum (nothing fitted) | scale (one factor) | groups
      "networks": [{"name", "spec", "measured_ms", "p10_ms", "p90_ms", "features": {group: ms},
                    "n_ops", "fit_ms", "loo_ms", "role", "reference_ms",
                    "phase",                       # optional: the host slowdown measured_ms was divided by
                    "op_types": {op type: ms}}],   # optional: what a prediction's unseen types are read from
      "residuals": {"n", "mean", "std", "loo": [...]}   # leave-one-out measured/predicted - 1
    }
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .errors import TableError

MODEL_TAG = "hwcost.in_context/1"
FIELDS = ("model", "created", "host", "backend", "per_call_ms", "factors", "default_factor", "per_op_ms",
          "lambda", "networks", "residuals")
OPTIONAL_FIELDS = ("structure",)
STRUCTURES = ("sum", "scale", "groups")
NETWORK_FIELDS = ("name", "spec", "measured_ms", "features", "n_ops")
ROLES = ("calibration", "verify")


def _num(where: str, v: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TableError(f"{where}: must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise TableError(f"{where}: must be > 0, got {v!r}")
    if nonneg and v < 0:
        raise TableError(f"{where}: must be >= 0, got {v!r}")
    return float(v)


def _groups(where: str, d: Any) -> None:
    if not isinstance(d, dict) or not all(isinstance(k, str) and k for k in d):
        raise TableError(f"{where}: must be an object of op group -> number")
    for k, v in d.items():
        _num(f"{where}.{k}", v, nonneg=True)


def check_calibration(c: Any) -> None:
    """Validate a table's ``calibration`` object; each problem is one TableError naming the field."""
    w = "calibration"
    if not isinstance(c, dict):
        raise TableError(f"{w}: must be an object, got {type(c).__name__}")
    missing = [f for f in FIELDS if f not in c]
    unknown = sorted(set(c) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if missing:
        raise TableError(f"{w}: missing field {', '.join(missing)}")
    if unknown:
        raise TableError(f"{w}: unknown field {', '.join(unknown)}")
    if c.get("structure", "groups") not in STRUCTURES:
        raise TableError(f"{w}.structure: one of {', '.join(STRUCTURES)}, got {c['structure']!r}")
    if c["model"] != MODEL_TAG:
        raise TableError(f"{w}.model: this hwcost reads {MODEL_TAG!r}, got {c['model']!r}")
    try:
        datetime.fromisoformat(str(c["created"]).replace("Z", "+00:00"))
    except ValueError:
        raise TableError(f"{w}.created: must be an ISO date, got {c['created']!r}") from None
    if not isinstance(c["host"], dict):
        raise TableError(f"{w}.host: must be an object")
    if not isinstance(c["backend"], str) or not c["backend"]:
        raise TableError(f"{w}.backend: must be a backend name")
    _num(f"{w}.per_call_ms", c["per_call_ms"], nonneg=True)
    _groups(f"{w}.factors", c["factors"])
    if not c["factors"]:
        raise TableError(f"{w}.factors: must name at least one op group")
    _num(f"{w}.default_factor", c["default_factor"], nonneg=True)
    _num(f"{w}.per_op_ms", c["per_op_ms"])
    _num(f"{w}.lambda", c["lambda"], nonneg=True)
    nets = c["networks"]
    if not isinstance(nets, list) or len(nets) < 2:
        raise TableError(f"{w}.networks: must list the (at least 2) networks it was fitted on")
    for i, n in enumerate(nets):
        where = f"{w}.networks[{i}]"
        if not isinstance(n, dict):
            raise TableError(f"{where}: must be an object")
        miss = [f for f in NETWORK_FIELDS if f not in n]
        if miss:
            raise TableError(f"{where}: missing field {', '.join(miss)}")
        if not isinstance(n["name"], str) or not isinstance(n["spec"], dict):
            raise TableError(f"{where}: name must be a string and spec an object")
        _num(f"{where}.measured_ms", n["measured_ms"], positive=True)
        _groups(f"{where}.features", n["features"])
        if isinstance(n["n_ops"], bool) or not isinstance(n["n_ops"], int) or n["n_ops"] < 1:
            raise TableError(f"{where}.n_ops: must be a positive integer, got {n['n_ops']!r}")
        for f in ("p10_ms", "p90_ms", "fit_ms", "loo_ms", "reference_ms", "phase"):
            if n.get(f) is not None:
                _num(f"{where}.{f}", n[f], positive=True)
        if n.get("op_types") is not None:
            _groups(f"{where}.op_types", n["op_types"])
        if n.get("role", "calibration") not in ROLES:
            raise TableError(f"{where}.role: must be one of {', '.join(ROLES)}, got {n.get('role')!r}")
    r = c["residuals"]
    if not isinstance(r, dict) or not {"n", "mean", "std", "loo"} <= set(r):
        raise TableError(f"{w}.residuals: must be an object with n, mean, std and loo")
    if isinstance(r["n"], bool) or not isinstance(r["n"], int) or r["n"] != len(nets):
        raise TableError(f"{w}.residuals.n: must equal the number of networks ({len(nets)}), got {r['n']!r}")
    _num(f"{w}.residuals.mean", r["mean"])
    _num(f"{w}.residuals.std", r["std"], nonneg=True)
    if not isinstance(r["loo"], list) or len(r["loo"]) != len(nets):
        raise TableError(f"{w}.residuals.loo: must hold one residual per network")
    for i, v in enumerate(r["loo"]):
        _num(f"{w}.residuals.loo[{i}]", v)
