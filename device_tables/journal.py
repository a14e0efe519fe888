"""Crash-safe profiling journal: an interrupted profile resumes without losing or repeating rows.

The journal is JSON lines: line 1 is the table header (metadata without
entries), every further line one entry. Each ``append`` is flushed and fsynced
before it returns, so a row the profiler was told is saved survives a SIGKILL
or a power cut. A kill in the middle of a write can leave a torn last line;
``open_or_resume`` cuts it away (that row was never reported saved, so it is
simply measured again).

A profile taken in several interleaved passes writes one row per key and
pass (``extra["pass"]``, 1-based); ``finalize(out, combine)`` turns each
key's rows into its table entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ._io import fsync_dir, loads_strict
from .errors import KeyFormatError, TableError
from .keys import Key, parse_key
from .table import (HEADER_FIELDS, KINDS, RUNTIME_IDENTITY, SCHEMA_TAG, SCHEMA_VERSION, DeviceTable,
                    Entry, KeyLike, check_header, now_iso, save_table)

# What must agree between a journal and the run resuming it.
_IDENTITY = ("kind", "spaces", "device.name", *(f"runtime.{k}" for k in RUNTIME_IDENTITY))


def _complete_header(header: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields a caller may leave out (tag, version, date, empty dicts)."""
    if not isinstance(header, dict):
        raise TableError(f"journal header must be a dict, got {type(header).__name__}")
    h = {"schema": SCHEMA_TAG, "schema_version": SCHEMA_VERSION, "created": now_iso(),
         "measurement": {}, "provenance": {}, **header}
    h.pop("entries", None)
    check_header(h)
    return {k: h[k] for k in HEADER_FIELDS}


def _identity(h: dict[str, Any]) -> dict[str, Any]:
    return {"kind": h["kind"], "spaces": sorted(h["spaces"]), "device.name": h["device"].get("name"),
            **{f"runtime.{k}": h["runtime"].get(k) for k in RUNTIME_IDENTITY}}


class Journal:
    """Append-only record of measured entries; ``finalize`` turns it into a table."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        """Start a new journal; refuses to overwrite an existing one."""
        self.path = Path(path)
        self.header = _complete_header(header)
        self._entries: dict[tuple[Key, int | None], Entry] = {}
        try:
            self._file = open(self.path, "xb")
        except FileExistsError:
            raise TableError(f"journal {self.path} already exists; resume it with Journal.open_or_resume, "
                             f"or delete it to start over") from None
        self._write(json.dumps(self.header, sort_keys=True, allow_nan=False))
        fsync_dir(self.path.parent)

    @classmethod
    def open_or_resume(cls, path: str | Path, header: dict[str, Any]) -> "Journal":
        """Resume the journal at ``path`` if there is one (checking it is the same run), else start one."""
        path = Path(path)
        wanted = _complete_header(header)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path, wanted)
        except OSError as e:
            raise TableError(f"journal {path}: cannot read it: {e.strerror or e}") from None
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn and _parses(torn):
            lines.append(torn)  # complete row whose newline was cut: keep it
            torn = b""
        if not lines:  # killed while writing the header: nothing was measured yet
            path.unlink()
            return cls(path, wanted)
        self = cls.__new__(cls)
        self.path, self._entries = path, {}
        self.header = self._read_header(lines[0], wanted)
        for number, line in enumerate(lines[1:], start=2):
            self._read_entry(number, line)
        self._file = open(path, "r+b")
        self._file.truncate(len(data) - len(torn))  # cut a torn last line away
        self._file.seek(0, os.SEEK_END)
        if not data[: len(data) - len(torn)].endswith(b"\n"):
            self._file.write(b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return self

    def _read_header(self, line: bytes, wanted: dict[str, Any]) -> dict[str, Any]:
        try:
            h = loads_strict(line.decode("utf-8"))
            if not isinstance(h, dict):
                raise TableError("the header is not an object")
            check_header(h)
        except (TableError, UnicodeDecodeError) as e:
            raise TableError(f"journal {self.path}: line 1 (header): {e}") from None
        old, new = _identity(h), _identity(wanted)
        diff = [f"{k}={old[k]!r} (this run: {new[k]!r})" for k in _IDENTITY if old[k] != new[k]]
        if diff:
            raise TableError(f"journal {self.path} was started with {', '.join(diff)}; use another output "
                             f"path for this run, or delete the journal to start over")
        return h

    def _read_entry(self, number: int, line: bytes) -> None:
        try:
            entry = self._check(Entry.from_json(loads_strict(line.decode("utf-8"))))
        except (TableError, UnicodeDecodeError) as e:
            raise TableError(f"journal {self.path}: line {number} is corrupt ({e}); only a torn last line "
                             f"is repaired automatically, so inspect the file") from None
        self._entries.setdefault(_row_id(entry), entry)  # a duplicate (should not happen) is kept once

    def _check(self, entry: Entry) -> Entry:
        if not isinstance(entry, Entry):
            raise TableError(f"journal entries must be Entry objects, got {type(entry).__name__}")
        if not isinstance(entry.key, KINDS[self.header["kind"]]):
            raise TableError(f"{entry.key} does not belong in a {self.header['kind']}-level table")
        if entry.key.space not in self.header["spaces"]:
            raise TableError(f"{entry.key} is for space {entry.key.space!r}, not in {self.header['spaces']}")
        return entry

    def _write(self, line: str) -> None:
        self._file.write(line.encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, entry: Entry) -> bool:
        """Durably record ``entry``; returns False (writing nothing) if its key (and pass) is already done."""
        self._check(entry)
        row = _row_id(entry)
        if row in self._entries:
            return False
        self._write(json.dumps(entry.to_json(), allow_nan=False, separators=(",", ":")))
        self._entries[row] = entry
        return True

    def done_keys(self) -> set[Key]:
        """Keys with at least one saved row."""
        return {key for key, _ in self._entries}

    def done_rows(self) -> set[tuple[Key, int | None]]:
        """(key, pass) of every saved row; pass is None for a single-pass profile."""
        return set(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, key: KeyLike) -> bool:
        if isinstance(key, str):
            try:
                key = parse_key(key)
            except KeyFormatError:
                return False
        return key in self.done_keys()

    def __len__(self) -> int:
        """Saved rows (one per key, or one per key and pass)."""
        return len(self._entries)

    def finalize(self, out_path: str | Path,
                 combine: Callable[[list[Entry]], Entry] | None = None,
                 measurement: dict | None = None) -> DeviceTable:
        """Write the table atomically, then remove the journal (in that order: no window without data).

        ``combine`` turns one key's rows (in pass order) into its entry; without
        it every key must have exactly one row. ``measurement`` adds fields to the
        header's ``measurement`` record (what was learnt while measuring, e.g. the
        host's reference kernel).
        """
        if Path(out_path).resolve() == self.path.resolve():
            raise TableError(f"the table cannot be written over its own journal {self.path}")
        rows: dict[Key, list[tuple[int, Entry]]] = {}
        for (key, number), entry in self._entries.items():
            rows.setdefault(key, []).append((number or 0, entry))
        entries = []
        for key, numbered in rows.items():
            group = [e for _, e in sorted(numbered, key=lambda t: t[0])]
            if combine is not None:
                entries.append(combine(group))
            elif len(group) == 1:
                entries.append(group[0])
            else:
                raise TableError(f"journal {self.path} has {len(group)} passes of {key}; finalize it with "
                                 f"the profile that wrote it (it combines the passes)")
        header = self.header if not measurement else \
            {**self.header, "measurement": {**self.header.get("measurement", {}), **measurement}}
        table = DeviceTable.from_header(header, entries, source=str(out_path))
        save_table(table, out_path)
        self.close()
        self.path.unlink()
        fsync_dir(self.path.parent)
        return table

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row_id(entry: Entry) -> tuple[Key, int | None]:
    """What makes a journal row unique: its key, and its pass in a multi-pass profile."""
    number = entry.extra.get("pass")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
        raise TableError(f"{entry.key}: extra.pass must be an integer >= 1, got {number!r}")
    return entry.key, number


def _parses(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
    except ValueError:
        return False
    return True
