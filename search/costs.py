"""What the search optimises: the expected cost of the *target* network.

Builds the constant tensor c[cell type, edge, op, metric] for the network that
will be deployed (not the search proxy) from the analytical counter and, for
latency, from a device table:

* an op-level table answers each (op, shape) key through the cost model
  (table, else surrogate, else an error naming the key);
* an architecture-level table (NB201 on a Raspberry Pi, a phone ...) has no
  per-op rows, so its latencies are decomposed additively
  (:mod:`costmodels.arch_additive`): per-(edge, op) latencies and a fixed part.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import torch

from costmodels.arch_additive import additive_arch_latency
from costmodels.cost_tensor import CostTensor, build_cost_tensor
from device_tables import DeviceTable, bundled_table_path, load_table
from spaces import BUILTIN_GENOTYPES, Nb201NetConfig, network_config
from spaces.errors import HwcostError

ANALYTICAL = ("params", "macs", "activation_bytes")


def _table(name_or_path: str) -> DeviceTable:
    """A table loaded once per run (the NB201 tables hold 15,625 rows), again when its file changed
    (the verify loop adds to a table's calibration between derivations)."""
    path = bundled_table_path(name_or_path)
    return _load_once(str(path), _stamp(str(path)))


@functools.lru_cache(maxsize=4)
def _load_once(path: str, stamp) -> DeviceTable:
    return load_table(path)


def confidence_margin(table_path: str | None, confidence: float | None) -> dict | None:
    """How far a latency budget must aim under itself to hold at ``confidence`` on the device: the
    calibrated table's one-sided bound ``u`` (P(measured <= u * predicted) = confidence). None for
    a table without calibration (the budget is then on the uncalibrated sum of ops); asking for a
    confidence there is an error."""
    from costmodels.incontext import DEFAULT_CONFIDENCE, check_confidence, model_of
    if confidence is not None:
        check_confidence(confidence)
    model = model_of(_table(table_path)) if table_path is not None else None
    if model is None:
        if confidence is not None:
            raise HwcostError(f"--confidence needs a calibrated table; {table_path or 'no --table'} has no in-context "
                              f"model (hwcost calibrate TABLE measures networks and fits one)")
        return None
    c = DEFAULT_CONFIDENCE if confidence is None else confidence
    return {"confidence": c, "upper_factor": model.upper_factor(c), "loo_mean": model.mean, "loo_std": model.std,
            "calibration_networks": len(model.samples)}


def apply_margin(terms, margin: dict | None, floor: float) -> None:
    """Aim each hard latency term at ``budget / u`` and keep its band's floor at ``floor * budget``
    (the floor was the user's fraction of the budget: it stays where the user put it)."""
    if margin is None:
        return
    u = margin["upper_factor"]
    for t in terms:
        if t.kind == "hard" and t.metric == "latency_ms":
            t.given = t.value if t.given is None else t.given
            t.value = t.given / u
            t.floor = min(floor * u, 0.99) if floor > 0 else 0.0


def local_correction(cost_tensor: CostTensor, terms, correction: dict, floor: float) -> tuple[CostTensor, dict]:
    """Hardware in the loop, after a derived network was measured: re-derive around it.

    ``correction = {"scale": rho, "margin": delta}``: rho = measured / predicted for the network
    measured last (after the refit), so the model's latency is scaled by rho -- the networks a
    re-derivation moves to differ from the measured one by a few ops and share most of its error --
    and each hard latency band [floor B, B] narrows by ``delta`` at both ends (re-measurement noise):
    the derivation aims at [floor B (1 + delta), B (1 - delta)]. The global confidence margin is
    not applied on top: rho replaces what the interval stood for. Networks measured already keep
    their measurement (``upper_factor`` 1)."""
    rho, delta = float(correction["scale"]), float(correction["margin"])
    if not (rho > 0 and 0 <= delta < 0.5):
        raise HwcostError(f"a verify correction needs scale > 0 and 0 <= margin < 0.5, got {correction!r}")
    i = cost_tensor.index("latency_ms")
    c, fixed = cost_tensor.c.clone(), cost_tensor.fixed.clone()
    c[..., i] *= rho
    fixed[i] *= rho
    for t in terms:
        if t.kind == "hard" and t.metric == "latency_ms":
            t.given = t.value if t.given is None else t.given
            t.value = t.given * (1 - delta)
            t.floor = min(floor * (1 + delta) / (1 - delta), 0.99) if floor > 0 else 0.0
    margin = {"confidence": None, "upper_factor": 1.0, "local_scale": rho, "local_margin": delta,
              "basis": "verify: the model scaled to the network measured last"}
    return dataclasses.replace(cost_tensor, c=c, fixed=fixed), margin


def target_config(space: str, network: str):
    """The deployed network whose costs the search optimises."""
    if space == "nb201":
        return Nb201NetConfig(arch="|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    probe = BUILTIN_GENOTYPES["DARTS_V2"][1] if space == "darts" else BUILTIN_GENOTYPES["SHARPSEPCONV_DARTS"][1]
    return network_config(network, probe, space)


def search_cost_tensor(space: str, network: str, ops: tuple[str, ...], table_path: str | None = None,
                       surrogate_path: str | None = None) -> tuple[CostTensor, dict]:
    """The cost tensor for the search, and notes on where latency came from."""
    target = target_config(space, network)
    notes: dict = {"target": network if space != "nb201" else "nb201-cifar10"}
    if table_path is None:
        return build_cost_tensor(space, target, metrics=ANALYTICAL, primitives=ops), notes
    table = _table(table_path)
    notes["table"] = str(table.source or table_path)
    if table.kind == "arch":
        if space != "nb201" or "nb201" not in table.spaces:
            raise HwcostError(f"table {table_path} is an architecture-level table of {table.spaces}; "
                              f"it can drive only an nb201 search")
        ct = build_cost_tensor(space, target, metrics=ANALYTICAL, primitives=ops)
        theta, b, fit = additive_arch_latency(table, ops)
        notes["latency_decomposition"] = fit
        c = torch.cat([ct.c, torch.as_tensor(theta, dtype=ct.c.dtype)[None, :, :, None]], dim=-1)
        fixed = torch.cat([ct.fixed, torch.tensor([b], dtype=ct.fixed.dtype)])
        return dataclasses.replace(ct, c=c, fixed=fixed, metrics=ct.metrics + ("latency_ms",)), notes
    if space not in table.spaces:
        raise HwcostError(f"table {table_path} was measured for space(s) {', '.join(table.spaces)}, "
                          f"but a {space} table is needed")
    from costmodels.costmodel import CostModel
    surrogate = None
    if surrogate_path:
        from costmodels.surrogate import load_surrogate
        surrogate = load_surrogate(surrogate_path, table=table)
    model = CostModel(table, surrogate)
    from costmodels.incontext import model_of, op_group
    incontext = model_of(table)
    # The in-context model is linear in the ops' isolated times: each op's entry is scaled by its
    # group's factor, and the per-op term joins the fixed part (below).
    latency_fn = model.latency_ms if incontext is None else \
        (lambda key: incontext.factor(op_group(key)) * model.latency_ms(key))
    ct = build_cost_tensor(space, target, metrics=("latency_ms",) + ANALYTICAL, latency_fn=latency_fn,
                           primitives=ops)
    notes["latency_sources"] = dict(model.sources)
    ct = _remove_isolation_overhead(ct, table, target, notes, incontext)
    return ct, notes


def _remove_isolation_overhead(ct: CostTensor, table: DeviceTable, target, notes: dict,
                               incontext=None) -> CostTensor:
    """Make the latency the network's, as ``hwcost predict`` computes it: an op-level table's
    entries each include one isolated call's overhead, which the whole network pays once
    (costmodels.predict). A derived network of these spaces always makes the same number of
    op calls N (302 for the CIFAR DARTS network: every cell has the same edges, nodes and
    preprocessing), so ``(N - 1) * per_call`` comes off the fixed part, exactly -- and, for
    a calibrated table, its in-context model's per-op term ``beta * N`` joins it."""
    from costmodels.predict import Overhead, network_op_counts
    from spaces import build_network
    overhead = Overhead.from_table(table)
    per_call = incontext.per_call_ms if incontext is not None else overhead.per_call_ms
    notes["overhead"] = {"per_call_ms": per_call, "source": overhead.source}
    if per_call <= 0 and incontext is None:
        return ct
    net = build_network(target)
    n_calls = sum(network_op_counts(net, net.input_shape()).values())
    removed = max(n_calls - 1, 0) * per_call
    notes["overhead"].update(n_calls=n_calls, removed_ms=removed)
    fixed = ct.fixed.clone()
    fixed[ct.index("latency_ms")] -= removed
    if incontext is not None:
        fixed[ct.index("latency_ms")] += incontext.per_op_ms * n_calls
        notes["calibration"] = {"networks": len(incontext.samples), "created": incontext.created,
                                "host": incontext.host, "loo_mean": incontext.mean, "loo_std": incontext.std}
    return dataclasses.replace(ct, fixed=fixed)


def cached_search_cost_tensor(space: str, network: str, ops: tuple[str, ...], table_path: str | None = None,
                              surrogate_path: str | None = None) -> tuple[CostTensor, dict]:
    """:func:`search_cost_tensor`, built once per process for the same arguments and files (it
    takes seconds: the target network is traced). The notes are shared: copy before changing."""
    return _cached(space, network, tuple(ops), table_path, surrogate_path, (_stamp(table_path), _stamp(surrogate_path)))


@functools.lru_cache(maxsize=8)
def _cached(space, network, ops, table_path, surrogate_path, stamps):
    return search_cost_tensor(space, network, ops, table_path, surrogate_path)


def _stamp(path: str | None):
    """A file's modification time (a changed file is a new cache key); None for names and no file."""
    if path is None or not os.path.exists(path):
        return None
    return os.stat(path).st_mtime_ns


def derived_latency(space: str, arch, cost_tensor: CostTensor, table_path: str | None) -> dict:
    """Latency of a derived network: the cost model's sum over its ops (op-level table), or the
    table's own measurement of that architecture (architecture-level table), with the
    additive model's prediction beside it."""
    from costmodels.expected_cost import ExpectedCost, arch_weights
    w = arch_weights(arch, cost_tensor.ops)
    predicted = float(ExpectedCost(cost_tensor, mode="derived")(weights=w)[cost_tensor.index("latency_ms")])
    out = {"latency_ms_predicted": predicted}
    if table_path is not None:
        table = _table(table_path)
        if table.kind == "arch":
            from device_tables import ArchKey
            entry = table.get(ArchKey(space, str(arch), "cifar10"))
            out["latency_ms"] = float(entry.median_ms) if entry is not None else None
            out["latency_source"] = "table (measured architecture)"
            return out
    out["latency_ms"] = predicted
    calibrated = table_path is not None and _table(table_path).calibration is not None
    out["latency_source"] = ("cost model (table ops through its in-context model)" if calibrated
                             else "cost model (sum of table ops)")
    return out


def _arch_key(arch) -> str:
    """One spelling of an architecture: an NB201 string, or a genotype (or its dict) as sorted JSON."""
    if isinstance(arch, str):
        return arch
    from spaces.genotypes import genotype_from_dict
    g = genotype_from_dict(arch) if isinstance(arch, dict) else arch
    return json.dumps(g.to_dict(), sort_keys=True)


def measured_latencies(table: DeviceTable, space: str, network: str) -> dict[str, float]:
    """Networks of this space and network preset that were measured whole on the table's device
    (its calibration, verify rounds included): architecture key -> measured ms. Hardware in the
    loop prices a network it has measured by its measurement, not by the model."""
    if table.calibration is None:
        return {}
    out = {}
    for n in table.calibration["networks"]:
        spec = n.get("spec") or {}
        if spec.get("kind") == "nb201" and space == "nb201":
            out[spec["arch"]] = float(n["measured_ms"])
        elif spec.get("kind") == "genotype" and spec.get("space") == space and spec.get("network") == network:
            out[_arch_key(spec["genotype"])] = float(n["measured_ms"])
    return out


def exact_cost_fn(space: str, table_path: str | None, cost_tensor: CostTensor, network: str = "cifar10",
                  upper_factor: float = 1.0):
    """Costs better than the cost model's, where known: an architecture-level table's measurement,
    or (op-level table) a network the table's calibration measured whole -- that one scaled by the
    budget margin ``upper_factor``, so that it meets an aimed budget B/u exactly when it met B."""
    if table_path is None or "latency_ms" not in cost_tensor.metrics:
        return None
    table = _table(table_path)
    i = cost_tensor.index("latency_ms")
    if table.kind != "arch":
        measured = measured_latencies(table, space, network)
        if not measured:
            return None

        def known(arch, costs):
            ms = measured.get(_arch_key(arch))
            if ms is not None:
                costs = costs.clone()
                costs[i] = ms * upper_factor
            return costs
        return known
    from device_tables import ArchKey

    def exact(arch, costs):
        entry = table.get(ArchKey(space, str(arch), "cifar10"))
        if entry is not None:
            costs = costs.clone()
            costs[i] = entry.median_ms
        return costs
    return exact


def enumerate_nb201_costs(table_path: str | None, cost_tensor: CostTensor, upper_factor: float = 1.0):
    """(archs, costs [n, metrics]) of every NB201 cell -- exact analytical counts, and latency
    from an architecture-level table -- so derivation can choose by enumeration; None otherwise."""
    if cost_tensor.space != "nb201":
        return None
    from spaces.nb201_arch import all_archs
    archs = [a.to_str() for a in all_archs()]
    idx = torch.tensor([[cost_tensor.ops.index(op) for op in a.ops] for a in all_archs()])
    c = cost_tensor.c[0]                                   # [edges, ops, metrics]
    costs = cost_tensor.fixed + c[torch.arange(c.shape[0]), idx].sum(1)  # [n, metrics]
    if "latency_ms" in cost_tensor.metrics and table_path is not None:
        table = _table(table_path)
        if table.kind == "arch":
            from device_tables import ArchKey
            lat = []
            for a in archs:
                entry = table.get(ArchKey("nb201", a, "cifar10"))
                lat.append(entry.median_ms if entry is not None else float("inf"))
            costs[:, cost_tensor.index("latency_ms")] = torch.tensor(lat, dtype=costs.dtype)
        else:
            measured = measured_latencies(table, "nb201", "cifar10")
            for j, a in enumerate(archs) if measured else ():
                if a in measured:
                    costs[j, cost_tensor.index("latency_ms")] = measured[a] * upper_factor
    return archs, costs
