"""Architecture-level latency surrogates: from N measured NB201 cells, predict the rest.

The model is physical: a network's latency is a fixed cost plus the sum of the
costs of the ops its runtime executes, so a linear fit on per-op counts with
non-negative costs (NNLS) needs few rows.  What differs between devices is
*which* edges execute (``arch_features`` docstring): every edge on an eager
runtime, only edges feeding the output on a compiler that removes dead code.
With ``model="auto"`` the training rows decide, by cross-validated squared
error over a fixed list of recipes (feature set, regressor); nothing outside
the training rows is looked at.

A fitted surrogate is saved as data (:mod:`costmodels.persistence`) --
hyper-parameters, the training rows, library versions and the table's
provenance -- and loading refits from the rows, which is deterministic: no
pickle, nothing executed from the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import nnls
from scipy.stats import kendalltau, spearmanr
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, LeaveOneOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spaces.errors import HwcostError

from . import persistence
from .arch_features import (FEATURE_SETS, FREE_SIGN_COLUMNS, OpCost, canonical, feature_names,
                            featurize, op_cost_table)
from .persistence import SurrogateVersionWarning, library_versions

FORMAT = "hwcost-arch-surrogate"
SCHEMA_VERSION = 1
MODELS = ("auto", "nnls", "ridge")
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
MIN_ROWS = 3
LOO_MAX_ROWS = 50      # leave-one-out up to this many rows, 10-fold above


class NonNegativeLinear(RegressorMixin, BaseEstimator):
    """``y = b + X w`` with ``w >= 0``: a fixed cost plus non-negative per-op costs.

    ``free_sign`` lists column indices whose weight may be negative (e.g. the
    ``disconnected`` indicator: a network that folds to a constant is faster).
    The intercept is free.  Columns are scaled internally for conditioning.
    """

    def __init__(self, free_sign: tuple[int, ...] = ()):
        self.free_sign = free_sign

    def _design(self, X: np.ndarray) -> np.ndarray:
        Z = X / self.scale_
        free = list(self.free_sign)
        return np.column_stack([np.ones(len(Z)), -np.ones(len(Z)), Z, -Z[:, free]])

    def fit(self, X, y):
        X, y = np.asarray(X, float), np.asarray(y, float)
        scale = np.abs(X).max(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        w, _ = nnls(self._design(X), y)
        p, free = X.shape[1], list(self.free_sign)
        coef = w[2:2 + p].copy()
        coef[free] -= w[2 + p:]
        self.coef_ = coef / self.scale_
        self.intercept_ = float(w[0] - w[1])
        return self

    def predict(self, X):
        return np.asarray(X, float) @ self.coef_ + self.intercept_


def _regressor(model: str, features: str):
    if model == "nnls":
        names = feature_names(features)
        return NonNegativeLinear(tuple(i for i, n in enumerate(names) if n in FREE_SIGN_COLUMNS))
    if model == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    raise HwcostError(f"unknown model {model!r}; known: {', '.join(MODELS)}")


def _n_params(features: str, model: str) -> int:
    """Fitted numbers: one weight per column plus the intercept."""
    return len(feature_names(features)) + 1


def _complexity(features: str, model: str) -> int:
    """Per-op cost columns: what the one-standard-error rule counts.  The free-sign
    ``disconnected`` flag is not one, so ``present`` and ``pruned`` -- the eager
    and the dead-code-eliminating hypothesis -- compete on CV error alone."""
    return sum(n not in FREE_SIGN_COLUMNS for n in feature_names(features))


def _eligible(n: int, features: str, model: str) -> bool:
    """Fixed rule by N, so small samples only try small models: NNLS needs more rows
    than fitted numbers, ridge twice as many (its alpha search is unreliable below)."""
    p = _n_params(features, model)
    return n >= p + 1 if model == "nnls" else n >= 2 * p


def candidate_recipes(features: str, model: str, with_prior: bool = False) -> list[tuple[str, str]]:
    """The (feature set, regressor) pairs ``model="auto"`` chooses among.

    ``structural`` means any of the structural sets: the eager hypothesis
    (``present``), the dead-code-eliminating one (``pruned``), both, and both
    plus graph statistics under ridge; with an op-level table also the table's
    sum over either edge set (``prior_all``, ``prior_pruned``: one cost column each).
    """
    if features not in FEATURE_SETS:
        raise HwcostError(f"unknown feature set {features!r}; known: {', '.join(FEATURE_SETS)}")
    if model not in MODELS:
        raise HwcostError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if model != "auto":
        return [(features, model)]
    if features == "structural":
        recipes = [("present", "nnls"), ("pruned", "nnls"), ("counts", "nnls"), ("structural", "ridge")]
        return recipes + ([("prior_all", "nnls"), ("prior_pruned", "nnls")] if with_prior else [])
    if features == "onehot":
        return [("onehot", "ridge")]
    return [(features, "nnls"), (features, "ridge")]


def _cv_folds(n: int) -> list:
    if n <= LOO_MAX_ROWS:
        return list(LeaveOneOut().split(np.zeros(n)))
    return list(KFold(10, shuffle=True, random_state=0).split(np.zeros(n)))


def _cv_errors(X: np.ndarray, y: np.ndarray, features: str, model: str, folds) -> np.ndarray:
    """Out-of-fold squared error of every training row."""
    pred = np.empty_like(y)
    for tr, te in folds:
        pred[te] = _regressor(model, features).fit(X[tr], y[tr]).predict(X[te])
    return (pred - y) ** 2


def _as_arch_strings(archs: Iterable) -> list[str]:
    if isinstance(archs, str):
        raise HwcostError("archs must be a list of NB201 architecture strings, got a single string")
    if isinstance(archs, np.ndarray) and archs.ndim == 2 and archs.shape[1] == 1:
        archs = archs.ravel()
    return [canonical(a) for a in archs]


def _op_cost_to_json(op_cost: OpCost | None) -> list | None:
    if op_cost is None:
        return None
    return [[op, c, hw, v] for (op, c, hw), v in sorted(op_cost_table(op_cost).items())]


class ArchLatencySurrogate(RegressorMixin, BaseEstimator):
    """Predict the latency of NB201 architectures from a few measured ones.

    Parameters
    ----------
    features : a name in ``arch_features.FEATURE_SETS``.  ``"structural"`` (the
        default) lets ``model="auto"`` choose among the structural sets;
        ``"onehot"`` with ``model="ridge"`` is the usual baseline.
    model : ``"auto"`` (cross-validated choice on the training rows),
        ``"nnls"`` (non-negative per-op costs) or ``"ridge"``.
    op_cost : optional op-level knowledge, ``op_cost(op, C, H) -> ms`` or a
        ``{(op, C, H): ms}`` dict; it adds the ``prior_*`` recipes (table latency
        summed over the executed edges, fitted with a scale and an offset).

    Fitted attributes end in ``_``: ``selected_`` (the recipe used),
    ``cv_mse_`` (each candidate's CV error, ms^2), ``estimator_``,
    ``train_archs_``, ``train_latency_ms_``, ``table_`` (provenance).
    """

    def __init__(self, features: str = "structural", model: str = "auto", op_cost: OpCost | None = None):
        self.features = features
        self.model = model
        self.op_cost = op_cost

    # ------------------------------------------------------------ fit/predict
    def fit(self, archs: Sequence[str], latency_ms, *, table: Mapping[str, Any] | None = None):
        """Fit on measured rows; ``table`` records where they came from (name, device, ...)."""
        strings = _as_arch_strings(archs)
        y = np.asarray(latency_ms, dtype=float).ravel()
        if len(strings) != len(y):
            raise HwcostError(f"got {len(strings)} architectures but {len(y)} latencies; "
                              f"give one latency (ms) per architecture")
        if len(y) < MIN_ROWS:
            raise HwcostError(f"need at least {MIN_ROWS} measured architectures to fit, got {len(y)}")
        if not np.all(np.isfinite(y)) or np.any(y < 0):
            raise HwcostError("latencies must be finite and non-negative (ms); "
                              f"found {y[~np.isfinite(y) | (y < 0)][:3].tolist()}")
        recipes = candidate_recipes(self.features, self.model, with_prior=self.op_cost is not None)
        # a callable is evaluated once, at the 15 (op, C, H) an NB201 edge occurs at: that is what is saved
        self.op_cost_table_ = op_cost_table(self.op_cost) if self.op_cost is not None else None
        X = {f: featurize(strings, f, self._op_cost()) for f in {f for f, _ in recipes}}
        if len(recipes) == 1:
            self.cv_mse_ = {}
            chosen = recipes[0]
        else:
            eligible = [r for r in recipes if _eligible(len(y), *r)]
            if not eligible:  # fewer rows than any candidate wants: the smallest one
                eligible = [min(recipes, key=lambda r: _n_params(*r))]
            chosen = self._select(eligible, X, y)
        self.selected_ = {"features": chosen[0], "model": chosen[1]}
        self.feature_names_ = feature_names(chosen[0])
        self.estimator_ = _regressor(chosen[1], chosen[0]).fit(X[chosen[0]], y)
        self.train_archs_ = strings
        self.train_latency_ms_ = y.copy()
        self.table_ = dict(table) if table else {}
        self.n_train_ = len(y)
        return self

    def _select(self, recipes: list[tuple[str, str]], X: dict, y: np.ndarray) -> tuple[str, str]:
        """One-standard-error rule: among the recipes whose CV error is within one
        standard error of the best, the lowest CV error of the least complex ones."""
        folds = _cv_folds(len(y))
        errs = {r: _cv_errors(X[r[0]], y, r[0], r[1], folds) for r in recipes}
        self.cv_mse_ = {f"{f}/{m}": float(e.mean()) for (f, m), e in errs.items()}
        best = min(recipes, key=lambda r: errs[r].mean())
        bound = errs[best].mean() + errs[best].std(ddof=1) / np.sqrt(len(y))
        within = [r for r in recipes if errs[r].mean() <= bound]
        least = min(_complexity(*r) for r in within)
        return min((r for r in within if _complexity(*r) == least), key=lambda r: errs[r].mean())

    def _op_cost(self):
        table = getattr(self, "op_cost_table_", None)
        return table if table is not None else self.op_cost

    def predict(self, archs: Sequence[str]) -> np.ndarray:
        """Predicted latency in ms, one per architecture."""
        if not hasattr(self, "estimator_"):
            raise HwcostError("this ArchLatencySurrogate is not fitted yet; "
                              "call fit(archs, latency_ms) first")
        X = featurize(_as_arch_strings(archs), self.selected_["features"], self._op_cost())
        return self.estimator_.predict(X)

    def score_ranking(self, archs: Sequence[str], latency_ms) -> dict[str, float]:
        """Spearman rho and Kendall tau of the predictions against measured latencies."""
        return _rank_scores(np.asarray(latency_ms, float), self.predict(archs))

    # ------------------------------------------------------------- save/load
    def to_json(self) -> str:
        """Everything needed to rebuild the fitted surrogate, as JSON text (no pickle)."""
        return persistence.dumps(self._document())

    def save(self, path: str | Path) -> None:
        """Write the surrogate to ``path`` atomically (an interrupted save leaves the old file)."""
        persistence.save(path, self._document())

    def _document(self) -> dict:
        if not hasattr(self, "estimator_"):
            raise HwcostError("fit the surrogate before saving it; an unfitted one has no rows to store")
        return persistence.document(
            FORMAT, SCHEMA_VERSION,
            params={"features": self.features, "model": self.model, "op_cost": _op_cost_to_json(self._op_cost())},
            table=self.table_,
            train={"archs": self.train_archs_, "latency_ms": self.train_latency_ms_.tolist()},
            # informative, and checked on load: a refit must reproduce these
            fitted={"selected": self.selected_, "cv_mse": self.cv_mse_,
                    "train_predictions_ms": self.predict(self.train_archs_).tolist()})

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "ArchLatencySurrogate":
        """Rebuild by refitting on the stored rows (library versions checked: see :mod:`costmodels.persistence`)."""
        return cls._from_doc(persistence.parse(text, source, FORMAT, SCHEMA_VERSION), source)

    @classmethod
    def load(cls, path: str | Path) -> "ArchLatencySurrogate":
        return cls._from_doc(persistence.read(path, FORMAT, SCHEMA_VERSION), str(path))

    @classmethod
    def _from_doc(cls, doc: dict, source: str) -> "ArchLatencySurrogate":
        params = persistence.field(doc, "params", dict, source)
        train = persistence.field(doc, "train", dict, source)
        archs = persistence.field(train, "archs", list, source, "train.")
        lat = persistence.numbers(persistence.field(train, "latency_ms", list, source, "train."), source,
                                  "train.latency_ms")
        op_cost = params.get("op_cost")
        if op_cost is not None:
            try:
                op_cost = {(str(op), int(c), int(hw)): float(v) for op, c, hw, v in op_cost}
            except (TypeError, ValueError):
                raise HwcostError(f"surrogate {source}: field params.op_cost must be a list of "
                                  f"[op, C, H, cost]") from None
        table = doc.get("table") or {}
        if not isinstance(table, dict):
            raise HwcostError(f"surrogate {source}: field 'table' must be an object")
        est = cls(features=persistence.field(params, "features", str, source, "params."),
                  model=persistence.field(params, "model", str, source, "params."), op_cost=op_cost)
        try:
            est.fit(archs, lat, table=table)
        except HwcostError as e:
            raise HwcostError(f"surrogate {source}: {e}") from None
        fitted = doc.get("fitted") if isinstance(doc.get("fitted"), dict) else {}
        saved = fitted.get("selected")
        if saved is not None and saved != est.selected_:
            warnings.warn(f"surrogate {source}: refitting chose {est.selected_}, the saved surrogate used {saved}",
                          SurrogateVersionWarning, stacklevel=3)
        else:
            persistence.check_refit(source, fitted.get("train_predictions_ms"), est.predict(est.train_archs_))
        return est


# ------------------------------------------------------------------ evaluation

def _rank_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"spearman": float(spearmanr(y_pred, y_true)[0]),
            "kendall": float(kendalltau(y_pred, y_true)[0])}


def fit_holdout(all_archs: Sequence[str], all_latency, n_samples: int, seed: int, *,
                features: str = "structural", model: str = "auto", op_cost: OpCost | None = None,
                table: Mapping[str, Any] | None = None) -> tuple[ArchLatencySurrogate, dict]:
    """Fit on ``n_samples`` random rows of a table, score ranking on all the others.

    Returns the fitted surrogate (to save) and a JSON-ready dict: ``spearman``,
    ``kendall`` (on the held-out rows), ``n_train``, ``n_test``, ``seed`` and the
    recipe ``model="auto"`` selected, from the training rows only.
    """
    archs = list(all_archs)
    y = np.asarray(all_latency, dtype=float).ravel()
    if len(archs) != len(y):
        raise HwcostError(f"got {len(archs)} architectures but {len(y)} latencies")
    if not MIN_ROWS <= n_samples <= len(y) - 2:
        raise HwcostError(f"--samples must be between {MIN_ROWS} and {len(y) - 2} for a table of "
                          f"{len(y)} architectures, got {n_samples}")
    tr, te = persistence.holdout_split([0] * len(y), lambda n: n - n_samples, seed)   # n_samples random rows
    est = ArchLatencySurrogate(features=features, model=model, op_cost=op_cost)
    est.fit([archs[i] for i in tr], y[tr], table=table)
    scores = _rank_scores(y[te], est.predict([archs[i] for i in te]))
    return est, {**scores, "n_train": int(len(tr)), "n_test": int(len(te)), "seed": int(seed),
                 "selected": f"{est.selected_['features']}/{est.selected_['model']}"}


def evaluate_holdout(all_archs: Sequence[str], all_latency, n_samples: int, seed: int, *,
                     features: str = "structural", model: str = "auto",
                     op_cost: OpCost | None = None) -> dict:
    """``fit_holdout``'s scores only: spearman, kendall, n_train, n_test, seed, selected."""
    return fit_holdout(all_archs, all_latency, n_samples, seed, features=features, model=model,
                       op_cost=op_cost)[1]


__all__ = ["ArchLatencySurrogate", "NonNegativeLinear", "SurrogateVersionWarning", "candidate_recipes",
           "evaluate_holdout", "fit_holdout", "library_versions"]
