"""What an isolated op measurement pays that a network pays once: the call overhead.

:func:`measure_call_overhead` times it on a backend; a table may record the
result as ``measurement.per_call_overhead_ms``, which
:class:`costmodels.predict.Overhead` reads (costmodels never measures).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .measure import Settings


def measure_call_overhead(backend, k: int = 64, settings: Settings | None = None) -> dict:
    """Split an isolated op's fixed cost into a per-call and a per-node part, on ``backend``.

    ``t(1)``: one ReLU on one number, measured as an op is; ``t(k)``: ``k`` ReLUs
    in one call (one ``nn.Sequential``; one ONNX graph of ``k`` nodes).
    ``per_node = (t(k) - t(1)) / (k - 1)`` is what every op pays in a network as
    in isolation (a node's dispatch, a module call); ``per_call = t(1) - per_node``
    is what only an isolated measurement pays, once (a session ``run()``).
    Returns milliseconds.
    """
    settings = settings or Settings()
    x = (torch.zeros(backend.batch, 1),)
    t1 = backend.measure(nn.ReLU(), x, settings).median * 1e3
    tk = backend.measure(nn.Sequential(*(nn.ReLU() for _ in range(k))), x, settings).median * 1e3
    per_node = max((tk - t1) / (k - 1), 0.0)
    return {"one_op_ms": t1, "chain_ms": tk, "chain_length": k, "per_node_ms": per_node,
            "per_call_ms": max(t1 - per_node, 0.0), "backend": backend.name}
