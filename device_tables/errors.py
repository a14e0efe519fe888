"""Errors raised for bad user input anywhere in the toolkit.

Standard library only (``device_tables`` must import nothing else), so a
module without torch -- the table layer, the in-context model, the CLI's
table commands -- can raise and catch them without loading torch.
``spaces.errors`` re-exports the first three for the modules that import them
from there.

* :class:`HwcostError` -- a problem with what the user gave (a name, a file,
  a shape, a budget); :class:`UnknownNameError` and :func:`unknown` for an
  unknown name.
* :class:`TableError` -- the table layer's: a device table, journal or key
  that is malformed or does not fit its use. It is a ``ValueError``, so that
  callers who know only the standard library can catch it, and deliberately
  *not* a :class:`HwcostError`: code that catches ``HwcostError`` (a sweep's
  error column, a surrogate loader's message prefix) leaves table errors to
  its caller, as it always has.

The CLI catches :data:`USER_ERRORS` -- both families -- prints the message
as one line on stderr and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class HwcostError(ValueError):
    """A problem with what the user gave (a name, a file, a shape, a budget)."""


class UnknownNameError(HwcostError, KeyError):
    """An unknown space, op, genotype, backend, ... name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown(kind: str, name: str, known) -> UnknownNameError:
    """Build the standard 'unknown X' error listing what is known."""
    known = sorted(known)
    return UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(known)}")


class TableError(ValueError):
    """A device table, journal or key that is malformed or does not fit its use."""


class KeyFormatError(TableError):
    """An op or architecture key that is malformed (bad name, value or string)."""


class MissingKeyError(TableError, KeyError):
    """A key that a table has no entry for."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


# What the CLI reports as a user error (one line, exit status 2).
USER_ERRORS: tuple[type[Exception], ...] = (HwcostError, TableError)
