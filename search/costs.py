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
from typing import Sequence

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


def apply_margin(terms, margin: dict | None, floor: float, metric: str = "latency_ms") -> None:
    """Aim each hard ``metric`` term at ``budget / u`` and keep its band's floor at ``floor * budget``
    (the floor was the user's fraction of the budget: it stays where the user put it)."""
    if margin is None:
        return
    u = margin["upper_factor"]
    for t in terms:
        if t.kind == "hard" and t.metric == metric:
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
    scaled = scale_latency(cost_tensor, rho)
    for t in terms:
        if t.kind == "hard" and t.metric == "latency_ms":
            t.given = t.value if t.given is None else t.given
            t.value = t.given * (1 - delta)
            t.floor = min(floor * (1 + delta) / (1 - delta), 0.99) if floor > 0 else 0.0
    margin = {"confidence": None, "upper_factor": 1.0, "local_scale": rho, "local_margin": delta,
              "basis": "verify: the model scaled to the network measured last"}
    return scaled, margin


def scale_latency(cost_tensor: CostTensor, rho: float) -> CostTensor:
    """The cost tensor with its latency (every op and the fixed part) scaled by ``rho``."""
    i = cost_tensor.index("latency_ms")
    c, fixed = cost_tensor.c.clone(), cost_tensor.fixed.clone()
    c[..., i] *= rho
    fixed[i] *= rho
    merge = cost_tensor.merge
    if merge is not None:
        merge = merge.clone()
        merge[..., i] *= rho
    return dataclasses.replace(cost_tensor, c=c, fixed=fixed, merge=merge)


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
    from costmodels.node_tensor import is_space_node_table
    if is_space_node_table(table):
        return _node_cost_tensor(space, network, ops, table, target, notes)
    if space not in table.spaces:
        raise HwcostError(f"table {table_path} was measured for space(s) {', '.join(table.spaces)}, "
                          f"but a {space} table is needed")
    from costmodels.costmodel import CostModel
    surrogate = None
    if surrogate_path:
        from costmodels.surrogate import load_surrogate
        surrogate = load_surrogate(surrogate_path, table=table)
    model = CostModel(table, surrogate)
    from costmodels.incontext import model_of, streaming_ms
    incontext = model_of(table)
    # The in-context model is a sum over op calls: each op's entry is scaled by its group's factor (plus
    # what its weights take to stream and what it meets cold, priced by those pseudo-groups' factors, as
    # costmodels.predict does for a table's keys), and the per-op term joins the fixed part (below).
    stream = streaming_ms(table)

    def in_context_ms(key):
        ms = model.latency_ms(key)
        return incontext.key_ms(key, ms, stream(key, ms) if stream is not None else 0.0)

    latency_fn = model.latency_ms if incontext is None else in_context_ms
    ct = build_cost_tensor(space, target, metrics=("latency_ms",) + ANALYTICAL, latency_fn=latency_fn,
                           primitives=ops)
    notes["latency_sources"] = dict(model.sources)
    ct = _remove_isolation_overhead(ct, table, target, notes, incontext)
    from costmodels.predict import runs_onnx_graph
    if runs_onnx_graph(table):
        from costmodels.cost_tensor import with_onnx_merges
        ct = with_onnx_merges(ct, notes["overhead"]["per_call_ms"], incontext.per_op_ms if incontext else 0.0)
        notes["merged"] = ("an ONNX graph runs identical parameter-free ops on one state once: the cost of a "
                           "derived network counts them once (costmodels.cost_tensor.merge_saving)")
    return ct, notes


def _node_cost_tensor(space: str, network: str, ops: tuple[str, ...], table: DeviceTable, target,
                      notes: dict) -> tuple[CostTensor, dict]:
    """The cost tensor of a space node table (``hwcost profile --space S --keys nodes``): each candidate
    op's latency per occurrence in a cell type, fitted on the networks the table keyed, each priced by
    its own nodes through the table's in-context model (``costmodels.node_tensor``)."""
    from costmodels.incontext import model_of
    from costmodels.node_tensor import fit_op_costs
    keyed = str(table.provenance.get("network") or "")
    if space != "nb201" and keyed != network:      # nb201 has one network
        raise HwcostError(f"table {table.source} keys the nodes of {table.provenance.get('space')} {keyed} networks; "
                          f"this search's target is {network} (profile it with --networks {network})")
    ct = build_cost_tensor(space, target, metrics=ANALYTICAL, primitives=ops)
    theta, fixed, report = fit_op_costs(table, space, ct.cell_types, ops)
    lat = torch.as_tensor(theta, dtype=ct.c.dtype)[:, None, :, None].expand(-1, len(ct.edges), -1, -1)
    notes["latency_decomposition"] = report
    notes["latency_sources"] = {"nodes": "the table's nodes of each keyed network, fitted per op and cell type"}
    incontext = model_of(table)
    if incontext is not None:
        notes["calibration"] = _calibration_notes(incontext)
    ct = dataclasses.replace(ct, c=torch.cat([lat, ct.c], dim=-1),
                             fixed=torch.cat([torch.tensor([fixed], dtype=ct.fixed.dtype), ct.fixed]),
                             metrics=("latency_ms",) + ct.metrics)
    return ct, notes


def _calibration_notes(incontext) -> dict:
    """What a cost tensor's notes say of the table's in-context model."""
    return {"networks": len(incontext.samples), "created": incontext.created, "host": incontext.host,
            "loo_mean": incontext.mean, "loo_std": incontext.std}


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
        notes["calibration"] = _calibration_notes(incontext)
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
    """A file's modification time, size and inode (a changed file is a new cache key: tables are saved by
    renaming a new file over the old one, and two saves within one tick of the file system's clock keep
    the time); None for names and no file."""
    if path is None or not os.path.exists(path):
        return None
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def derived_latency(space: str, arch, cost_tensor: CostTensor, table_path: str | None,
                    metric: str = "latency_ms") -> dict:
    """Latency (``metric``: ``latency_ms``, or ``latency_ms@NAME`` of one of several devices) of a
    derived network: the cost model's sum over its ops (op-level table), or the table's own
    measurement of that architecture (architecture-level table), with the additive model's
    prediction beside it. Keys carry the device suffix (``latency_ms_predicted@NAME``)."""
    from costmodels.expected_cost import ExpectedCost, arch_weights
    suffix = metric[len("latency_ms"):]
    w = arch_weights(arch, cost_tensor.ops)
    predicted = float(ExpectedCost(cost_tensor, mode="derived")(weights=w)[cost_tensor.index(metric)])
    out = {f"latency_ms_predicted{suffix}": predicted}
    if table_path is not None:
        table = _table(table_path)
        if table.kind == "arch":
            from device_tables import ArchKey
            entry = table.get(ArchKey(space, str(arch), "cifar10"))
            out[metric] = float(entry.median_ms) if entry is not None else None
            out[f"latency_source{suffix}"] = "table (measured architecture)"
            return out
    out[metric] = predicted
    calibrated = table_path is not None and _table(table_path).calibration is not None
    out[f"latency_source{suffix}"] = ("cost model (table ops through its in-context model)" if calibrated
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


def as_tables(tables) -> dict[str, str]:
    """Latency metric -> device table: a bare table path/name is the one device (``latency_ms``)."""
    if tables is None:
        return {}
    if isinstance(tables, (str, os.PathLike)):
        return {"latency_ms": str(tables)}
    return dict(tables)


def _factor(upper_factor, metric: str) -> float:
    return upper_factor.get(metric, 1.0) if isinstance(upper_factor, dict) else upper_factor


def exact_cost_fn(space: str, tables, cost_tensor: CostTensor, network: str = "cifar10", upper_factor=1.0):
    """Costs better than the cost model's, where known, per latency metric: an architecture-level
    table's measurement, or (op-level table) a network the table's calibration measured whole -- that
    one scaled by the budget margin ``upper_factor`` (one number, or one per metric), so that it meets
    an aimed budget B/u exactly when it met B. ``tables``: a table, or latency metric -> table."""
    fns = []
    for metric, path in as_tables(tables).items():
        if metric not in cost_tensor.metrics:
            continue
        table, i, u = _table(path), cost_tensor.index(metric), _factor(upper_factor, metric)
        if table.kind != "arch":
            measured = measured_latencies(table, space, network)
            if measured:
                fns.append(lambda arch, i=i, u=u, measured=measured:
                           None if (ms := measured.get(_arch_key(arch))) is None else (i, ms * u))
        else:
            from device_tables import ArchKey
            fns.append(lambda arch, i=i, table=table:
                       None if (e := table.get(ArchKey(space, str(arch), "cifar10"))) is None else (i, e.median_ms))
    if not fns:
        return None

    def exact(arch, costs):
        for fn in fns:
            known = fn(arch)
            if known is not None:
                costs = costs.clone()
                costs[known[0]] = known[1]
        return costs
    return exact


def enumerate_nb201_costs(tables, cost_tensor: CostTensor, upper_factor=1.0):
    """(archs, costs [n, metrics]) of every NB201 cell -- exact analytical counts, and each latency
    metric from its architecture-level table (or the calibration's measured networks) -- so
    derivation can choose by enumeration; None otherwise."""
    if cost_tensor.space != "nb201":
        return None
    from spaces.nb201_arch import all_archs
    archs = [a.to_str() for a in all_archs()]
    idx = torch.tensor([[cost_tensor.ops.index(op) for op in a.ops] for a in all_archs()])
    c = cost_tensor.c[0]                                   # [edges, ops, metrics]
    costs = cost_tensor.fixed + c[torch.arange(c.shape[0]), idx].sum(1)  # [n, metrics]
    if cost_tensor.merge is not None:                      # ops merged in an ONNX graph, once each
        from costmodels.cost_tensor import merge_saving
        onehot = torch.nn.functional.one_hot(idx, len(cost_tensor.ops)).to(costs.dtype)[:, None]
        costs = costs - merge_saving(cost_tensor.merge, onehot, cost_tensor.edges)
    for metric, path in as_tables(tables).items():
        if metric not in cost_tensor.metrics:
            continue
        table, i = _table(path), cost_tensor.index(metric)
        if table.kind == "arch":
            from device_tables import ArchKey
            lat = []
            for a in archs:
                entry = table.get(ArchKey("nb201", a, "cifar10"))
                lat.append(entry.median_ms if entry is not None else float("inf"))
            costs[:, i] = torch.tensor(lat, dtype=costs.dtype)
        else:
            measured = measured_latencies(table, "nb201", "cifar10")
            for j, a in enumerate(archs) if measured else ():
                if a in measured:
                    costs[j, i] = measured[a] * _factor(upper_factor, metric)
    return archs, costs


# ---------------------------------------------------------------------------------------------
# Several devices in one search: --table NAME=TABLE (repeatable), budgets latency@NAME=...

def parse_devices(specs) -> dict[str, str]:
    """``["raspi4=raspi4", "gpu=t.json"]`` -> {name: table}; one clear error for a malformed spec, a
    bad or repeated name."""
    from .objective import DEVICE_NAME
    out: dict[str, str] = {}
    for spec in specs or ():
        name, sep, path = str(spec).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise HwcostError(f"--table {spec!r}: write NAME=TABLE to name a device (or one bare --table)")
        if not DEVICE_NAME.match(name):
            raise HwcostError(f"--table {spec!r}: a device name is letters, digits, '_', '-' or '.'")
        if name in out:
            raise HwcostError(f"--table: device {name!r} is named twice")
        out[name] = path
    return out


def table_fields(tables: Sequence[str] | None) -> dict:
    """The SearchConfig fields of a command line's ``--table`` (repeatable): one bare table
    (``{"table": T}``), or every device named (``{"devices": ["pi=raspi4", ...]}``)."""
    if not tables:
        return {}
    if all("=" in t for t in tables):
        return {"devices": list(tables)}
    if len(tables) == 1:
        return {"table": tables[0]}
    raise HwcostError("--table: give one bare table, or name every device (--table NAME=TABLE)")


def latency_tables(table: str | None, devices=None) -> dict[str, str]:
    """The search's latency metrics and their tables: ``latency_ms`` for a bare ``--table``, or
    ``latency_ms@NAME`` for each ``--table NAME=TABLE``."""
    named = parse_devices(devices)
    if named and table:
        raise HwcostError("give one bare --table, or name every device (--table NAME=TABLE), not both")
    if named:
        from .objective import device_metric
        return {device_metric("latency_ms", n): p for n, p in named.items()}
    return as_tables(table)


def device_cost_tensor(space: str, network: str, ops: tuple[str, ...], tables: dict[str, str],
                       surrogate_path: str | None = None) -> tuple[CostTensor, dict]:
    """The search's cost tensor for ``tables`` (latency metric -> table): one device as
    :func:`cached_search_cost_tensor`; several devices stack one latency column per device
    (``latency_ms@NAME``, each the device's own cost model: op table, calibration or architecture
    table) beside the analytical counts, which every device shares."""
    if list(tables) in ([], ["latency_ms"]):
        return cached_search_cost_tensor(space, network, ops, tables.get("latency_ms"), surrogate_path)
    if surrogate_path:
        raise HwcostError("--surrogate belongs to one device table; with several devices leave it out")
    base, _ = cached_search_cost_tensor(space, network, ops, None)
    cols, fixed, notes = [base.c], [base.fixed], {"target": None, "devices": {}}
    merges = [torch.zeros_like(base.c)]
    for metric, path in tables.items():
        ct, n = cached_search_cost_tensor(space, network, ops, path)
        if "latency_ms" not in ct.metrics:
            raise HwcostError(f"table {path} gives no latency for the {space} space")
        i = ct.index("latency_ms")
        cols.append(ct.c[..., i:i + 1])
        fixed.append(ct.fixed[i:i + 1])
        merges.append(ct.merge[..., i:i + 1] if ct.merge is not None else torch.zeros_like(cols[-1]))
        notes["target"] = n["target"]
        notes["devices"][metric.partition("@")[2]] = json.loads(json.dumps(n, default=str))
    merge = torch.cat(merges, dim=-1)
    ct = dataclasses.replace(base, c=torch.cat(cols, dim=-1), fixed=torch.cat(fixed),
                             metrics=base.metrics + tuple(tables), merge=merge if torch.any(merge != 0) else None)
    return ct, notes
