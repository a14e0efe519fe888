"""Errors raised for bad user input anywhere in the toolkit.

They are defined in :mod:`device_tables.errors` (standard library only, so a
module without torch can raise them without loading torch) and re-exported
here for the modules that import them from ``spaces``.
"""
from device_tables.errors import HwcostError, UnknownNameError, unknown

__all__ = ["HwcostError", "UnknownNameError", "unknown"]
