"""The in-context latency model: from the sum of isolated ops to a network's time on a device.

A device table times every op alone.  In a network the same op runs in
context: on ONNX Runtime a chain of convolutions shares one NCHWc layout
transform where each isolated op paid two, and a whole network is one
``run()``; on eager PyTorch an op inside a network meets caches that other ops
just filled, and the network's working set is larger than any one op's.  How
much that changes an op's time depends on the op type and on the host (on one
AMD EPYC host, ORT networks ran 5 % under the sum of their ops; on an Intel
Xeon host 16 % over) -- so it is measured, per table:

    latency = sum_g f_g * X_g  -  (N - 1) * per_call  +  beta * N

* ``X_g`` -- the isolated time of the network's ops of group ``g`` (an op type
  of a space: ``sep_conv_3x3``, ``preprocess``...; for a model's layers a kind:
  depthwise / pointwise / other convolutions, linear, norm, activation, pool,
  element-wise), i.e. ``sum (n_k - a_k) t_k`` over the keys of the group, after
  what the runtime fuses away (``costmodels.predict``);
* ``per_call`` -- the overhead every isolated entry carries once and a network
  pays once (known from the table, not fitted);
* ``X_streamed`` -- a pseudo-group, for tables that record weights and the
  device's weight-streaming bandwidth (``profilers.stream``): the sum over the
  network's calls of ``max(0, weight_bytes / BW - t_k)``, what reading each
  call's weights from memory could add to its isolated time, priced by its own
  fitted factor like any group when the fit is asked to (``streamed=``; off by
  default: alexnet's Gemm nodes ran up to 2.2x their isolated times in the
  network, but on host D the group did not carry across model zoos);
* ``X_cold`` -- a pseudo-group, ``sum (n_k - a_k) t_k ** 0.6`` (``t_k`` in ms): an
  op alone is timed in a loop that keeps its data, code and branch history hot,
  and in a network it meets them cold; what that costs grows less than its time.
  Measured per layer on eager PyTorch (``benchmarks/node_context.py --backend
  torch-cpu``, 16 torchvision models, host E): a layer of < 20 us ran 2.7x its
  isolated time in the network, 0.1-0.3 ms 1.6x, 1-3 ms 1.2x, > 3 ms 1.0x -- an
  extra of about 0.3 ms x t ** 0.6 per call. Its factor is fitted like a
  group's (never shrunk with them) when the fit is asked to (``cold=``);
* ``f_g >= 0`` -- the group's in-context factor, ``beta`` a per-op-call term
  (either sign; what is not in any entry, e.g. a node's dispatch or the memory
  planner), both fitted on whole networks measured on the device (``hwcost
  calibrate``): relative least squares with the factors shrunk towards their
  common mean (weight ``lambda``), so that a group few calibration networks
  exercise stays near the common factor.  The structure itself -- nothing
  fitted (the plain sum), one common factor, or a factor per group at some
  ``lambda`` -- is the one with the lowest leave-one-out error: networks of
  many model families share a scale and a per-op term better than per-group
  factors (a zoo calibrated per group predicted held-out models worse than the
  plain sum did).

The leave-one-out residuals ``measured / predicted - 1`` of the calibration
networks give every prediction an interval (a Student-t prediction interval of
the relative error) and a budget its margin at a stated confidence.  Nothing is
fitted on the networks a figure scores: the benchmarks calibrate on others.
"""
from __future__ import annotations

import functools

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from device_tables import OpKey
from device_tables.calibration import MODEL_TAG, STRUCTURES, check_calibration
from device_tables.errors import HwcostError, TableError

LAMBDAS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
DEFAULT_CONFIDENCE = 0.9
# A network measured by the verify loop is the one the search is deciding about: its neighbourhood of the
# space matters more than random networks', so it counts this many times in the fit.
VERIFY_WEIGHT = 5.0
# A prediction warns when this share of the network's isolated time is in op types no calibration network
# held (InContextModel.unseen).
UNSEEN_WARN = 0.05
# The pseudo-group of weights a network streams from memory (module doc; profilers.stream).
STREAMED = "streamed"
# The pseudo-group of what each op call loses in a network for meeting its data and code cold, which grows
# less than its isolated time (module doc): sum over calls of (isolated ms) ** COLD_POWER.
COLD = "cold"
COLD_POWER = 0.6
PSEUDO_GROUPS = (STREAMED, COLD)
STREAMED_MODES = ("off", "choose", "on")

_NORMS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm2d",
          "LocalResponseNorm", "batch_norm", "layer_norm", "group_norm"}
_ACTS = {"ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "Sigmoid", "SiLU", "GELU", "Tanh", "LeakyReLU", "PReLU",
         "ELU", "Mish", "Softmax", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh",
         "softmax", "leaky_relu"}
_POOLS = {"MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "adaptive_avg_pool2d",
          "max_pool2d", "avg_pool2d", "mean"}
_ELEMENTWISE = {"add", "mul", "sub", "div", "iadd", "imul", "truediv", "cat", "stochastic_depth"}


_ONNX_KINDS = {
    "layout": {"ReorderInput", "ReorderOutput", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
               "Identity", "Slice", "Gather", "Expand", "Shape", "Cast"},
    "linear": {"Gemm", "MatMul", "FusedMatMul", "FusedGemm", "QGemm", "MatMulInteger"},
    "norm": {"BatchNormalization", "LayerNormalization", "SimplifiedLayerNormalization", "GroupNorm",
             "InstanceNormalization", "LpNormalization", "SkipLayerNormalization"},
    "activation": {"Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu", "FastGelu", "BiasGelu", "Softmax",
                   "Clip", "Tanh", "Erf", "LeakyRelu", "PRelu", "Elu", "Mish", "QuickGelu", "Swish"},
    "pool": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
             "Upsample", "Resize"},
    "elementwise": {"Add", "Mul", "Sub", "Div", "Sum", "Concat", "Split", "Pow", "Sqrt", "Where", "Max", "Min",
                    "BiasAdd", "BiasSoftmax"},
}


def _conv_kind(key: OpKey, extra: dict) -> str:
    groups = int(extra.get("groups", 1) or 1)
    if groups > 1 and groups == key.c_in:
        return "conv_dw"
    if groups > 1:
        return "conv_grouped"           # ResNeXt / RegNet group convs: neither depthwise nor dense
    return "conv_1x1" if str(extra.get("kernel", "")) == "1" else "conv_kxk"


def op_group(key: OpKey) -> str:
    """The in-context group of an op key: the op itself for a space's op; a layer kind for a model's
    (a PyTorch layer, or a node of the graph ONNX Runtime runs -- the same kinds, plus ``layout`` for
    the NCHWc reorders, reshapes and transposes a graph's nodes include)."""
    if key.space == "onnx":
        op = key.op.rsplit(".", 1)[-1]          # com.microsoft.nchwc.Conv -> Conv
        if op in ("Conv", "FusedConv", "ConvTranspose", "QLinearConv", "ConvInteger"):
            return _conv_kind(key, dict(key.extra))
        return next((kind for kind, ops in _ONNX_KINDS.items() if op in ops), "other")
    if key.space != "torch":
        return key.op
    op, extra = key.op, dict(key.extra)
    if op.startswith("Conv"):
        return _conv_kind(key, extra)
    if op == "Linear" or op == "linear":
        return "linear"
    if op in _NORMS:
        return "norm"
    if op in _ACTS:
        return "activation"
    if op in _POOLS:
        return "pool"
    if op in _ELEMENTWISE:
        return "elementwise"
    return "other"


def op_type(key: OpKey) -> str:
    """The type of an op key, finer than its group: a node's operator without its domain
    (``com.microsoft.QuickGelu`` -> ``QuickGelu``), a layer's class, a space's op."""
    return key.op.rsplit(".", 1)[-1] if key.space == "onnx" else key.op


def ops_ms(features: Mapping[str, float]) -> float:
    """The isolated op time of a network's group features (the pseudo-groups left out)."""
    return float(sum(x for g, x in features.items() if g not in PSEUDO_GROUPS))


def op_type_times(rows: Iterable[tuple]) -> dict[str, float]:
    """{op type: isolated ms after fusion} of a prediction's rows ``(key, count, fused, ms, source)``."""
    out: dict[str, float] = {}
    for key, n, a, ms, _ in rows:
        if n - a > 0:
            t = op_type(key)
            out[t] = out.get(t, 0.0) + (n - a) * ms
    return out


def group_features(rows: Iterable[tuple], streamed: Mapping | None = None) -> tuple[dict[str, float], int]:
    """({group: isolated ms after fusion}, op calls after fusion) of a prediction's rows
    ``(key, count, fused, ms, source)`` (``NetworkPrediction.per_key``); with ``streamed`` ({key: ms a
    call can add when its weights come from memory}, ``NetworkPrediction.streamed``) the
    :data:`STREAMED` pseudo-group too."""
    feats: dict[str, float] = {}
    n_ops = 0
    streamed = streamed or {}
    for key, n, a, ms, _ in rows:
        if n - a <= 0:
            continue
        g = op_group(key)
        feats[g] = feats.get(g, 0.0) + (n - a) * ms
        feats[COLD] = feats.get(COLD, 0.0) + (n - a) * max(ms, 0.0) ** COLD_POWER
        n_ops += n - a
        extra = streamed.get(key, 0.0)
        if extra > 0:
            feats[STREAMED] = feats.get(STREAMED, 0.0) + (n - a) * extra
    return feats, n_ops


@dataclass
class Sample:
    """One whole network measured on the device, with what the table says of its ops."""

    name: str
    features: dict[str, float]
    n_ops: int
    measured_ms: float
    spec: dict = field(default_factory=dict)
    p10_ms: float | None = None
    p90_ms: float | None = None
    role: str = "calibration"
    reference_ms: float | None = None   # the host reference kernel timed beside it (profilers.profile)
    op_types: dict[str, float] | None = None   # isolated ms per op / node type (:func:`op_type_times`)
    # The host's slowdown its measured_ms was divided by: the reference kernel beside it ran this much slower
    # than in the quietest phase of the table's profile (hwcost.calibrate.measure_specs); None: not scaled.
    phase: float | None = None

    def to_json(self) -> dict:
        d = {"name": self.name, "spec": self.spec, "measured_ms": self.measured_ms,
             "features": dict(sorted(self.features.items())), "n_ops": int(self.n_ops), "role": self.role}
        if self.p10_ms is not None:
            d.update(p10_ms=self.p10_ms, p90_ms=self.p90_ms)
        if self.reference_ms is not None:
            d["reference_ms"] = self.reference_ms
        if self.op_types is not None:
            d["op_types"] = dict(sorted(self.op_types.items()))
        if self.phase is not None:
            d["phase"] = self.phase
        return d

    @classmethod
    def of_rows(cls, name: str, rows, measured_ms: float, spec: dict | None = None, streamed: Mapping | None = None,
                **kw) -> "Sample":
        """A network measured at ``measured_ms``, its features, op calls and op-type times read from a
        prediction's rows ``(key, count, fused, ms, source)`` (``NetworkPrediction.per_key``) and its
        streamed weights (``NetworkPrediction.streamed``)."""
        rows = list(rows)
        feats, n_ops = group_features(rows, streamed)
        return cls(name, feats, n_ops, measured_ms, dict(spec or {}), op_types=op_type_times(rows), **kw)

    @classmethod
    def from_json(cls, d: dict) -> "Sample":
        types = d.get("op_types")
        return cls(d["name"], dict(d["features"]), int(d["n_ops"]), float(d["measured_ms"]), dict(d["spec"]),
                   d.get("p10_ms"), d.get("p90_ms"), d.get("role", "calibration"), d.get("reference_ms"),
                   dict(types) if types is not None else None, d.get("phase"))


def stream_bandwidth(table) -> float | None:
    """The table's measured weight-streaming bandwidth (``measurement.weight_stream``, written by
    ``profilers.stream.stream_probe``) in bytes per ms, or None if it has none."""
    rec = (getattr(table, "measurement", None) or {}).get("weight_stream")
    if not isinstance(rec, dict):
        return None
    gbps = rec.get("gbps")
    if isinstance(gbps, bool) or not isinstance(gbps, (int, float)) or not math.isfinite(gbps) or gbps <= 0:
        return None
    return float(gbps) * 1e6


def streaming_ms(table) -> Callable[[object, float], float] | None:
    """``f(key, ms)``: how much more the key's call can cost when its weights come from memory,
    ``max(0, weight_bytes / BW - ms)`` (module doc), 0 for a key the table does not hold (one a surrogate
    answers: its weight bytes are unknown); None when the table has no probe (profiled before hwcost
    kept one, or imported), so that its predictions stay the plain in-context model's."""
    bw = stream_bandwidth(table)
    if bw is None:
        return None

    def extra(key, ms: float) -> float:
        entry = table.get(key)
        wb = entry.extra.get("weight_bytes") if entry is not None else None
        if isinstance(wb, bool) or not isinstance(wb, (int, float)) or wb <= 0:
            return 0.0
        return max(0.0, float(wb) / bw - float(ms))
    return extra


@functools.lru_cache(maxsize=1024)
def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t
    return float(t.ppf(q, max(dof, 1)))


@dataclass
class InContextModel:
    """Fitted in-context factors, per-op term and leave-one-out residuals (module doc)."""

    factors: dict[str, float]
    default_factor: float
    per_op_ms: float
    per_call_ms: float
    lam: float
    samples: list[Sample]
    loo: list[float]                    # measured / leave-one-out prediction - 1, per sample
    fit_ms: list[float] = field(default_factory=list)
    loo_ms: list[float] = field(default_factory=list)
    backend: str = ""
    host: dict = field(default_factory=dict)
    created: str = ""
    structure: str = "groups"           # sum | scale | groups (fit_in_context)

    # -- prediction
    def factor(self, group: str) -> float:
        if group in PSEUDO_GROUPS:      # not fitted (off, or a calibration from before it): priced at 0
            return self.factors.get(group, 0.0)
        return self.factors.get(group, self.default_factor)

    def key_ms(self, key, ms: float, streamed_ms: float = 0.0) -> float:
        """One call of ``key`` (isolated ``ms``; ``streamed_ms`` what its weights can add) in a network: the
        model is a sum over calls, so a search prices each op by this (plus the per-op term)."""
        return (self.factor(op_group(key)) * ms + self.factor(STREAMED) * streamed_ms
                + self.factor(COLD) * max(ms, 0.0) ** COLD_POWER)

    def predict(self, features: Mapping[str, float], n_ops: int) -> float:
        s = sum(self.factor(g) * x for g, x in features.items())
        return s - max(n_ops - 1, 0) * self.per_call_ms + self.per_op_ms * n_ops

    def unseen(self, op_types: Mapping[str, float]) -> dict | None:
        """The op types of a network that no calibration network held: ``{"share": their part of the
        network's isolated time, "types": [...]}``, or None when some calibration network has no record
        of its op types (fitted before hwcost kept them). Such a network is unlike its calibration:
        efficientnet_b0, the only SiLU model of the torchvision zoo, was predicted -10.1% and -10.8% from
        the 15 others, +0.8% in the timm zoo beside two SiLU models (docs/in-context.md)."""
        if not self.samples or any(s.op_types is None for s in self.samples):
            return None      # some networks predate the record (a verify round added to an old calibration)
        known = set().union(*(s.op_types for s in self.samples))
        total = sum(op_types.values())
        new = {t: ms for t, ms in op_types.items() if t not in known and ms > 0}
        return {"share": (sum(new.values()) / total) if total > 0 else 0.0,
                "types": sorted(new, key=lambda t: -new[t])}

    @property
    def reference_ms(self) -> float | None:
        """Median reference-kernel time over the calibration measurements (None if none recorded), each of a
        measurement scaled back to the profile's quiet phase (``Sample.phase``) divided by the same factor:
        the host speed the calibrated times stand for."""
        refs = [s.reference_ms / (s.phase or 1.0) for s in self.samples if s.reference_ms is not None]
        return float(np.median(refs)) if refs else None

    @property
    def phase(self) -> float | None:
        """The largest slowdown a calibration measurement was scaled back by (None: none was)."""
        ph = [s.phase for s in self.samples if s.phase is not None]
        return max(ph) if ph else None

    @property
    def reference_spread(self) -> float:
        """Slowest / fastest reference-kernel time across the calibration measurements (1: steady)."""
        refs = [s.reference_ms for s in self.samples if s.reference_ms is not None]
        return max(refs) / min(refs) if len(refs) > 1 else 1.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.loo))

    @property
    def std(self) -> float:
        return float(np.std(self.loo, ddof=1)) if len(self.loo) > 1 else 0.0

    def _spread(self) -> float:
        n = len(self.loo)
        return self.std * math.sqrt(1 + 1 / n)

    def interval(self, predicted_ms: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
        """Two-sided prediction interval of the measured latency at ``confidence``."""
        check_confidence(confidence)
        t = _t_quantile(0.5 + confidence / 2, len(self.loo) - 1)
        lo = 1 + self.mean - t * self._spread()
        hi = 1 + self.mean + t * self._spread()
        return predicted_ms * max(lo, 0.0), predicted_ms * hi

    def upper_factor(self, confidence: float = DEFAULT_CONFIDENCE) -> float:
        """``u`` with P(measured <= u * predicted) = ``confidence`` (one-sided): a budget ``B``
        holds at that confidence when the prediction is at most ``B / u``."""
        check_confidence(confidence)
        return max(1 + self.mean + _t_quantile(confidence, len(self.loo) - 1) * self._spread(), 1e-6)

    # -- persistence (the table's ``calibration`` field)
    def to_json(self) -> dict:
        nets = []
        for s, fit, loo in zip(self.samples, self.fit_ms, self.loo_ms):
            nets.append({**s.to_json(), "fit_ms": fit, "loo_ms": loo})
        d = {"model": MODEL_TAG, "created": self.created, "host": self.host, "backend": self.backend,
             "per_call_ms": self.per_call_ms, "factors": dict(sorted(self.factors.items())),
             "default_factor": self.default_factor, "per_op_ms": self.per_op_ms, "lambda": self.lam,
             "structure": self.structure, "networks": nets,
             "residuals": {"n": len(self.loo), "mean": self.mean, "std": self.std, "loo": list(self.loo)}}
        check_calibration(d)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "InContextModel":
        check_calibration(d)
        nets = d["networks"]
        return cls(dict(d["factors"]), float(d["default_factor"]), float(d["per_op_ms"]), float(d["per_call_ms"]),
                   float(d["lambda"]), [Sample.from_json(n) for n in nets], [float(v) for v in d["residuals"]["loo"]],
                   [float(n.get("fit_ms") or 0) for n in nets], [float(n.get("loo_ms") or 0) for n in nets],
                   d["backend"], dict(d["host"]), d["created"], d.get("structure", "groups"))

    def summary(self) -> dict:
        """What ``hwcost calibrate`` reports: leave-one-out error of the calibration networks."""
        r = np.asarray(self.loo)
        return {"networks": len(r), "loo_mape": float(np.mean(np.abs(r / (1 + r)))) if r.size else 0.0,
                "loo_within_5": float(np.mean(np.abs(r) <= 0.05)), "loo_within_10": float(np.mean(np.abs(r) <= 0.10)),
                "loo_mean": self.mean, "loo_std": self.std, "lambda": self.lam, "structure": self.structure,
                "factors": dict(sorted(self.factors.items())), "default_factor": self.default_factor,
                "per_op_us": self.per_op_ms * 1e3, "streamed": STREAMED in self.factors}


def check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise HwcostError(f"--confidence must be a probability strictly between 0 and 1, got {confidence!r}")


# ---------------------------------------------------------------------------------------------
# Fitting


def _solve(samples: Sequence[Sample], groups: list[str], per_call_ms: float, lam: float):
    """Bounded relative least squares for (f_g..., beta); returns (factors, beta)."""
    from scipy.optimize import lsq_linear
    G = len(groups)
    X = np.array([[s.features.get(g, 0.0) for g in groups] for s in samples], float)
    n = np.array([s.n_ops for s in samples], float)
    y = np.array([s.measured_ms for s in samples], float)
    target = (y + np.maximum(n - 1, 0) * per_call_ms) / y
    w = np.sqrt([VERIFY_WEIGHT if s.role == "verify" else 1.0 for s in samples])
    A = np.hstack([X / y[:, None], (n / y)[:, None]]) * w[:, None]
    rows, rhs = [A], [target * w]
    if lam > 0:
        # Shrink the factors towards their mean, each group weighted by its share of the time,
        # and the per-op term towards 0 (in units of its share of the latency). The cold pseudo-group
        # is no op time (its unit is ms ** COLD_POWER): it is neither shrunk nor counted in the mean.
        shrunk = np.array([g != COLD for g in groups])
        Gs = max(int(shrunk.sum()), 1)
        share = np.where(shrunk, X.sum(0), 0.0) / max(X[:, shrunk].sum(), 1e-12)
        P = np.zeros((G + 1, G + 1))
        P[:G, :G] = ((np.eye(G) - np.outer(shrunk, shrunk) / Gs) * shrunk[:, None]
                     * np.sqrt(np.maximum(share, 1.0 / (10 * Gs)))[:, None])
        P[G, G] = float(np.mean(n / y))
        rows.append(np.sqrt(lam) * P)
        rhs.append(np.zeros(G + 1))
    lower = np.r_[np.zeros(G), -np.inf]
    res = lsq_linear(np.vstack(rows), np.concatenate(rhs), bounds=(lower, np.full(G + 1, np.inf)),
                     method="bvls" if G < 40 else "trf")
    return dict(zip(groups, (float(v) for v in res.x[:G]))), float(res.x[G])


def _solve_structure(samples: Sequence[Sample], groups: list[str], per_call_ms: float, lam: float, structure: str):
    """(factors, beta) of one candidate structure: ``sum`` -- nothing fitted (every factor 1, no
    per-op term: the plain sum of isolated ops, nothing streamed); ``scale`` -- one factor for every group and the
    per-op term; ``groups`` -- a factor per group, shrunk towards their mean with weight ``lam``."""
    if structure == "sum":
        return {g: 0.0 if g in PSEUDO_GROUPS else 1.0 for g in groups}, 0.0
    if structure == "scale":
        cold = [COLD] if COLD in groups else []
        merged = [Sample(s.name, {"all": sum(s.features.get(g, 0.0) for g in groups if g != COLD),
                                  **{g: s.features.get(g, 0.0) for g in cold}}, s.n_ops, s.measured_ms,
                         role=s.role) for s in samples]
        f, beta = _solve(merged, ["all"] + cold, per_call_ms, 0.0)
        return {g: f[g] if g == COLD else f["all"] for g in groups}, beta
    return _solve(samples, groups, per_call_ms, lam)


def _loo(samples: Sequence[Sample], groups: list[str], per_call_ms: float, lam: float,
         structure: str = "groups") -> list[float]:
    out = []
    for i in range(len(samples)):
        rest = [s for j, s in enumerate(samples) if j != i]
        f, beta = _solve_structure(rest, groups, per_call_ms, lam, structure)
        m = _model(f, beta, per_call_ms, lam, rest, [])
        out.append(m.predict(samples[i].features, samples[i].n_ops))
    return out


def _model(factors, beta, per_call_ms, lam, samples, loo) -> InContextModel:
    # the default factor (a group no calibration network had) is the op groups' time-weighted mean;
    # the streamed pseudo-group is no op time
    totals = {g: sum(s.features.get(g, 0.0) for s in samples) for g in factors if g not in PSEUDO_GROUPS}
    weight = sum(totals.values())
    default = (sum(factors[g] * totals[g] for g in totals) / weight) if weight > 0 else 1.0
    return InContextModel(dict(factors), float(default), beta, per_call_ms, lam, list(samples), loo)


def fit_in_context(samples: Sequence[Sample], per_call_ms: float = 0.0, lambdas: Sequence[float] = LAMBDAS,
                   backend: str = "", host: dict | None = None, created: str = "",
                   structures: Sequence[str] = STRUCTURES, streamed: str = "off",
                   cold: str = "off") -> InContextModel:
    """Fit the in-context model on whole networks measured on the table's device.

    The structure -- the plain sum (nothing fitted), one common factor, or a
    factor per op group with ``lambda`` shrinking them towards their mean (each
    of ``lambdas``) -- is the candidate with the lowest leave-one-out relative
    error, the simpler one on a tie: a calibration never predicts the networks
    it holds out worse than the sum it starts from, and few or unlike networks
    (a model zoo of many families) fit few parameters.  The returned model
    keeps the chosen candidate's leave-one-out residuals for its intervals.

    ``streamed``: what to do with the :data:`STREAMED` pseudo-group -- ``"off"``
    (default: left out, priced 0), ``"choose"`` (each candidate tried without and
    with it, kept where it lowers the leave-one-out error) or ``"on"`` (always
    fitted).  Off by default: on host D it fixed alexnet in one torchvision zoo
    run and made another run and the timm zoo worse (docs/in-context.md).
    ``cold``: the same choice for the :data:`COLD` pseudo-group; it is fitted
    only when every sample records it (a calibration from before it does not).
    """
    if streamed not in STREAMED_MODES:
        raise HwcostError(f"streamed must be one of {', '.join(STREAMED_MODES)}, got {streamed!r}")
    if cold not in STREAMED_MODES:
        raise HwcostError(f"cold must be one of {', '.join(STREAMED_MODES)}, got {cold!r}")
    samples = list(samples)
    if len(samples) < 2:
        raise HwcostError(f"an in-context model needs at least 2 measured networks, got {len(samples)}")
    for s in samples:
        if not (math.isfinite(s.measured_ms) and s.measured_ms > 0) or s.n_ops < 1:
            raise HwcostError(f"calibration network {s.name}: measured latency and op count must be positive")
    groups = sorted({g for s in samples for g, x in s.features.items() if x > 0})
    if not groups:
        raise HwcostError("the calibration networks have no op time from the table")
    unknown = sorted(set(structures) - set(STRUCTURES))
    if unknown or not structures:
        raise HwcostError(f"unknown in-context structure {', '.join(unknown) or '(none given)'}; "
                          f"known: {', '.join(STRUCTURES)}")
    y = np.array([s.measured_ms for s in samples])
    best = None
    candidates = [(st, 0.0) for st in STRUCTURES[:2] if st in structures]
    candidates += [("groups", lam) for lam in lambdas] if "groups" in structures else []
    # The pseudo-groups (mode "choose"): each candidate without them first, then with them (the plain sum
    # has neither); one stays only if it lowers the leave-one-out error.
    if COLD in groups and not all(COLD in s.features for s in samples):
        groups.remove(COLD)
    op_groups = [g for g in groups if g not in PSEUDO_GROUPS]

    def pseudo(mode: str, g: str) -> list[list[str]]:
        """The pseudo-group sets one pseudo-group's mode tries (it must be in the samples to be fitted)."""
        return {"off": [[]], "choose": [[], [g]], "on": [[g]]}[mode] if g in groups else [[]]
    variants = [(op_groups + s_set + c_set, st, lam)
                for s_set in pseudo(streamed, STREAMED) for c_set in pseudo(cold, COLD)
                for st, lam in candidates if not (st == "sum" and (s_set or c_set))]
    variants = variants or [(op_groups, st, lam) for st, lam in candidates]   # "on" with the plain sum only
    for use, structure, lam in variants:
        pred = np.array(_loo(samples, use, per_call_ms, lam, structure))
        err = float(np.mean(((y - pred) / np.maximum(pred, 1e-12)) ** 2)) if np.all(pred > 0) else math.inf
        if best is None or err < best[0] - 1e-12:
            best = (err, use, structure, lam, pred)
    _, groups, structure, lam, loo_pred = best
    factors, beta = _solve_structure(samples, groups, per_call_ms, lam, structure)
    model = _model(factors, beta, per_call_ms, lam, samples, [])
    model.structure = structure
    model.loo = [float(v) for v in y / np.maximum(loo_pred, 1e-12) - 1]
    model.loo_ms = [float(v) for v in loo_pred]
    model.fit_ms = [model.predict(s.features, s.n_ops) for s in samples]
    model.backend, model.host, model.created = backend, dict(host or {}), created
    if any(v <= 0 for v in model.fit_ms + model.loo_ms):
        raise HwcostError("the in-context fit predicts a non-positive latency for a calibration network; "
                          "measure more (and more varied) networks")
    return model


def model_of(table) -> InContextModel | None:
    """The table's in-context model, or None if it was never calibrated."""
    c = getattr(table, "calibration", None)
    if c is None:
        return None
    try:
        return InContextModel.from_json(c)
    except (TableError, KeyError, TypeError, ValueError) as e:
        raise TableError(f"table {getattr(table, 'source', None) or ''}: calibration: {e}") from None


__all__ = ["COLD", "COLD_POWER", "DEFAULT_CONFIDENCE", "PSEUDO_GROUPS", "STREAMED", "STREAMED_MODES", "STRUCTURES", "UNSEEN_WARN", "InContextModel", "Sample", "check_confidence",
           "fit_in_context", "group_features", "model_of", "op_group", "op_type", "op_type_times", "ops_ms", "stream_bandwidth",
           "streaming_ms"]
