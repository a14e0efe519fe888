"""File plumbing shared by tables and journals: strict JSON reading, atomic writes.

Kept apart so that the crash-safety rules (tmp file in the same directory,
fsync, os.replace, fsync of the directory) are written once.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

from .errors import TableError

_GZIP_MAGIC = b"\x1f\x8b"
_CONSTANT = re.compile(r"[:\[,]\s*(-?Infinity|NaN)")


class _NonFinite(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def loads_strict(text: str) -> Any:
    """``json.loads`` that rejects the NaN/Infinity literals Python's json accepts.

    Raises TableError with the line and column of the problem.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise TableError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _NonFinite as e:
        m = _CONSTANT.search(text)
        where = ""
        if m:
            i = m.start(1)
            where = f" at line {text.count(chr(10), 0, i) + 1} column {i - text.rfind(chr(10), 0, i)}"
        raise TableError(f"not valid JSON: {e.args[0]} is not a number JSON allows{where}") from None


def typed_field(d: Any, name: str, kind: type | tuple[type, ...], where: str = "", label: str | None = None) -> Any:
    """``d[name]`` if it is a ``kind`` (a bool counts as no number); otherwise one TableError naming the
    field -- ``label``, by default ``where + name`` -- as missing or as of the wrong type."""
    label = f"{where}{name}" if label is None else label
    if not isinstance(d, dict):
        raise TableError(f"{label}: expected a field of an object, got {type(d).__name__}")
    if name not in d:
        raise TableError(f"missing field {label}")
    value = d[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TableError(f"{label}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def read_json(path: Path) -> Any:
    """Read a JSON file (plain or gzip-compressed, detected by content)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TableError(f"cannot read the file: {e.strerror or e}") from None
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise TableError(f"corrupt gzip data: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TableError(f"not UTF-8 text (byte {e.start})") from None
    return loads_strict(text)


def fsync_dir(directory: Path) -> None:
    """Make a rename/creation in ``directory`` durable (no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half."""
    path = Path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no time stamp, no file name), so rebuilt files diff clean."""
    return gzip.compress(data, compresslevel=9, mtime=0)
