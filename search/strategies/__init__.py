"""Search strategies, by name: one plug-in file each (see :mod:`search.strategies.base`).

Every module of this package is imported here, so a file that calls
:func:`register_strategy` is all a new strategy needs.
"""
from __future__ import annotations

import importlib
import pkgutil

from .architect import Architect
from .base import STRATEGIES, Strategy, dca_options, get_strategy, register_strategy

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Architect", "STRATEGIES", "Strategy", "dca_options", "get_strategy", "register_strategy"]
