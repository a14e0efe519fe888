"""How every latency surrogate is saved and read back: one format, one reader, one version policy.

Op-level (:mod:`costmodels.surrogate`) and architecture-level
(:mod:`costmodels.arch_surrogate`) surrogates are saved as one JSON document::

    {"format": "hwcost-...-surrogate", "schema_version": N,
     "versions": {"numpy": ..., "scikit-learn": ..., "scipy": ..., "python": ...},
     "params": ..., "table": ..., "train": ..., "fitted": ...}

holding hyper-parameters and training rows -- data, no pickle, nothing
executed -- and loading refits from the rows.

* **Save** is atomic (:func:`save`): an interrupted write leaves the old file.
* **Read** is strict (:func:`read`, :func:`parse`): the table layer's JSON
  reader (no NaN/Infinity), typed fields (:func:`field`, :func:`numbers`), one
  :class:`HwcostError` naming the file and the field. What a file holds is kept
  on the loaded object, never written into process-wide state.
* **Versions**: another *major* version of numpy, scikit-learn or scipy than
  the file was fitted with is an error (refit it); another *minor* version is a
  :class:`SurrogateVersionWarning`, and so is a refit that does not reproduce
  the predictions the file saved (:func:`check_refit`). One warning class for
  every surrogate, so catching it catches them all.

:func:`holdout_split` is the one train / held-out split the surrogates' fit
reports use.
"""
from __future__ import annotations

import json
import platform
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import scipy
import sklearn

from device_tables._io import atomic_write, loads_strict, typed_field
from device_tables.errors import TableError
from spaces.errors import HwcostError

# every surrogate format, and what to load it with (named when a file is given to the other loader)
FORMATS = {"hwcost-op-surrogate": "an op surrogate: use costmodels.surrogate.load_surrogate",
           "hwcost-arch-surrogate": "an architecture surrogate: use costmodels.arch_surrogate"}
FITTING_LIBRARIES = ("numpy", "scikit-learn", "scipy")


class SurrogateVersionWarning(UserWarning):
    """A saved surrogate was fitted with other library versions, its refit does not reproduce
    the saved predictions, or it was fitted on another measurement of the same device."""


def library_versions() -> dict[str, str]:
    return {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}


def document(fmt: str, schema_version: int, **body: Any) -> dict:
    """A surrogate file's document: the header (format, schema version, library versions) and ``body``."""
    return {"format": fmt, "schema_version": schema_version, **body, "versions": library_versions()}


def dumps(doc: Mapping[str, Any]) -> str:
    """JSON text of a document; a non-finite number is refused (the reader would refuse it too)."""
    try:
        return json.dumps(doc, indent=1, default=str, allow_nan=False)  # provenance values become text
    except ValueError as e:
        raise HwcostError(f"cannot save the surrogate: {e}") from None


def save(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically: a crash or an error leaves the old file, never half a new one."""
    atomic_write(Path(path), (dumps(doc) + "\n").encode("utf-8"))


def read(path: str | Path, fmt: str, schema_version: int) -> dict:
    """Read and check a surrogate file (format, schema version, library versions)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HwcostError(f"cannot read surrogate file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HwcostError(f"surrogate {path}: not a JSON surrogate file (not UTF-8 text, byte {e.start})") from None
    return parse(text, str(path), fmt, schema_version)


def parse(text: str, source: str, fmt: str, schema_version: int) -> dict:
    """The document of a surrogate file's text, strictly read; its format, schema version and library
    versions checked (:func:`check_versions`)."""
    try:
        doc = loads_strict(text)
    except TableError as e:
        raise HwcostError(f"surrogate {source}: not a JSON surrogate file ({e})") from None
    got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
    if got != fmt:
        hint = f" ({FORMATS[got]})" if isinstance(got, str) and got in FORMATS else ""
        raise HwcostError(f"surrogate {source}: format is {got!r}, expected {fmt!r}{hint}")
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= schema_version:
        raise HwcostError(f"surrogate {source}: schema_version {version!r} is not supported (this hwcost reads "
                          f"1 to {schema_version}); upgrade hwcost or refit with hwcost fit")
    check_versions(field(doc, "versions", dict, source), source)
    return doc


def field(d: Any, name: str, kind: type | tuple[type, ...], source: str, where: str = "") -> Any:
    """``d[name]``, which must be a ``kind`` (a bool is no number); else one error naming the field."""
    try:
        return typed_field(d, name, kind, label=f"{where}{name!r}")
    except TableError as e:
        raise HwcostError(f"surrogate {source}: {e}") from None


def numbers(values: Any, source: str, where: str) -> list[float]:
    """A list of numbers (finite: the reader refuses NaN and Infinity) as floats."""
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise HwcostError(f"surrogate {source}: field {where} must be a list of numbers")
    return [float(v) for v in values]


def _major_minor(v: Any) -> tuple[str, str]:
    parts = (str(v).split(".") + ["?", "?"])[:2]
    return parts[0], parts[1]


def check_versions(saved: Mapping[str, Any], source: str) -> None:
    """Another major version of a fitting library is an error; another minor one a warning."""
    mine = library_versions()
    for lib in FITTING_LIBRARIES:
        theirs = str(saved.get(lib, "?"))
        (M1, m1), (M2, m2) = _major_minor(theirs), _major_minor(mine[lib])
        if M1 != M2:
            raise HwcostError(f"surrogate {source} was fitted with {lib} {theirs}, this is {lib} {mine[lib]}: "
                              f"another major version may fit differently; refit it (hwcost fit TABLE --out FILE)")
        if m1 != m2:
            warnings.warn(f"surrogate {source}: fitted with {lib} {theirs}, running {mine[lib]}; refitted from "
                          f"its stored rows", SurrogateVersionWarning, stacklevel=4)


def check_refit(source: str, saved: Any, now: np.ndarray) -> None:
    """Warn when the refit's predictions on the training rows are not the ones the file saved."""
    if saved is None:
        return
    saved = np.asarray(numbers(saved, source, "fitted.train_predictions_ms"))
    if saved.shape != now.shape:
        raise HwcostError(f"surrogate {source}: fitted.train_predictions_ms has {len(saved)} values for "
                          f"{len(now)} training rows")
    if not np.allclose(now, saved, rtol=1e-6, atol=1e-9):
        rel = float(np.max(np.abs(now - saved) / np.maximum(np.abs(saved), 1e-9)))
        warnings.warn(f"surrogate {source}: the refit differs from the saved predictions on its training rows "
                      f"by up to {rel:.2%} (other library versions?)", SurrogateVersionWarning, stacklevel=3)


def holdout_split(groups: Sequence[Hashable], n_held_out: Callable[[int], int],
                  seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices, sorted. Rows are grouped by ``groups[i]`` (one group: a plain
    random split; op types: a stratified one); one generator seeded with ``seed`` permutes each
    group in sorted order, and the last ``n_held_out(len(group))`` rows of its permutation are held out."""
    rng = np.random.default_rng(seed)
    by: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    train, test = [], []
    for g in sorted(by):
        idx = np.array(by[g])
        perm = rng.permutation(len(idx))
        n_train = len(idx) - n_held_out(len(idx))
        train.extend(idx[perm[:n_train]].tolist())
        test.extend(idx[perm[n_train:]].tolist())
    return sorted(train), sorted(test)


__all__ = ["SurrogateVersionWarning", "FORMATS", "check_refit", "check_versions", "document", "dumps", "field",
           "holdout_split", "library_versions", "numbers", "parse", "read", "save"]
