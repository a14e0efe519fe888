"""An architecture-level table decomposed into per-(edge, op) latencies.

A table measured per architecture (NAS-Bench-201 on a Raspberry Pi, a phone,
an accelerator: HW-NAS-Bench) has no per-op rows. To drive a differentiable
search it is decomposed additively, by least squares over the table's
architectures::

    latency(arch) ~ b + sum_e theta[e, op_e]

The coefficients are the per-(edge, op) latencies the search's cost tensor
holds, ``b`` its fixed part; how well the sum explains the table (Spearman,
MAPE over the table) is reported with them.
"""
from __future__ import annotations

import numpy as np

from device_tables import DeviceTable
from spaces.nb201_arch import EDGES, Nb201Arch


def additive_arch_latency(table: DeviceTable, ops: tuple[str, ...]) -> tuple[np.ndarray, float, dict]:
    """Least-squares theta[edge, op] and b with latency ~ b + sum_e theta[e, op_e] over the table.
    Each edge is shifted so that its cheapest op costs 0 (the shift moves to b)."""
    rows, ys = [], []
    for key in table.keys():
        arch = Nb201Arch.parse(key.arch)
        x = np.zeros(len(EDGES) * len(ops))
        for e, op in enumerate(arch.ops):
            x[e * len(ops) + ops.index(op)] = 1.0
        rows.append(x)
        ys.append(table.get(key).median_ms)
    X, y = np.asarray(rows), np.asarray(ys)
    X1 = np.hstack([X, np.ones((len(X), 1))])
    coef, *_ = np.linalg.lstsq(X1, y, rcond=None)
    theta = coef[:-1].reshape(len(EDGES), len(ops))
    shift = theta.min(axis=1, keepdims=True)
    theta, b = theta - shift, float(coef[-1] + shift.sum())
    pred = X1 @ coef
    from scipy.stats import spearmanr
    fit = {"n_archs": len(y), "spearman": float(spearmanr(pred, y)[0]),
           "mape": float(np.mean(np.abs(pred - y) / y))}
    return theta, b, fit


__all__ = ["additive_arch_latency"]
