"""Device tables: latencies per op (or per architecture) on one device, as validated JSON.

Standard library only, so a table can be read, checked and merged on the board
that measured it. Bundled tables live in ``device_tables/data/``; refer to them
by name (``raspi4``, ``nb201_raspi4``) or give a path.
"""

from __future__ import annotations

from pathlib import Path

from .errors import KeyFormatError, MissingKeyError, TableError
from .journal import Journal
from .keys import ArchKey, OpKey, parse_key
from .nb201_csv import import_nb201_csv
from .table import (SCHEMA_VERSION, Conflict, DeviceTable, Entry, load_table, merge_tables, save_table,
                    to_csv)

DATA_DIR = Path(__file__).resolve().parent / "data"
_SUFFIXES = (".json.gz", ".json")

__all__ = [
    "OpKey", "ArchKey", "parse_key", "Entry", "DeviceTable", "load_table", "save_table", "merge_tables",
    "to_csv", "Journal", "TableError", "KeyFormatError", "MissingKeyError", "Conflict",
    "import_nb201_csv", "list_bundled", "bundled_table_path", "load_bundled", "SCHEMA_VERSION", "DATA_DIR",
]


def _bundled() -> dict[str, Path]:
    found = {}
    for path in sorted(DATA_DIR.glob("*.json*")):
        for suffix in _SUFFIXES:
            if path.name.endswith(suffix):
                found[path.name[: -len(suffix)]] = path
                break
    return found


def list_bundled() -> list[str]:
    """Names of the tables shipped in ``device_tables/data/`` (e.g. ``nb201_raspi4``)."""
    return sorted(_bundled())


def bundled_table_path(name: str | Path) -> Path:
    """Resolve a table argument: an existing file, a bundled name, or a unique bundled suffix.

    ``raspi4`` finds ``nb201_raspi4`` as long as no other bundled table ends in ``_raspi4``.
    """
    if Path(name).is_file():
        return Path(name)
    bundled = _bundled()
    name = str(name)
    if name in bundled:
        return bundled[name]
    matches = [n for n in bundled if n.endswith("_" + name)]
    if len(matches) == 1:
        return bundled[matches[0]]
    if matches:
        raise TableError(f"table name {name!r} is ambiguous: {', '.join(matches)}; give the full name")
    raise TableError(f"no table file or bundled table {name!r}; bundled tables: "
                     f"{', '.join(bundled) or '(none)'}; or give the path of a .json table")


def load_bundled(name: str, expect_space: str | None = None, expect_kind: str | None = None) -> DeviceTable:
    """Load a table by bundled name (or path), validated like ``load_table``."""
    return load_table(bundled_table_path(name), expect_space=expect_space, expect_kind=expect_kind)
