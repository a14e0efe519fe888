"""A search space priced by the nodes ONNX Runtime runs: the cost tensor of a space node table.

``hwcost profile --space S --keys nodes --random N`` exports N random derived
networks of the space, keys each by the nodes of the graph ONNX Runtime
optimises and runs (fused convolutions, NCHWc convolutions and their reorders,
ReLUs shared between edges, sums fused into a convolution), times every
distinct node alone, and records which nodes each network has
(:func:`record_networks`, in the table's provenance).  Such a table prices a
*whole* network exactly as ORT runs it -- on the networks a budget search
derived, better than a space's op keys did (``benchmarks/searched_keys.py``).

The search needs more: a cost for every candidate op of every edge, so that
the expected cost is differentiable.  What an op costs inside a network is
not what it costs alone, and no node belongs to one op only (ORT fuses a
convolution with the ReLU of the next op, shares one ReLU between the edges
that read a state, fuses a node's sum into the last convolution of one of its
edges).  So the per-op costs are *fitted*, not attributed: each recorded
network's latency as the table predicts it (its nodes through the table's
in-context model when calibrated) is regressed on how many times each op
occurs in each cell type (:func:`fit_op_costs`, least squares with an
intercept = the fixed part; bounded: no op costs less than nothing).  On host C, 250 random DARTS networks: held-out
error of this additive fit MAPE 2.0% (sd 2.6%) from 40 networks on
(cell type, op) -- per (cell type, source, op) or per edge it needed more
networks for no gain.  Where that is not exact enough, the derived network
itself is priced by its nodes and the derivation corrected around it
(``hwcost.verify.price_by_nodes``: exporting a network is a profiler's job,
so that loop is a pipeline).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from device_tables import DeviceTable, OpKey
from device_tables.errors import HwcostError

RECORD = "keyed_networks"      # provenance field: {"keys": [key, ...], "networks": [{"arch": ..., "nodes": [[i, n]]}]}
RIDGE = 1e-3                   # shrinks the per-op costs (ms^2 of squared error per ms^2 of cost)
FOLDS = 5


def is_space_node_table(table: DeviceTable) -> bool:
    """A node table keyed from random networks of a search space (``profile --space S --keys nodes``)."""
    return table.spaces == ["onnx"] and bool(table.provenance.get("space"))


def record_networks(archs: Sequence, counts: Sequence[Counter]) -> dict:
    """The provenance record of the networks a space node table was keyed from: each network's
    architecture (an NB201 string or a genotype dict) and its node keys with their counts."""
    keys = sorted({k.to_str() for c in counts for k in c})
    index = {k: i for i, k in enumerate(keys)}
    return {"keys": keys, "networks": [{"arch": a, "nodes": sorted([index[k.to_str()], int(n)] for k, n in c.items())}
                                       for a, c in zip(archs, counts)]}


def recorded_networks(table: DeviceTable) -> list[tuple[object, Counter]]:
    """(architecture, Counter of node keys) of every network the table records; one clear error for a
    malformed record."""
    rec = table.provenance.get(RECORD)
    if not isinstance(rec, dict) or not isinstance(rec.get("keys"), list) or not isinstance(rec.get("networks"), list):
        raise HwcostError(f"table {table.source} records no keyed networks of its space (provenance.{RECORD}); "
                          f"profile it again with hwcost profile --space {table.provenance.get('space')} --keys nodes")
    try:
        keys = [OpKey.from_str(k) for k in rec["keys"]]
        return [(n["arch"], Counter({keys[int(i)]: int(c) for i, c in n["nodes"]})) for n in rec["networks"]]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise HwcostError(f"table {table.source}: malformed provenance.{RECORD} ({type(e).__name__}: {e})") from None


def op_counts(space: str, arch, cell_types: Sequence[str], ops: Sequence[str]) -> np.ndarray:
    """[cell type, op] occurrences of each candidate op in a derived network's cells (per cell of the type)."""
    out = np.zeros((len(cell_types), len(ops)))
    if space == "nb201":
        from spaces.nb201_arch import Nb201Arch
        for op in Nb201Arch.parse(str(arch)).ops:
            out[0, ops.index(op)] += 1
        return out
    from spaces.genotypes import genotype_from_dict
    g = genotype_from_dict(arch) if isinstance(arch, dict) else arch
    for k, cell in enumerate((g.normal, g.reduce)):
        for op, _ in cell:
            out[k, ops.index(op)] += 1
    return out


def network_prediction(table: DeviceTable, counts: Counter, incontext="table"):
    """The table's prediction of one network from its node counts (in-context model if calibrated)."""
    from .costmodel import CostModel
    from .incontext import model_of
    from .predict import Overhead, predict_counts
    ic = model_of(table) if incontext == "table" else incontext
    return predict_counts(counts, CostModel(table), Overhead.from_table(table), Counter(), ic)


def fit_op_costs(table: DeviceTable, space: str, cell_types: Sequence[str], ops: Sequence[str]):
    """Per-occurrence cost of each candidate op in each cell type and the fixed part, fitted on the
    networks the table records: ``(theta [cell type, op] ms, fixed ms, report)``. ``none`` costs 0 in
    darts-like spaces (absent from a derived network); the report holds the fit's K-fold held-out
    relative error on these networks."""
    rows = recorded_networks(table)
    if space != table.provenance.get("space"):
        raise HwcostError(f"table {table.source} keys the nodes of {table.provenance.get('space')} networks, "
                          f"not {space}")
    X, y = [], []
    for arch, counts in rows:
        X.append(op_counts(space, arch, cell_types, ops).ravel())
        y.append(network_prediction(table, counts).latency_ms)
    X, y = np.array(X), np.array(y)
    free = np.ones(X.shape[1], bool)
    if space != "nb201" and "none" in ops:            # absent from a derived darts network: costs nothing
        free &= np.tile(np.array([o != "none" for o in ops]), len(cell_types))
    used = free & (X.sum(0) > 0)
    if len(y) < used.sum() + 2:
        raise HwcostError(f"table {table.source} records {len(y)} networks; fitting {int(used.sum())} op costs "
                          f"needs at least {int(used.sum()) + 2} (profile with a larger --random)")

    def solve(idx):
        # Every derived cell has the same number of edges, so the op counts of a cell type sum to a
        # constant: the costs are fixed only up to a common shift that the fixed part absorbs. Bounded
        # least squares (costs >= 0, a slight shrinkage) picks the shift that makes the cheapest op of a
        # cell type cost nothing -- an identity edge, physically -- and the fixed part hold the rest.
        from scipy.optimize import lsq_linear
        k = int(used.sum())
        A = np.hstack([X[idx][:, used], np.ones((len(idx), 1))])
        P = np.sqrt(RIDGE) * np.hstack([np.eye(k), np.zeros((k, 1))])
        res = lsq_linear(np.vstack([A, P]), np.concatenate([y[idx], np.zeros(k)]),
                         bounds=(np.r_[np.zeros(k), -np.inf], np.full(k + 1, np.inf)))
        return res.x

    coef = solve(np.arange(len(y)))
    theta = np.zeros(X.shape[1])
    theta[used] = coef[:-1]
    errors = []
    order = np.random.default_rng(0).permutation(len(y))
    for f in range(FOLDS):
        test = order[f::FOLDS]
        c = solve(np.setdiff1d(order, test))
        pred = X[test][:, used] @ c[:-1] + c[-1]
        errors += list(pred / y[test] - 1)
    e = np.array(errors)
    if not (np.all(np.isfinite(theta)) and math.isfinite(coef[-1])):
        raise HwcostError(f"table {table.source}: the op-cost fit is not finite; profile more random networks")
    report = {"networks": len(y), "features": "occurrences of each op per cell type", "op_costs": int(used.sum()),
              "heldout_mape": float(np.mean(np.abs(e))), "heldout_sd": float(np.std(e)),
              "heldout_max": float(np.max(np.abs(e)))}
    return theta.reshape(len(cell_types), len(ops)), float(coef[-1]), report
