"""The device table: measured (or imported) latencies for keys on one device/runtime.

A table is a JSON file (optionally gzip-compressed, detected by content) with a
versioned schema. ``load_table`` validates everything before returning, so a
cost model never runs on a half-read or silently wrong table; each problem is
one ``TableError`` naming the file and the field.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO, Union

from ._io import atomic_write, gzip_bytes, read_json
from .errors import KeyFormatError, MissingKeyError, TableError
from .keys import ArchKey, Key, OpKey, _NAME, parse_key

SCHEMA_TAG = "hwcost.device_table"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)
KINDS = {"op": OpKey, "arch": ArchKey}
QUALITIES = ("ok", "noisy", "capped", "imported")
HEADER_FIELDS = ("schema", "schema_version", "kind", "spaces", "device", "runtime",
                 "measurement", "created", "provenance")
OPTIONAL_FIELDS = ("calibration",)   # the in-context model (device_tables.calibration), once calibrated
ENTRY_FIELDS = ("key", "key_fields", "median_ms", "p10_ms", "p90_ms", "n", "quality")
# Runtime settings that change a measurement: tables (and journals) that differ
# in one of these must not be mixed.
RUNTIME_IDENTITY = ("backend", "execution_provider", "threads", "dtype", "batch")
_RUNTIME_TYPES = {"backend": str, "backend_version": str, "execution_provider": str,
                  "dtype": str, "threads": int, "batch": int}

KeyLike = Union[OpKey, ArchKey, str]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_latency(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TableError(f"{name}: must be a positive finite number of milliseconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Entry:
    """One key's latency: median and spread (p10/p90) over ``n`` samples, in ms."""

    key: Key
    median_ms: float
    p10_ms: float
    p90_ms: float
    n: int
    quality: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, (OpKey, ArchKey)):
            raise TableError(f"key: must be an OpKey or ArchKey, got {_type_name(self.key)}")
        for name in ("median_ms", "p10_ms", "p90_ms"):
            object.__setattr__(self, name, _check_latency(name, getattr(self, name)))
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise TableError(f"p10_ms <= median_ms <= p90_ms does not hold: "
                             f"{self.p10_ms!r}, {self.median_ms!r}, {self.p90_ms!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise TableError(f"n: must be an integer >= 1 (number of samples), got {self.n!r}")
        if self.quality not in QUALITIES:
            raise TableError(f"quality: must be one of {', '.join(QUALITIES)}, got {self.quality!r}")
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise TableError(f"extra: must be an object with string keys, got {_type_name(self.extra)}")

    @classmethod
    def imported(cls, key: Key, value_ms: float, **extra: Any) -> "Entry":
        """An entry for a single published value: no spread, one sample."""
        return cls(key, value_ms, value_ms, value_ms, 1, "imported", extra)

    def to_json(self) -> dict[str, Any]:
        d = {"key": self.key.to_str(), "key_fields": self.key.as_dict(), "median_ms": self.median_ms,
             "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "n": self.n, "quality": self.quality}
        if self.extra:
            d["extra"] = dict(sorted(self.extra.items()))
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Entry":
        """Build from a parsed entry object; errors name the field, not the file."""
        if not isinstance(d, dict):
            raise TableError(f"must be an object, got {_type_name(d)}")
        missing = [f for f in ENTRY_FIELDS if f not in d]
        unknown = sorted(set(d) - set(ENTRY_FIELDS) - {"extra"})
        if missing:
            raise TableError(f"missing field {', '.join(missing)}")
        if unknown:
            raise TableError(f"unknown field {', '.join(unknown)} (put free data in 'extra')")
        try:
            key = parse_key(d["key"])
        except KeyFormatError as e:
            raise TableError(f"key: {e}") from None
        try:
            from_fields = type(key).from_dict(d["key_fields"])
        except KeyFormatError as e:
            raise TableError(f"key_fields: {e}") from None
        if from_fields != key:
            raise TableError(f"key_fields describe {from_fields.to_str()!r}, not the key {key.to_str()!r}")
        return cls(key, d["median_ms"], d["p10_ms"], d["p90_ms"], d["n"], d["quality"], d.get("extra", {}))


def check_header(h: dict[str, Any], *, allow: Iterable[str] = ()) -> None:
    """Validate a table's metadata (everything but the entries)."""
    if h.get("schema") != SCHEMA_TAG:
        got = f"schema {h['schema']!r}" if "schema" in h else "no 'schema' field"
        raise TableError(f'not a device table: expected "schema": "{SCHEMA_TAG}", found {got}')
    version = h.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise TableError(f"schema_version {version!r} is not supported; this hwcost reads version(s) "
                         f"{', '.join(map(str, SUPPORTED_VERSIONS))} (a newer table needs a newer hwcost)")
    missing = [f for f in HEADER_FIELDS if f not in h]
    unknown = sorted(set(h) - set(HEADER_FIELDS) - set(OPTIONAL_FIELDS) - set(allow))
    if missing:
        raise TableError(f"missing field {', '.join(missing)}")
    if unknown:
        raise TableError(f"unknown field {', '.join(unknown)} (put free data in 'provenance')")
    if h["kind"] not in KINDS:
        raise TableError(f"kind: must be one of {', '.join(KINDS)}, got {h['kind']!r}")
    spaces = h["spaces"]
    if not isinstance(spaces, list) or not spaces or not all(isinstance(s, str) and _NAME.fullmatch(s) for s in spaces):
        raise TableError(f"spaces: must be a non-empty list of space names, got {spaces!r}")
    if len(set(spaces)) != len(spaces):
        raise TableError(f"spaces: lists a space twice: {spaces!r}")
    for name in ("device", "runtime", "measurement", "provenance"):
        if not isinstance(h[name], dict):
            raise TableError(f"{name}: must be an object, got {_type_name(h[name])}")
    if not isinstance(h["device"].get("name"), str) or not h["device"]["name"]:
        raise TableError(f"device.name: must be a non-empty string, got {h['device'].get('name')!r}")
    if not isinstance(h["runtime"].get("backend"), str) or not h["runtime"]["backend"]:
        raise TableError(f"runtime.backend: must be a non-empty string, got {h['runtime'].get('backend')!r}")
    for name, typ in _RUNTIME_TYPES.items():
        value = h["runtime"].get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, typ)):
            raise TableError(f"runtime.{name}: must be {typ.__name__} or null, got {value!r}")
        if typ is int and value is not None and value < 1:
            raise TableError(f"runtime.{name}: must be >= 1, got {value!r}")
    if h.get("calibration") is not None:
        from .calibration import check_calibration
        check_calibration(h["calibration"])
    created = h["created"]
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise TableError(f"created: must be an ISO date such as 2025-01-31, got {created!r}") from None


def _raw_entries(doc: Any) -> list:
    """A parsed table document's header checked, and its list of (not yet checked) entries."""
    if not isinstance(doc, dict):
        raise TableError(f"not a device table: the top level is a JSON {_type_name(doc)}, not an object")
    check_header(doc, allow=("entries",))
    raw = doc.get("entries")
    if not isinstance(raw, list):
        raise TableError(f"entries: must be a list, got {_type_name(raw)}")
    return raw


@dataclass(frozen=True)
class DeviceTable:
    """Latency entries for one device and runtime; look up with ``get``/``latency_ms``."""

    kind: str
    spaces: list[str]
    device: dict[str, Any]
    runtime: dict[str, Any]
    entries: tuple[Entry, ...] = ()
    measurement: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    provenance: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None   # in-context model (hwcost calibrate); None: uncalibrated
    source: str | None = field(default=None, compare=False)  # the file it came from, for messages

    def __post_init__(self) -> None:
        check_header(self.header())
        entries = tuple(self.entries)
        index: dict[Key, Entry] = {}
        key_type = KINDS[self.kind]
        for i, e in enumerate(entries):
            if not isinstance(e, Entry):
                raise TableError(f"entries[{i}]: must be an Entry, got {_type_name(e)}")
            if not isinstance(e.key, key_type):
                raise TableError(f"entries[{i}]: {type(e.key).__name__} {e.key} in a {self.kind}-level table")
            if e.key.space not in self.spaces:
                raise TableError(f"entries[{i}]: key {e.key} is for space {e.key.space!r}, "
                                 f"which is not in spaces {self.spaces!r}")
            if e.key in index:
                raise TableError(f"entries[{i}]: duplicate key {e.key}")
            index[e.key] = e
        object.__setattr__(self, "_index", index)
        # Canonical order (by key string): equal tables compare equal and save identically.
        object.__setattr__(self, "entries", tuple(sorted(entries, key=lambda e: e.key.to_str())))

    def header(self) -> dict[str, Any]:
        """The metadata without entries (what a journal's first line holds)."""
        h = {"schema": SCHEMA_TAG, "schema_version": SCHEMA_VERSION, "kind": self.kind,
             "spaces": list(self.spaces), "device": self.device, "runtime": self.runtime,
             "measurement": self.measurement, "created": self.created, "provenance": self.provenance}
        if self.calibration is not None:
            h["calibration"] = self.calibration
        return h

    @classmethod
    def from_header(cls, header: dict[str, Any], entries: Iterable[Entry] = (),
                    source: str | None = None) -> "DeviceTable":
        check_header(header, allow=("entries",))
        fields = {k: header[k] for k in HEADER_FIELDS if k not in ("schema", "schema_version")}
        return cls(entries=tuple(entries), source=source, calibration=header.get("calibration"), **fields)

    @classmethod
    def from_json(cls, doc: Any, source: str | None = None) -> "DeviceTable":
        """Build from a parsed table document; errors name the field, not the file."""
        raw = _raw_entries(doc)
        entries, first_at = [], {}
        for i, d in enumerate(raw):
            try:
                e = Entry.from_json(d)
            except TableError as err:
                named = f" ({d['key']})" if isinstance(d, dict) and isinstance(d.get("key"), str) else ""
                raise TableError(f"entries[{i}]{named}: {err}") from None
            if e.key in first_at:
                raise TableError(f"entries[{i}]: duplicate key {e.key} (also entries[{first_at[e.key]}])")
            first_at[e.key] = i
            entries.append(e)
        return cls.from_header(doc, entries, source)

    def to_json_text(self) -> str:
        """Header fields one per line, then one entry per line sorted by key: diffable and compact."""
        lines = ["{"]
        for name, value in self.header().items():
            lines.append(f" {json.dumps(name)}: {json.dumps(value, sort_keys=True, allow_nan=False)},")
        rows = []
        for e in self.entries:
            try:
                rows.append("  " + json.dumps(e.to_json(), allow_nan=False, separators=(",", ":")))
            except (TypeError, ValueError) as err:
                raise TableError(f"entry {e.key}: extra is not plain JSON: {err}") from None
        lines.append(' "entries": [' + ("\n" + ",\n".join(rows) + "\n ]" if rows else "]"))
        return "\n".join(lines) + "\n}\n"

    def _key(self, key: KeyLike) -> Key:
        if isinstance(key, (OpKey, ArchKey)):
            return key
        if isinstance(key, str):
            return parse_key(key)
        raise TypeError(f"a table key is an OpKey, ArchKey or key string, not {_type_name(key)}")

    def get(self, key: KeyLike) -> Entry | None:
        return self._index.get(self._key(key))  # type: ignore[attr-defined]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._index  # type: ignore[arg-type, attr-defined]
        except (KeyFormatError, TypeError):
            return False

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def keys(self) -> list[Key]:
        return [e.key for e in self.entries]

    def latency_ms(self, key: KeyLike) -> float:
        """The median latency of ``key``; a missing key is an error, never a silent zero."""
        entry = self.get(key)
        if entry is None:
            where = self.source or f"device {self.device.get('name')}"
            raise MissingKeyError(f"no entry for {self._key(key)} in table {where} ({len(self)} entries)")
        return entry.median_ms


def load_table(path: str | Path, expect_space: str | None = None,
               expect_kind: str | None = None) -> DeviceTable:
    """Read and fully validate a table; raise one TableError naming the file and field."""
    path = Path(path)
    try:
        table = DeviceTable.from_json(read_json(path), source=str(path))
    except TableError as e:
        raise TableError(f"table {path}: {e}") from None
    if expect_kind is not None and table.kind != expect_kind:
        raise TableError(f"table {path} holds {table.kind}-level entries, but an {expect_kind}-level table is needed")
    if expect_space is not None and expect_space not in table.spaces:
        raise TableError(f"table {path} was measured for space {', '.join(table.spaces)}, "
                         f"but a {expect_space} table is needed")
    return table


def load_table_for_viewing(path: str | Path) -> tuple[DeviceTable, list[dict[str, Any]]]:
    """A table to *look at* even when some entries are bad: ``(table of the good entries, bad ones)``.

    The header is checked as :func:`load_table` checks it (a bad header is a
    TableError); each entry on its own -- a bad one (a wrong field, a key of
    another space or kind, a duplicate) comes back as ``{"index", "key",
    "error", "entry"}`` instead of failing the load. For ``hwcost table show``;
    anything that computes with a table uses the strict :func:`load_table`.
    """
    path = Path(path)
    try:
        doc = read_json(path)
        raw = _raw_entries(doc)
        good, bad, first_at = [], [], {}
        for i, d in enumerate(raw):
            named = d["key"] if isinstance(d, dict) and isinstance(d.get("key"), str) else None
            try:
                e = Entry.from_json(d)
                if not isinstance(e.key, KINDS[doc["kind"]]):
                    raise TableError(f"{type(e.key).__name__} {e.key} in a {doc['kind']}-level table")
                if e.key.space not in doc["spaces"]:
                    raise TableError(f"key is for space {e.key.space!r}, which is not in spaces {doc['spaces']!r}")
                if e.key in first_at:
                    raise TableError(f"duplicate key (also entries[{first_at[e.key]}])")
            except TableError as err:
                bad.append({"index": i, "key": named, "error": str(err), "entry": d})
                continue
            first_at[e.key] = i
            good.append(e)
        table = DeviceTable.from_header(doc, good, source=str(path))
    except TableError as e:
        raise TableError(f"table {path}: {e}") from None
    return table, bad


def save_table(table: DeviceTable, path: str | Path) -> None:
    """Write atomically (old or new file survives a crash); ``.gz`` paths are compressed."""
    data = table.to_json_text().encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip_bytes(data)
    atomic_write(Path(path), data)


@dataclass(frozen=True)
class Conflict:
    """A key found in two merged tables; the entry with more samples was kept."""

    key: str
    kept: str
    dropped: str
    kept_n: int
    dropped_n: int

    def __str__(self) -> str:
        return f"{self.key}: kept {self.kept} (n={self.kept_n}) over {self.dropped} (n={self.dropped_n})"


def _label(table: DeviceTable, i: int) -> str:
    return table.source or f"table #{i + 1}"


def canonical_runtime(runtime: dict[str, Any]) -> dict[str, Any]:
    """``runtime`` with one name per runtime: device runners before the local profiler's names
    recorded ONNX Runtime as ``onnxruntime``; a local profile calls it ``ort-cpu`` (or
    ``ort:<ExecutionProvider>``), and so does the runner now."""
    if runtime.get("backend") != "onnxruntime":
        return runtime
    provider = runtime.get("execution_provider") or "CPUExecutionProvider"
    return {**runtime, "backend": "ort-cpu" if provider == "CPUExecutionProvider" else f"ort:{provider}"}


def _identity(t: DeviceTable) -> dict[str, Any]:
    ident = {"kind": t.kind, "device.name": t.device.get("name")}
    runtime = canonical_runtime(t.runtime)
    ident.update((f"runtime.{k}", runtime.get(k)) for k in RUNTIME_IDENTITY)
    ident["measurement.context"] = t.measurement.get("context", "alone")  # keys timed alone or in a sequence
    return ident


def merge_tables(tables: Iterable[DeviceTable], force: bool = False) -> tuple[DeviceTable, list[Conflict]]:
    """Union of tables of one device/runtime; a key in several keeps the most-sampled entry.

    Different devices, runtime settings (backend, provider, threads, dtype,
    batch) or timing contexts (``measurement.context``: keys timed alone or in a
    sequence) are refused unless ``force``; different kinds are always refused.
    An older runner table's backend ``onnxruntime`` is the same runtime as
    ``ort-cpu`` / ``ort:<EP>`` (:func:`canonical_runtime`).
    A calibration (in-context model) is not carried over: it was fitted on one
    table's entries; calibrate the merged table again (``hwcost calibrate``).
    """
    tables = list(tables)
    if not tables:
        raise TableError("merge needs at least one table")
    first = _identity(tables[0])
    for i, t in enumerate(tables[1:], 1):
        diff = [f"{k} ({first[k]!r} vs {v!r})" for k, v in _identity(t).items() if v != first[k]]
        if diff and (not force or t.kind != tables[0].kind):
            hint = "" if t.kind != tables[0].kind else "; pass force=True (--force) to merge anyway"
            raise TableError(f"cannot merge {_label(tables[0], 0)} and {_label(t, i)}: they differ in "
                             f"{', '.join(diff)}{hint}")
    chosen: dict[Key, tuple[Entry, int]] = {}
    conflicts = []
    for i, t in enumerate(tables):
        for e in t.entries:
            if e.key in chosen:
                old, j = chosen[e.key]
                keep_new = e.n > old.n
                (kept, ki), (dropped, di) = ((e, i), (old, j)) if keep_new else ((old, j), (e, i))
                conflicts.append(Conflict(e.key.to_str(), _label(tables[ki], ki), _label(tables[di], di),
                                          kept.n, dropped.n))
                if not keep_new:
                    continue
            chosen[e.key] = (e, i)
    spaces = sorted({s for t in tables for s in t.spaces})
    merged_from = [{"table": _label(t, i), "created": t.created, "device": t.device, "runtime": t.runtime,
                    "measurement": t.measurement, "provenance": t.provenance, "entries": len(t)}
                   for i, t in enumerate(tables)]
    measurement = dict(tables[0].measurement)
    probe = _merged_probe(tables)
    if probe is not None:
        measurement["weight_stream"] = probe
    merged = DeviceTable(kind=tables[0].kind, spaces=spaces, device=tables[0].device,
                         runtime=canonical_runtime(tables[0].runtime), entries=tuple(e for e, _ in chosen.values()),
                         measurement=measurement, provenance={"merged_from": merged_from})
    return merged, conflicts


def _merged_probe(tables: list[DeviceTable]) -> dict | None:
    """The weight-stream probe a merged table keeps (``measurement.weight_stream``): a measured one over a
    skipped one, of measured ones the largest matrix (the furthest from any cache), the earlier table on a
    tie; None when no table has one. Every table's own record stays in ``provenance.merged_from``."""
    probes = [t.measurement.get("weight_stream") for t in tables]
    probes = [p for p in probes if isinstance(p, dict)]
    measured = [p for p in probes if "gbps" in p]
    if measured:
        return max(measured, key=lambda p: p.get("bytes", 0))     # max keeps the first of equals
    return probes[0] if probes else None


CSV_HEADER_COLUMN = "table_header"   # the table's header as JSON, in the first row: read_csv_table reads it back


def _csv_key_cells(key: Key) -> dict[str, Any]:
    """The key-field columns of one entry's CSV row (a key's own extras as columns of their own)."""
    fields = dict(key.as_dict())
    cells = dict(fields.pop("extra", {}))
    cells.update(fields)
    return cells


def _csv_extra(value: Any) -> str:
    """An entry's extra value as a cell that reads back as itself: JSON, except a plain string
    (written bare when it cannot be read as anything else)."""
    if isinstance(value, str) and value:
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, allow_nan=False)


def to_csv(table: DeviceTable, file: str | Path | TextIO | None = None) -> int:
    """Write one row per entry, key fields as columns; returns the number of rows.

    The last column, ``table_header``, holds the table's header (device,
    runtime, measurement, ...) as JSON in the first row, so :func:`read_csv_table`
    (``hwcost table import-csv``) gives the same table back.
    """
    if file is None:
        file = sys.stdout
    if isinstance(file, (str, Path)):
        with open(file, "w", newline="", encoding="utf-8") as f:
            return to_csv(table, f)
    if table.kind == "op":
        key_cols = ["space", "op", "batch", "c_in", "c_out", "h", "w", "stride"]
        key_cols += sorted({name for e in table.entries for name, _ in e.key.extra})  # type: ignore[union-attr]
    else:
        key_cols = ["space", "network", "arch"]
    extra_cols = sorted({name for e in table.entries for name in e.extra})
    columns = ["key", *key_cols, "median_ms", "p10_ms", "p90_ms", "n", "quality"]
    columns += [f"extra.{name}" for name in extra_cols]
    columns.append(CSV_HEADER_COLUMN)
    header = json.dumps(table.header(), sort_keys=True, allow_nan=False, separators=(",", ":"))
    writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for i, e in enumerate(table.entries):
        d = e.to_json()
        row = {"key": d["key"], **{k: v for k, v in d.items() if k in columns}}
        row.update(_csv_key_cells(e.key))
        row.update((f"extra.{k}", _csv_extra(v)) for k, v in e.extra.items())
        if i == 0:
            row[CSV_HEADER_COLUMN] = header
        writer.writerow(row)
    if not table.entries:
        writer.writerow({CSV_HEADER_COLUMN: header})
    return len(table.entries)


def read_csv_table(path: str | Path) -> DeviceTable:
    """The table a :func:`to_csv` file holds (the inverse of ``hwcost table csv``), validated as
    :func:`load_table` validates; one TableError naming the file, the line and the field."""
    path = Path(path)
    where = f"table CSV {path}"
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 28))  # the header cell of a merged table can be long
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            if columns[:1] != ["key"] or CSV_HEADER_COLUMN not in columns:
                raise TableError(f"{where}: not written by `hwcost table csv` (its first column is 'key' and it "
                                 f"has a '{CSV_HEADER_COLUMN}' column with the device and runtime); got columns "
                                 f"{', '.join(columns[:8]) or 'none'}{' ...' if len(columns) > 8 else ''}")
            header, entries = None, []
            for row in reader:
                try:
                    cell = row.get(CSV_HEADER_COLUMN) or ""
                    if cell:
                        if header is not None:
                            raise TableError(f"a second {CSV_HEADER_COLUMN}")
                        try:
                            header = json.loads(cell)
                        except ValueError as e:
                            raise TableError(f"{CSV_HEADER_COLUMN}: not valid JSON ({e})") from None
                        if not isinstance(header, dict):
                            raise TableError(f"{CSV_HEADER_COLUMN}: must be a JSON object")
                    if not row.get("key"):
                        if cell and not any(v for c, v in row.items() if c != CSV_HEADER_COLUMN):
                            continue  # the header row of a table without entries
                        raise TableError("key: empty")
                    entries.append(_csv_entry(row, columns))
                except TableError as e:
                    raise TableError(f"{where} line {reader.line_num}: {e}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"{where}: cannot read it: {e}") from None
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise TableError(f"{where}: the {CSV_HEADER_COLUMN} cell of the first row is empty: no device and "
                         f"runtime to make a table with")
    try:
        return DeviceTable.from_header(header, entries, source=str(path))
    except TableError as e:
        raise TableError(f"{where}: {e}") from None


def _csv_entry(row: dict[str, Any], columns: list[str]) -> Entry:
    try:
        key = parse_key(row["key"])
    except KeyFormatError as e:
        raise TableError(f"key: {e}") from None
    for name, value in _csv_key_cells(key).items():  # an edited field column would silently not count
        cell = row.get(name)
        if cell is not None and cell != ("" if value is None else str(value)):
            raise TableError(f"column {name} is {cell!r} but the key {key.to_str()!r} says {value!r} "
                             f"(the key column is what counts: edit both or neither)")
    numbers: dict[str, Any] = {}
    for name, kind in (("median_ms", float), ("p10_ms", float), ("p90_ms", float), ("n", int)):
        try:
            numbers[name] = kind(row.get(name) or "")
        except ValueError:
            raise TableError(f"{name}: not a number: {row.get(name)!r}") from None
    extra = {}
    for name in columns:
        cell = row.get(name)
        if name.startswith("extra.") and cell not in (None, ""):
            try:
                extra[name[len("extra."):]] = json.loads(cell)
            except ValueError:
                extra[name[len("extra."):]] = cell
    return Entry(key, numbers["median_ms"], numbers["p10_ms"], numbers["p90_ms"], numbers["n"],
                 row.get("quality") or "", extra)
