"""Errors of the table layer.

``TableError`` is a ``ValueError`` so that callers who only know the standard
library can still catch it; the CLI prints its message as one line and exits
with status 2. It lives here (not in ``spaces``) because ``device_tables`` must
import nothing but the standard library.
"""


class TableError(ValueError):
    """A device table, journal or key that is malformed or does not fit its use."""


class KeyFormatError(TableError):
    """An op or architecture key that is malformed (bad name, value or string)."""


class MissingKeyError(TableError, KeyError):
    """A key that a table has no entry for."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""
