"""Op-level latency surrogates: one regressor per op type, fitted to a device table.

What nn-Meter does per kernel type, here per op type (``space/op``): the
latency of an op at a shape the table lacks is predicted from the key's shape
arguments plus derived physical features -- MACs, parameters and bytes moved
(:func:`costmodels.analytical.op_costs`, cached per key).  Latency spans four
orders of magnitude across shapes, so every family minimises a *relative*
error: the linear family weights its residuals by 1/latency, the others fit
log(latency).  Which family (``linear``, ``loglinear``, ``forest``,
``boosting``) serves an op type is chosen by cross-validated MAPE on the
training rows only.

A fitted surrogate is saved as data (:mod:`costmodels.persistence`) --
hyper-parameters, the training rows (key, latency, features), the chosen
families, library versions and the table it came from -- and loading refits
from the rows (deterministic: fixed seeds, one thread): no pickle, nothing
executed from the file.  The stored features are validated and kept on the
loaded surrogate, never put into the process-wide cache.  Loading refuses a
file fitted on another device, backend or space.

``predict_key`` raises :class:`KeyError` (a :class:`MissingKeyError`) for an
op type it was not fitted on, so :class:`costmodels.costmodel.CostModel`
reports the key as missing instead of silently skipping it (nn-Meter's
under-count).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from device_tables import DeviceTable, OpKey, parse_key
from device_tables.errors import KeyFormatError, MissingKeyError, TableError
from spaces.errors import HwcostError

from . import persistence
from .persistence import SurrogateVersionWarning

FORMAT = "hwcost-op-surrogate"
SCHEMA_VERSION = 1
FAMILIES = ("linear", "loglinear", "forest", "boosting")   # in order of simplicity (ties go left)
SHAPE_FEATURES = ("batch", "c_in", "c_out", "h", "w", "stride")
DERIVED_FEATURES = ("macs", "params", "activation_bytes", "in_bytes", "out_bytes", "strided_in_bytes")
# The linear family is physical: latency = a + b*MACs + c*bytes + d*params, all >= 0; a strided
# variant of an op may run another kernel (skip_connect at stride 2 is a FactorizedReduce, a strided
# none copies), so its input bytes get their own coefficient.
LINEAR_FEATURES = ("macs", "activation_bytes", "in_bytes", "out_bytes", "params", "strided_in_bytes")
MIN_CV_ROWS = 4          # fewer rows of an op type: no CV, the linear family
RUNTIME_IDENTITY = ("backend", "execution_provider", "threads", "dtype", "batch")


# ---------------------------------------------------------------------------------------------
# Features


# Derived features of the keys counted in this process (a saved surrogate's are kept on it, not here).
_FEATURES: dict[OpKey, tuple[float, ...]] = {}


def derived_features(key: OpKey) -> tuple[float, ...]:
    """(MACs, params, activation bytes, input bytes, output bytes, input bytes if strided) of ``key``, cached.

    Ops of a registered space are built and counted by ``analytical.op_costs``
    (~0.1 s a key, hence the cache); layers of a PyTorch model (space ``torch``)
    use closed forms from the key.
    """
    if key not in _FEATURES:
        _FEATURES[key] = _count_features(key)
    return _FEATURES[key]


def _count_features(key: OpKey) -> tuple[float, ...]:
    ho, wo = math.ceil(key.h / key.stride), math.ceil(key.w / key.stride)
    in_bytes = 4.0 * key.batch * key.c_in * key.h * key.w
    out_bytes = 4.0 * key.batch * key.c_out * ho * wo
    macs, params, act = _space_costs(key)
    if act is None:
        act = out_bytes
    return float(macs), float(params), float(act), in_bytes, out_bytes, in_bytes if key.stride > 1 else 0.0


def _space_costs(key: OpKey) -> tuple[float, float, float | None]:
    from spaces.registry import get_space
    try:
        known = key.op in get_space(key.space).ops
    except HwcostError:
        known = False
    if known:
        from .analytical import op_costs
        c = op_costs(key.space, key.op, key.c_in, key.c_out, key.h, key.w, key.stride, key.batch,
                     **dict(key.extra))
        return c.macs, c.params, c.activation_bytes
    return _torch_layer_costs(key)


def _size(value: Any) -> float:
    """A kernel size written as ``3`` or ``1x7`` -> its product."""
    if isinstance(value, (int, float)):
        return float(value) ** 2
    try:
        return float(math.prod(int(p) for p in str(value).split("x")))
    except ValueError:
        return 1.0


def _torch_layer_costs(key: OpKey) -> tuple[float, float, float | None]:
    """Closed-form MACs/params of a torch layer key (Conv2d, Linear, BN); 0 for the rest."""
    ex = dict(key.extra)
    ho, wo = math.ceil(key.h / key.stride), math.ceil(key.w / key.stride)
    groups = ex.get("groups", 1) if isinstance(ex.get("groups", 1), int) else 1
    bias = ex.get("bias", 0) if isinstance(ex.get("bias", 0), int) else 0
    if key.op.startswith("Conv"):
        per_out = key.c_in // max(groups, 1) * _size(ex.get("kernel", 1))
        return key.batch * key.c_out * ho * wo * per_out, key.c_out * per_out + bias * key.c_out, None
    if key.op == "Linear":
        return key.batch * key.h * key.c_in * key.c_out, key.c_in * key.c_out + bias * key.c_out, None
    if key.op.startswith("BatchNorm"):
        return 0.0, 2.0 * key.c_in * ex.get("affine", 1), None
    return 0.0, 0.0, None


def _numeric_extras(key: OpKey) -> dict[str, float]:
    out = {}
    for name, value in key.extra:
        if isinstance(value, (int, float)):
            out[f"extra.{name}"] = float(value)
        elif name in ("kernel", "dilation", "padding", "stride"):
            out[f"extra.{name}"] = _size(value)
    return out


def feature_row(key: OpKey, extra_names: Sequence[str], derived: Sequence[float] | None = None) -> list[float]:
    """The feature vector of one key: shape args, numeric extras, derived costs (``derived``, else counted)."""
    extras = _numeric_extras(key)
    return ([float(getattr(key, f)) for f in SHAPE_FEATURES] + [extras.get(n, 0.0) for n in extra_names]
            + list(derived_features(key) if derived is None else derived))


def feature_names(extra_names: Sequence[str]) -> list[str]:
    return list(SHAPE_FEATURES) + list(extra_names) + list(DERIVED_FEATURES)


# ---------------------------------------------------------------------------------------------
# One op type's regressor


class LatencyRegressor(RegressorMixin, BaseEstimator):
    """Latency (ms, > 0) from an op type's feature matrix, with a relative-error objective.

    family :
        ``linear``    latency = a + sum_j b_j x_j over ``linear_columns``, a, b >= 0, fitted by
                      non-negative least squares on residuals / latency (relative error);
        ``loglinear`` ridge regression of log(latency) on log(1 + x) (a power law);
        ``forest``    random forest on log(latency);
        ``boosting``  gradient boosting on log(latency).
    linear_columns : column indices the linear family uses (default: all).
    """

    def __init__(self, family: str = "linear", linear_columns: tuple[int, ...] | None = None,
                 n_estimators: int = 50, random_state: int = 0):
        self.family = family
        self.linear_columns = linear_columns
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, X, y):
        X, y = _check_xy(X, y)
        if self.family not in FAMILIES:
            raise HwcostError(f"LatencyRegressor family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        self.n_features_in_ = X.shape[1]
        if self.family == "linear":
            cols = list(range(X.shape[1]) if self.linear_columns is None else self.linear_columns)
            Z = X[:, cols]
            scale = np.abs(Z).max(axis=0)
            self.columns_, self.scale_ = cols, np.where(scale > 0, scale, 1.0)
            A = np.column_stack([np.ones(len(Z)), Z / self.scale_]) / y[:, None]
            w, _ = nnls(A, np.ones(len(y)))
            self.intercept_, self.coef_ = float(w[0]), w[1:] / self.scale_
            return self
        Z, t = np.log1p(np.maximum(X, 0.0)), np.log(y)
        if self.family == "loglinear":
            self.mean_, std = Z.mean(axis=0), Z.std(axis=0)
            self.std_ = np.where(std > 0, std, 1.0)
            self.model_ = Ridge(alpha=1e-2).fit((Z - self.mean_) / self.std_, t)
        elif self.family == "forest":
            self.model_ = RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.random_state,
                                                n_jobs=1).fit(Z, t)
        else:
            self.model_ = GradientBoostingRegressor(n_estimators=self.n_estimators, learning_rate=0.1, max_depth=3,
                                                    subsample=1.0, random_state=self.random_state).fit(Z, t)
        return self

    def predict(self, X):
        if not hasattr(self, "n_features_in_"):
            raise HwcostError("this LatencyRegressor is not fitted yet; call fit(X, y) first")
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise HwcostError(f"X must have shape (n, {self.n_features_in_}), got {X.shape}")
        if self.family == "linear":
            return self.intercept_ + X[:, self.columns_] @ self.coef_
        Z = np.log1p(np.maximum(X, 0.0))
        if self.family == "loglinear":
            Z = (Z - self.mean_) / self.std_
        return np.exp(self.model_.predict(Z))


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float).ravel()
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise HwcostError(f"X must be a 2-D array with one row per latency; got X {X.shape}, y {y.shape}")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise HwcostError("features must be finite and latencies positive finite numbers of ms")
    return X, y


def _mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred - y_true) / y_true))


# ---------------------------------------------------------------------------------------------
# The surrogate: one regressor per op type


def _as_key(k) -> OpKey:
    if isinstance(k, OpKey):
        return k
    try:
        key = parse_key(k) if isinstance(k, str) else None
    except KeyFormatError as e:
        raise HwcostError(str(e)) from None
    if not isinstance(key, OpKey):
        raise HwcostError(f"an op surrogate takes op keys (OpKey or 'space/op|b..|cin..|...'), got {k!r}")
    return key


def op_type(key: OpKey) -> str:
    return f"{key.space}/{key.op}"


def table_identity(table: DeviceTable | Mapping[str, Any] | None) -> dict[str, Any]:
    """What a surrogate records of the table it was fitted on (and checks on load)."""
    if table is None:
        return {}
    if isinstance(table, Mapping):
        return dict(table)
    return {"source": table.source, "device": table.device.get("name"), "spaces": sorted(table.spaces),
            "created": table.created, "backend_version": table.runtime.get("backend_version"),
            "call_overhead_ms": table.measurement.get("call_overhead_ms"),
            **{k: table.runtime.get(k) for k in RUNTIME_IDENTITY}}


class OpLatencySurrogate(RegressorMixin, BaseEstimator):
    """Predict op latency (ms) from op keys; one :class:`LatencyRegressor` per op type.

    Parameters
    ----------
    family : ``"auto"`` (per op type, the family with the lowest cross-validated
        MAPE on the training rows), one family name for every op type, or a
        ``{"space/op": family}`` dict (how a saved surrogate is refitted).
    families : the candidates ``"auto"`` chooses among.
    cv : folds of the cross-validation (fewer when an op type has fewer rows).
    n_estimators, random_state : of the tree families (fixed: refits are deterministic).

    Fitted attributes: ``regressors_`` and ``selected_`` (op type -> estimator /
    family), ``cv_mape_`` (op type -> family -> CV MAPE), ``extra_names_``,
    ``train_keys_``, ``train_latency_ms_``, ``table_`` (the table's identity).
    """

    def __init__(self, family: str | Mapping[str, str] = "auto", families: tuple[str, ...] = FAMILIES,
                 cv: int = 5, n_estimators: int = 50, random_state: int = 0):
        self.family = family
        self.families = families
        self.cv = cv
        self.n_estimators = n_estimators
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X: Iterable, y, *, table: DeviceTable | Mapping[str, Any] | None = None):
        """Fit on op keys ``X`` (OpKey or key strings) and their latencies ``y`` in ms."""
        keys = [_as_key(k) for k in X]
        y = np.asarray(y, dtype=float).ravel()
        if len(keys) != len(y) or not keys:
            raise HwcostError(f"got {len(keys)} keys and {len(y)} latencies; give one latency (ms) per key")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise HwcostError("latencies must be positive finite numbers of ms")
        if len(set(keys)) != len(keys):
            raise HwcostError("a key is given twice; give each key once")
        bad = [f for f in ([self.family] if isinstance(self.family, str) else self.family.values())
               if f != "auto" and f not in FAMILIES] + [f for f in self.families if f not in FAMILIES]
        if bad:
            raise HwcostError(f"unknown surrogate family {bad[0]!r}; known: auto, {', '.join(FAMILIES)}")
        groups: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            groups[op_type(k)].append(i)
        self.regressors_, self.selected_, self.cv_mape_, self.extra_names_ = {}, {}, {}, {}
        for t in sorted(groups):
            idx = groups[t]
            names = sorted({n for i in idx for n in _numeric_extras(keys[i])})
            self.extra_names_[t] = names
            F = np.array([feature_row(keys[i], names, self._derived(keys[i])) for i in idx])
            family = self._family_for(t, F, y[idx])
            self.selected_[t] = family
            self.regressors_[t] = self._regressor(family, names).fit(F, y[idx])
        self.train_keys_ = keys
        self.train_latency_ms_ = y.copy()
        self.table_ = table_identity(table)
        return self

    def _derived(self, key: OpKey) -> tuple[float, ...] | None:
        """The derived features a loaded file stored for ``key`` (validated, kept on this object), if any."""
        return getattr(self, "stored_features_", {}).get(key)

    def _regressor(self, family: str, extra_names: Sequence[str]) -> LatencyRegressor:
        names = feature_names(extra_names)
        cols = tuple(names.index(f) for f in LINEAR_FEATURES)
        return LatencyRegressor(family, cols, self.n_estimators, self.random_state)

    def _family_for(self, t: str, F: np.ndarray, y: np.ndarray) -> str:
        if isinstance(self.family, Mapping):
            if t not in self.family:
                raise HwcostError(f"family has no entry for op type {t!r}")
            return self.family[t]
        if self.family != "auto":
            return self.family
        if len(y) < MIN_CV_ROWS or len(self.families) == 1:
            self.cv_mape_[t] = {}
            return "linear" if "linear" in self.families else self.families[0]
        folds = list(KFold(min(self.cv, len(y)), shuffle=True, random_state=self.random_state).split(F))
        scores = {}
        for fam in self.families:
            errs = []
            for tr, te in folds:
                reg = self._regressor(fam, self.extra_names_[t]).fit(F[tr], y[tr])
                errs.extend(np.abs(reg.predict(F[te]) - y[te]) / y[te])
            scores[fam] = float(np.mean(errs))
        self.cv_mape_[t] = scores
        best = min(scores.values())
        return next(f for f in FAMILIES if f in scores and scores[f] <= best * (1 + 1e-9))

    # -------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "regressors_"):
            raise HwcostError("this OpLatencySurrogate is not fitted yet; call fit(keys, latency_ms) first")

    @property
    def op_types(self) -> list[str]:
        self._check_fitted()
        return sorted(self.regressors_)

    def predict_key(self, key: OpKey) -> float:
        """Latency in ms of one key; ``MissingKeyError`` (a KeyError) for an op type not fitted on."""
        self._check_fitted()
        key = _as_key(key)
        t = op_type(key)
        if t not in self.regressors_:
            raise MissingKeyError(f"the surrogate has no model for op type {t} (key {key.to_str()}); it was "
                                  f"fitted on {', '.join(self.regressors_)}")
        row = np.array([feature_row(key, self.extra_names_[t], self._derived(key))])
        return float(max(self.regressors_[t].predict(row)[0], 1e-6))

    def predict(self, X: Iterable) -> np.ndarray:
        """Latency in ms, one per key (an unknown op type raises, never a silent 0)."""
        return np.array([self.predict_key(k) for k in X])

    # ------------------------------------------------------------ save/load
    def to_json(self) -> str:
        """Everything needed to rebuild the fitted surrogate, as JSON text (no pickle)."""
        return persistence.dumps(self._document())

    def save(self, path: str | Path) -> None:
        """Write the surrogate to ``path`` atomically (an interrupted save leaves the old file)."""
        persistence.save(path, self._document())

    def _document(self) -> dict:
        self._check_fitted()
        return persistence.document(
            FORMAT, SCHEMA_VERSION,
            params={"families": list(self.families), "cv": self.cv, "n_estimators": self.n_estimators,
                    "random_state": self.random_state, "family": self.family},
            table=self.table_,
            spaces=sorted({k.space for k in self.train_keys_}),
            train=[{"key": k.to_str(), "latency_ms": float(v),
                    "features": dict(zip(DERIVED_FEATURES, self._derived(k) or derived_features(k)))}
                   for k, v in zip(self.train_keys_, self.train_latency_ms_)],
            # checked on load: a refit must reproduce these
            fitted={"selected": self.selected_, "cv_mape": self.cv_mape_,
                    "train_predictions_ms": self.predict(self.train_keys_).tolist()})

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "OpLatencySurrogate":
        """Rebuild by refitting on the stored rows with the stored families (no CV)."""
        return cls._from_doc(persistence.parse(text, source, FORMAT, SCHEMA_VERSION), source)

    @classmethod
    def _from_doc(cls, doc: dict, source: str) -> "OpLatencySurrogate":
        def field(d, name, kind, where=""):
            return persistence.field(d, name, kind, source, where)

        params, fitted = field(doc, "params", dict), field(doc, "fitted", dict)
        rows = field(doc, "train", list)
        keys, lat, features = [], [], {}
        for i, r in enumerate(rows):
            where = f"train[{i}]."
            try:
                key = _as_key(field(r, "key", str, where))
            except HwcostError as e:
                raise HwcostError(f"surrogate {source}: {where}key: {e}") from None
            lat.append(field(r, "latency_ms", (int, float), where))
            stored = field(r, "features", dict, where)
            unknown = sorted(set(stored) - set(DERIVED_FEATURES))
            if unknown:
                raise HwcostError(f"surrogate {source}: {where}features: unknown feature(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(DERIVED_FEATURES)}")
            values = [field(stored, f, (int, float), f"{where}features.") for f in DERIVED_FEATURES]
            if any(v < 0 for v in values):
                raise HwcostError(f"surrogate {source}: {where}features: a cost feature is negative ({values})")
            keys.append(key)
            features[key] = tuple(float(v) for v in values)
        selected = field(fitted, "selected", dict, "fitted.")
        est = cls(family=dict(selected), families=tuple(field(params, "families", list, "params.")),
                  cv=field(params, "cv", int, "params."), n_estimators=field(params, "n_estimators", int, "params."),
                  random_state=field(params, "random_state", int, "params."))
        est.stored_features_ = features   # features are a function of the key: reuse, don't recount
        table = doc.get("table") or {}
        if not isinstance(table, dict):
            raise HwcostError(f"surrogate {source}: field 'table' must be an object")
        try:
            est.fit(keys, lat, table=table)
        except HwcostError as e:
            raise HwcostError(f"surrogate {source}: {e}") from None
        cv_mape = fitted.get("cv_mape", {})
        est.cv_mape_ = cv_mape if isinstance(cv_mape, dict) else {}
        est.family = params.get("family", "auto")   # the hyper-parameter the user chose
        persistence.check_refit(source, fitted.get("train_predictions_ms"), est.predict(keys))
        return est


# ---------------------------------------------------------------------------------------------
# Loading, checking against a table


def check_table(surrogate: OpLatencySurrogate, table: DeviceTable, source: str = "surrogate") -> None:
    """Refuse a surrogate fitted on another device, runtime or space than ``table``."""
    mine = surrogate.table_
    theirs = table_identity(table)
    where = table.source or "the table"
    diff = [f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in ("device", *RUNTIME_IDENTITY)
            if k in mine and mine.get(k) != theirs.get(k)]
    if diff:
        raise TableError(f"{source} was fitted on a table of another device/runtime than {where}: "
                         f"{'; '.join(diff)}; fit one on this table (hwcost fit {where} --out S.json)")
    spaces = sorted({k.space for k in surrogate.train_keys_})
    missing = [s for s in spaces if s not in table.spaces]
    if missing:
        raise TableError(f"{source} was fitted on space(s) {', '.join(spaces)}, but {where} holds "
                         f"{', '.join(table.spaces)}")
    if mine.get("created") not in (None, theirs.get("created")):
        warnings.warn(f"{source} was fitted on a table of the same device and runtime measured at "
                      f"{mine.get('created')}; {where} was measured at {theirs.get('created')}",
                      SurrogateVersionWarning, stacklevel=3)


def load_surrogate(path: str | Path, table: DeviceTable | None = None,
                   space: str | None = None) -> OpLatencySurrogate:
    """Load an op-level surrogate file; with ``table``/``space``, check it was fitted on them."""
    path = Path(path)
    est = OpLatencySurrogate._from_doc(persistence.read(path, FORMAT, SCHEMA_VERSION), str(path))
    if table is not None:
        check_table(est, table, source=f"surrogate {path}")
    if space is not None and space not in {k.space for k in est.train_keys_}:
        raise HwcostError(f"surrogate {path} was fitted on space(s) "
                          f"{', '.join(sorted({k.space for k in est.train_keys_}))}, not {space!r}")
    return est


# ---------------------------------------------------------------------------------------------
# hwcost fit for op-level tables


def accuracy(y_true, y_pred) -> dict[str, float]:
    """MAPE, WAPE (absolute error / total: what the errors weigh in a sum), RMSE (ms) and the
    share within +-5 % and +-10 % (the field's figures)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    rel = np.abs(y_pred - y_true) / y_true
    return {"mape": float(rel.mean()), "wape": float(np.abs(y_pred - y_true).sum() / y_true.sum()),
            "rmse_ms": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
            "within_5": float(np.mean(rel <= 0.05)), "within_10": float(np.mean(rel <= 0.10))}


def share_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share of ``k`` hits in ``n`` (e.g. the networks predicted within
    +-10 %): what that share says of the rate on networks not scored. 15 of 16 (94 %) is 72-99 % at
    95 %: a zoo of 16 models cannot tell 94 % from a 95 % target."""
    from statistics import NormalDist
    if n <= 0 or not 0 <= k <= n:
        raise HwcostError(f"a share needs 0 <= hits <= n and n > 0 (got {k} of {n})")
    if not 0 < confidence < 1:
        raise HwcostError(f"confidence must lie in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def within_text(share: float, n: int, confidence: float = 0.95) -> str:
    """``share`` of ``n`` as "94% (15/16; 95% CI 72-99%)" -- the count and its Wilson interval."""
    k = round(share * n)
    lo, hi = share_interval(k, n, confidence)
    return f"{share:.0%} ({k}/{n}; {confidence:.0%} CI {lo:.0%}-{hi:.0%})"


def fit_op_table(table: DeviceTable, out: str | Path, seed: int = 0, fraction: float = 0.2) -> dict:
    """Fit per-op-type surrogates to an op-level table, score them on held-out keys, save.

    20 % of the keys of every op type with >= 5 keys are held out; the families
    are chosen and fitted on the rest; the held-out keys are scored (MAPE, RMSE,
    share within +-5 % / +-10 %, overall and per op type); then the surrogate is
    refitted on every key and saved to ``out`` (JSON).
    """
    if table.kind != "op":
        raise HwcostError(f"fit_op_table needs an op-level table; {table.source or 'this table'} is {table.kind}-level")
    keys = [e.key for e in table.entries]
    y = np.array([e.median_ms for e in table.entries])
    if len(keys) < 2:
        raise HwcostError(f"table {table.source} has {len(keys)} entries; a surrogate needs at least 2")
    tr, te = persistence.holdout_split([op_type(k) for k in keys],   # stratified: op types of >= 5 keys
                                       lambda n: max(1, round(fraction * n)) if n >= 5 else 0, seed)
    est = OpLatencySurrogate(random_state=seed).fit([keys[i] for i in tr], y[tr], table=table)
    report: dict[str, Any] = {"surrogate": str(out), "device": table.device.get("name"),
                              "backend": table.runtime.get("backend"), "keys": len(keys),
                              "op_types": len({op_type(k) for k in keys}), "n_train": len(tr), "n_test": len(te)}
    per_op: dict[str, dict] = {}
    if te:
        pred = est.predict([keys[i] for i in te])
        acc = accuracy(y[te], pred)
        report.update({f"heldout_{k}": v for k, v in acc.items()})
        by: dict[str, list[int]] = defaultdict(list)
        for j, i in enumerate(te):
            by[op_type(keys[i])].append(j)
        for t, js in sorted(by.items()):
            a = accuracy(y[te][js], pred[js])
            per_op[t] = {"n_test": len(js), "family": est.selected_[t],
                         "mape": round(a["mape"], 4), "within_5": round(a["within_5"], 4),
                         "within_10": round(a["within_10"], 4)}
    else:
        report["heldout"] = "none: no op type has 5 keys or more"
    final = OpLatencySurrogate(random_state=seed).fit(keys, y, table=table)
    for t in final.op_types:
        per_op.setdefault(t, {"n_test": 0, "family": final.selected_[t]})["family"] = final.selected_[t]
    report["per_op"] = per_op
    report["seed"] = seed
    final.save(out)
    return report


__all__ = ["OpLatencySurrogate", "LatencyRegressor", "SurrogateVersionWarning", "FAMILIES", "accuracy",
           "check_table", "derived_features", "feature_row", "fit_op_table", "load_surrogate", "op_type",
           "table_identity"]
