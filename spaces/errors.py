"""Errors raised for bad user input anywhere in the toolkit.

The CLI turns any :class:`HwcostError` (and the table layer's ``TableError``)
into one line on stderr and a non-zero exit; anything else is a bug and keeps
its traceback.
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
