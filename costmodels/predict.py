"""Whole-network latency: the sum of the network's ops, minus what isolation adds.

    latency = scale * ( sum_k (n_k - a_k) * t_k  -  (N - A - 1) * per_call )

* ``n_k`` -- how often op key ``k`` runs in one forward pass, read from the
  *built* network by :func:`spaces.opkeys.network_op_counts` (the modules
  ``spaces.build_op`` tagged, for a searched space; the layers of any PyTorch
  model), never from a hand-kept list; ``N = sum_k n_k``.
* ``t_k`` -- the key's latency from the device table, else from the op
  surrogate, else an error naming the missing keys (no silent under-count);
  each source is counted.
* ``per_call`` -- the fixed cost that every *isolated* op measurement
  includes once but a whole network pays once in total.  On ONNX Runtime each
  op runs in its own session, so every table entry carries one ``run()``
  call's overhead; a network is one ``run()``.  On eager PyTorch each op is
  one module call, and the network makes the same module calls, so nothing is
  double-counted (``per_call = 0``).  The table records the time of an empty
  op (``measurement.call_overhead_ms``);
  :func:`profilers.overhead.measure_call_overhead` separates that into the
  per-call part and the per-node part (a chain of ``k`` empty ops in one
  call) -- see benchmarks/README_predict.md.
* ``a_k`` -- how many of the ``n_k`` occurrences the runtime fuses into a
  neighbour (nn-Meter's kernel detection, reduced to ONNX Runtime's rules):
  a BatchNorm directly after a convolution is folded into its weights, and an
  activation directly after a convolution (with a folded BN) runs inside the
  convolution kernel; ``A = sum_k a_k``.  Layer-by-layer tables of PyTorch
  models time those layers separately; a space's ops are measured whole (BN
  inside), so the rule changes nothing there.
* on a runtime that runs the network as an ONNX graph (:func:`runs_onnx_graph`), ``n_k``
  leaves out the calls of a parameter-free op that repeat it on a tensor an
  earlier call read: the export keeps one node for both
  (:func:`spaces.opkeys.tagged_op_counts`; reported as ``merged``).
* ``scale`` -- 1 unless a calibrated in-context factor is given (see
  :class:`Overhead`); never fitted on the networks it predicts.

A calibrated table (``hwcost calibrate``) replaces the single ``scale`` by its
in-context model (:mod:`costmodels.incontext`: a factor per op group and a
per-op term, fitted on other networks measured on the device), and every
prediction then carries an interval from that model's leave-one-out residuals.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from device_tables import DeviceTable, OpKey
from device_tables.errors import MissingKeyError, TableError
from spaces.errors import HwcostError
from spaces.opkeys import model_layer_keys, network_op_counts

from .costmodel import CostModel, OpSurrogate

# Activations ONNX Runtime fuses into a preceding Conv (ConvActivationFusion: Relu, Clip, Sigmoid,
# HardSigmoid, LeakyRelu, Tanh); ReLU6 and Hardtanh export as Clip.
_FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.LeakyReLU, nn.Tanh)
_SESSION_PER_OP = "one ONNX Runtime session per op model"


# ---------------------------------------------------------------------------------------------
# The overhead model


@dataclass(frozen=True)
class Overhead:
    """What isolation adds to each op measurement: ``per_call_ms`` once per entry (see module doc).

    ``scale`` (default 1: none) is an optional in-context factor, network time /
    isolated time, for runtimes whose ops run slower inside a network than
    alone (caches, memory traffic); it must be calibrated on networks other than
    those it will predict (:func:`calibrate_scale`), and is recorded with where
    it came from.
    """

    per_call_ms: float = 0.0
    source: str = "none"
    scale: float = 1.0

    def __post_init__(self):
        for name in ("per_call_ms", "scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise HwcostError(f"overhead {name} must be a non-negative finite number, got {v!r}")

    def network_ms(self, sum_ms: float, n_calls: int) -> float:
        """Latency of a network whose ``n_calls`` isolated ops sum to ``sum_ms``."""
        return self.scale * (sum_ms - max(n_calls - 1, 0) * self.per_call_ms)

    @classmethod
    def from_table(cls, table: DeviceTable) -> "Overhead":
        """The table's recorded per-call overhead, where its isolation makes one.

        A table may record ``measurement.per_call_overhead_ms`` (the chain
        measurement of :func:`profilers.overhead.measure_call_overhead`).  Otherwise, for tables
        measured one ONNX Runtime session per op, the empty op's time
        (``call_overhead_ms``, measured once when profiling starts) stands for
        it -- capped at the table's fastest entry: every entry includes the
        overhead, so a larger value was measured in a slower moment than the
        entries were.  An optional ``measurement.context_scale`` (calibrated on
        other networks, see :func:`calibrate_scale`) becomes ``scale``.
        """
        m = table.measurement
        base = cls._per_call_from(table)
        scale = m.get("context_scale")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            return cls(base.per_call_ms, f"{base.source}; context_scale {scale:g} from the table", float(scale))
        return base

    @classmethod
    def _per_call_from(cls, table: DeviceTable) -> "Overhead":
        m = table.measurement
        if isinstance(m.get("per_call_overhead_ms"), (int, float)):
            return cls(float(m["per_call_overhead_ms"]), "table: measurement.per_call_overhead_ms")
        if m.get("isolation") == _SESSION_PER_OP and isinstance(m.get("call_overhead_ms"), (int, float)):
            value, source = float(m["call_overhead_ms"]), "table: measurement.call_overhead_ms (one session per op)"
            fastest = min(table.entries, key=lambda e: e.median_ms, default=None)
            if fastest is not None and fastest.median_ms < value:
                value = fastest.median_ms
                source = f"table: its fastest entry ({fastest.key.op}), below call_overhead_ms"
            return cls(value, source)
        if str(table.runtime.get("backend", "")).startswith("ort") and "call_overhead_ms" not in m:
            return cls(0.0, "none: this ONNX Runtime table records no call overhead (predictions run high)")
        return cls(0.0, "none: each entry is one module call, as in the network")


def calibrate_scale(predicted_ms, measured_ms) -> float:
    """The in-context factor s minimising the relative error sum(((s p - m) / m)^2) over
    calibration networks (never the networks it will then predict)."""
    import numpy as np
    r = np.asarray(predicted_ms, float) / np.asarray(measured_ms, float)
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise HwcostError("calibration needs positive predicted and measured latencies of at least one network")
    return float(r.sum() / (r ** 2).sum())


# ---------------------------------------------------------------------------------------------
# Which ops a network runs


def fused_layer_counts(model: nn.Module, input_shape: tuple[int, ...], level: str = "all") -> Counter:
    """Key -> occurrences ONNX Runtime fuses into a preceding convolution (module doc).

    ``level``: the session's graph optimisation -- ``basic`` folds BN into Conv,
    ``extended``/``all`` also fuse activations; ``disable`` fuses nothing. Only
    layers of a traceable model with torch modules are matched; a model with
    tagged space ops (whose ops are measured whole) fuses nothing here.
    """
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    if level == "disable" or any(hasattr(m, "hw_op") for m in model.modules()):
        return Counter()
    try:
        gm = fx.symbolic_trace(model.eval())
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.randn(*input_shape))
    except Exception:  # noqa: BLE001 - untraceable: no graph, so no fusion is claimed
        return Counter()
    modules = dict(gm.named_modules())
    conv_out: set = set()     # nodes whose value is a convolution's output (BN folded in)
    absorbed: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, nn.Conv2d):
            conv_out.add(node)
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and src in conv_out and len(src.users) == 1):
            continue
        is_bn = isinstance(m, nn.BatchNorm2d)
        if not (is_bn or (level in ("extended", "all") and isinstance(m, _FUSED_ACTIVATIONS))):
            continue
        shape = tuple(src.meta["tensor_meta"].shape)
        layers = model_layer_keys(nn.Sequential(m), shape)   # the key the table uses for this layer
        if len(layers) == 1:
            absorbed[layers[0].key] += 1
            if is_bn:
                conv_out.add(node)   # Conv+BN is still a convolution; an activation ends the chain
    return absorbed


def runs_onnx_graph(table: DeviceTable) -> bool:
    """Whether ``table``'s runtime runs a network as an ONNX graph (an ONNX Runtime backend, here or on a
    device through a bundle): the export and ONNX Runtime's common-subexpression elimination then keep one
    node for identical parameter-free ops reading the same tensor (:func:`spaces.opkeys.tagged_op_counts`),
    at every graph optimisation level (the exporter merges them already)."""
    return str(table.runtime.get("backend", "")).startswith("ort")


def runtime_fusion_level(table: DeviceTable) -> str:
    """The graph optimisation level whose fusions apply to ``table``'s runtime (``disable``: none)."""
    if not runs_onnx_graph(table):
        return "disable"   # eager PyTorch runs every layer as written
    return str(table.runtime.get("graph_optimization") or "all")


# ---------------------------------------------------------------------------------------------
# Prediction


@dataclass
class NetworkPrediction:
    """A predicted latency and how it was put together (ms)."""

    latency_ms: float
    ops_sum_ms: float                  # sum of n_k * t_k over every op call
    fused_ms: float                    # sum of a_k * t_k: ops the runtime fuses away
    overhead_removed_ms: float         # (N - 1) * per_call
    n_calls: int                       # N: op calls in one forward pass (before fusion)
    n_keys: int                        # distinct keys
    n_fused: int                       # sum of a_k
    from_table: int                    # op calls answered by the table
    from_surrogate: int                # op calls answered by the surrogate
    overhead: Overhead = field(default_factory=Overhead)
    per_key: list = field(default_factory=list)   # (key, count, fused, ms, source)
    uncalibrated_ms: float | None = None   # the sum-of-ops latency, when an in-context model changed it
    low_ms: float | None = None            # prediction interval (calibrated tables only)
    high_ms: float | None = None
    confidence: float | None = None
    calibration: str = "none: the sum of isolated ops (hwcost calibrate TABLE fits the in-context model)"
    unseen: dict | None = None             # op types no calibration network held (InContextModel.unseen)
    # {key: ms a call can add when its weights come from memory} (profilers.stream.streaming_ms); empty
    # when the table has no weight-stream probe or no key streams
    streamed: dict = field(default_factory=dict)
    # {key: calls} the network makes as written but its ONNX graph does not (identical parameter-free ops
    # on the same tensor, merged by the export; runs_onnx_graph); n_calls and the sums leave them out
    merged: dict = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return self.uncalibrated_ms is not None

    @property
    def subnormal(self) -> tuple[int, float]:
        """(calls, ms of the sum of ops) of the nodes keyed as fed subnormal floats in this network whose
        time the table holds (``spaces.onnx_graph``: timed on the network's own inputs; a surrogate's
        answer never was)."""
        rows = [(n, ms) for key, n, _, ms, source in self.per_key
                if source == "table" and any(f == "subnormal" for f, _ in getattr(key, "extra", ()))]
        return sum(n for n, _ in rows), sum(n * ms for n, ms in rows)

    def to_dict(self) -> dict:
        d = {"latency_ms": self.latency_ms, "from_table": self.from_table,
             "from_surrogate": self.from_surrogate, "ops_sum_ms": self.ops_sum_ms, "n_ops": self.n_calls,
             "n_keys": self.n_keys, "fused_ops": self.n_fused, "fused_ms": self.fused_ms,
             "overhead_removed_ms": self.overhead_removed_ms, "per_call_overhead_ms": self.overhead.per_call_ms,
             "context_scale": self.overhead.scale, "overhead_source": self.overhead.source,
             "calibrated": self.calibrated, "calibration": self.calibration}
        if self.calibrated:
            d.update(uncalibrated_ms=self.uncalibrated_ms, low_ms=self.low_ms, high_ms=self.high_ms,
                     confidence=self.confidence)
        if self.merged:
            d.update(merged_ops=sum(self.merged.values()))
        calls, ms = self.subnormal
        if calls:
            d.update(subnormal_ops=calls, subnormal_ms=ms)
        if self.unseen is not None:
            d.update(unseen_share=self.unseen["share"], unseen_op_types=self.unseen["types"])
            if self.unseen_warning:
                d["calibration_warning"] = self.unseen_warning
        return d

    @property
    def unseen_warning(self) -> str | None:
        """A line when much of the network's time is in op types its calibration never measured."""
        from .incontext import UNSEEN_WARN
        u = self.unseen
        if u is None or u["share"] < UNSEEN_WARN:
            return None
        names = ", ".join(u["types"][:4]) + (f" and {len(u['types']) - 4} more" if len(u["types"]) > 4 else "")
        return (f"{u['share']:.0%} of this network's op time is in op types no calibration network had ({names}): "
                f"their in-context factor is a guess and the interval does not cover it; calibrate with networks "
                f"that have them (hwcost calibrate TABLE --models ...)")


def predict_counts(counts: Mapping[OpKey, int], cost_model: CostModel, overhead: Overhead = Overhead(),
                   fused: Mapping[OpKey, int] | None = None, incontext=None,
                   confidence: float | None = None) -> NetworkPrediction:
    """Latency of a network given its op counts (and the occurrences the runtime fuses away).

    Every key is answered by the table, else the surrogate; all unanswered keys
    are reported together in one :class:`MissingKeyError`. With ``incontext``
    (a :class:`costmodels.incontext.InContextModel`) the latency is the
    in-context model's, with its interval at ``confidence`` (default 0.9).
    """
    fused = fused or {}
    rows, missing = [], []
    for key, n in sorted(counts.items(), key=lambda kv: kv[0].to_str()):
        try:
            ms, source = cost_model.answer(key)
        except MissingKeyError:
            missing.append(key)
            continue
        rows.append((key, int(n), int(min(fused.get(key, 0), n)), ms, source))
    if missing:
        where = "the table" + (" or the surrogate" if cost_model.surrogate is not None else "")
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise MissingKeyError(f"{len(missing)} of the network's {len(counts)} op keys have no latency in "
                              f"{where}: {', '.join(k.to_str() for k in missing[:3])}{more}; profile them "
                              f"(hwcost profile ...) or fit a surrogate (hwcost fit TABLE --out S.json)")
    from .incontext import streaming_ms
    stream = streaming_ms(cost_model.table) if cost_model.table is not None else None
    streamed = {}
    if stream is not None:
        streamed = {key: x for key, _, _, ms, _ in rows if (x := stream(key, ms)) > 0}
    n_calls = sum(n for _, n, _, _, _ in rows)
    total = sum(n * ms for _, n, _, ms, _ in rows)
    fused_ms = sum(a * ms for _, _, a, ms, _ in rows)
    n_fused = sum(a for _, _, a, _, _ in rows)
    # A fused occurrence is dropped whole (its entry's call overhead with it).
    latency = overhead.network_ms(total - fused_ms, n_calls - n_fused)
    p = NetworkPrediction(
        latency_ms=latency, ops_sum_ms=total, fused_ms=fused_ms,
        overhead_removed_ms=max(n_calls - n_fused - 1, 0) * overhead.per_call_ms, n_calls=n_calls,
        n_keys=len(rows), n_fused=n_fused, from_table=sum(n for _, n, _, _, s in rows if s == "table"),
        from_surrogate=sum(n for _, n, _, _, s in rows if s == "surrogate"), overhead=overhead, per_key=rows,
        streamed=streamed)
    if incontext is not None:
        from .incontext import DEFAULT_CONFIDENCE, group_features, op_type_times
        confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
        feats, n_ops = group_features(rows, streamed)
        p.unseen = incontext.unseen(op_type_times(rows))
        p.uncalibrated_ms = latency
        p.latency_ms = incontext.predict(feats, n_ops)
        p.low_ms, p.high_ms = incontext.interval(p.latency_ms, confidence)
        p.confidence = confidence
        p.calibration = (f"in-context model of {len(incontext.samples)} networks measured on "
                         f"{incontext.host.get('cpu', '?')} ({incontext.created}); leave-one-out error "
                         f"{incontext.mean:+.1%} +- {incontext.std:.1%}")
    return p


def check_table_for(table: DeviceTable, space: str, backend: str | None = None) -> None:
    """Refuse a table that cannot price this network (kind, space, backend)."""
    where = table.source or "the table"
    if table.kind != "op":
        raise TableError(f"table {where} is architecture-level; a network's ops need an op-level table "
                         f"(hwcost profile ...), or use an architecture surrogate with --archs")
    if space not in table.spaces:
        hint = {"torch": " (profile the model's layers: hwcost profile --model torchvision:NAME --input ...)",
                "onnx": " (profile the ONNX model's nodes: hwcost profile --model NET.onnx)"}.get(space, "")
        raise TableError(f"table {where} was measured for space(s) {', '.join(table.spaces)}, but this network "
                         f"needs a table of space {space}{hint}")
    if backend is not None and table.runtime.get("backend") != backend:
        raise TableError(f"table {where} was measured on backend {table.runtime.get('backend')}, not {backend}")


def predict_network(model: nn.Module, input_shape: tuple[int, ...], table: DeviceTable,
                    surrogate: OpSurrogate | None = None, overhead: Overhead | None = None,
                    backend: str | None = None, incontext="table",
                    confidence: float | None = None) -> NetworkPrediction:
    """Predicted latency of ``model`` at ``input_shape`` on the device/runtime of ``table``.

    ``model`` is a network of a searched space (its tagged ops are looked up),
    any PyTorch model (its layers, in a ``torch``-space table), or an ONNX graph
    (:class:`spaces.onnx_graph.OnnxGraph`: its nodes, :func:`predict_onnx`).
    ``incontext``: ``"table"`` (default) uses the table's calibration if it has
    one; ``None`` the plain sum of ops; or an :class:`InContextModel`.
    """
    from spaces.onnx_graph import OnnxGraph
    if isinstance(model, OnnxGraph):
        return predict_onnx(model, table, surrogate, overhead, backend, incontext, confidence)
    spaces = {m.hw_space for m in model.modules() if hasattr(m, "hw_op")}
    space = spaces.pop() if len(spaces) == 1 else ("torch" if not spaces else None)
    if space is None:
        raise HwcostError("the network mixes ops of several spaces; build it from one space")
    check_table_for(table, space, backend)
    if surrogate is not None and hasattr(surrogate, "table_"):
        from .surrogate import check_table
        check_table(surrogate, table)
    merged: dict = {}
    counts = network_op_counts(model, input_shape, merged if space != "torch" and runs_onnx_graph(table) else None)
    counts.subtract(merged)   # what the ONNX graph does not run
    fused = fused_layer_counts(model, input_shape, runtime_fusion_level(table)) if space == "torch" else Counter()
    if isinstance(incontext, str):
        from .incontext import model_of
        incontext = model_of(table)
    p = predict_counts(+counts, CostModel(table, surrogate), overhead or Overhead.from_table(table), fused,
                       incontext, confidence)
    p.merged = {k.to_str(): n for k, n in sorted(merged.items(), key=lambda kv: kv[0].to_str())}
    return p


def predict_onnx(graph, table: DeviceTable, surrogate: OpSurrogate | None = None,
                 overhead: Overhead | None = None, backend: str | None = None, incontext="table",
                 confidence: float | None = None) -> NetworkPrediction:
    """Predicted latency of an ONNX model (:class:`spaces.onnx_graph.OnnxGraph`) on ``table``'s runtime.

    The graph is optimised by ONNX Runtime at the table's graph optimisation level and
    execution provider, and each node it then runs is priced by its ``onnx`` key; fusions
    are already in that graph (no ``a_k``), the per-call overhead is removed as for any
    ONNX Runtime table (one session per node when profiled, one for the network).
    """
    from spaces.onnx_graph import ONNX_SPACE, onnx_op_counts
    check_table_for(table, ONNX_SPACE, backend)
    if not str(table.runtime.get("backend", "")).startswith("ort"):
        raise TableError(f"table {table.source or ''} was measured on {table.runtime.get('backend')}; ONNX node "
                         f"tables come from an ONNX Runtime backend")
    providers = [str(table.runtime.get("execution_provider") or "CPUExecutionProvider")]
    if providers[0] != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    counts = onnx_op_counts(graph, runtime_fusion_level(table), providers)
    if isinstance(incontext, str):
        from .incontext import model_of
        incontext = model_of(table)
    return predict_counts(counts, CostModel(table, surrogate), overhead or Overhead.from_table(table), Counter(),
                          incontext, confidence)


def predict_genotype(genotype, table: DeviceTable, network: str = "cifar10", space: str = "darts",
                     surrogate: OpSurrogate | None = None, overhead: Overhead | None = None,
                     batch: int = 1, incontext="table", confidence: float | None = None) -> NetworkPrediction:
    """A DARTS-form genotype (a ``Genotype``, a built-in name or a file) under a network preset."""
    from spaces import Genotype, build_network, load_genotype, network_config
    if not isinstance(genotype, Genotype):
        space, genotype = load_genotype(genotype, space)
    model = build_network(network_config(network, genotype.validate(space), space))
    return predict_network(model, model.input_shape(batch), table, surrogate, overhead,
                           incontext=incontext, confidence=confidence)


def predict_nb201(arch: str, table: DeviceTable, surrogate: OpSurrogate | None = None,
                  overhead: Overhead | None = None, batch: int = 1, incontext="table",
                  confidence: float | None = None) -> NetworkPrediction:
    """An NB201 architecture string on the CIFAR skeleton (C=16, N=5)."""
    from spaces import Nb201NetConfig, build_network
    model = build_network(Nb201NetConfig(arch=arch))
    return predict_network(model, model.input_shape(batch), table, surrogate, overhead,
                           incontext=incontext, confidence=confidence)


__all__ = ["NetworkPrediction", "Overhead", "calibrate_scale", "check_table_for", "fused_layer_counts",
           "network_op_counts", "predict_counts", "predict_genotype", "predict_onnx", "predict_nb201", "predict_network",
           "runs_onnx_graph", "runtime_fusion_level"]
