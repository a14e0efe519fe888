"""Cost tensors that several test files read, built once per test process.

search.costs.search_cost_tensor traces the darts target network (~5 s a table on a 2-vCPU host);
tests/test_budget_attainable.py and tests/test_search_costs.py both read the tensor of the bundled darts
tables. search.costs' own cache holds 8 tensors, too few to keep these between the two files. The tests
only read what they get: none may change a tensor or its notes."""
from __future__ import annotations

from pathlib import Path

from device_tables import bundled_table_path
from search.costs import search_cost_tensor
from spaces import get_space

_DARTS: dict[str, tuple] = {}


def darts_table_tensor(table: str) -> tuple:
    """``search_cost_tensor("darts", "cifar10", <darts primitives>, table)``: (tensor, notes), one per
    table file, however it is named (a bundled name or a path)."""
    key = str(Path(bundled_table_path(table)).resolve())
    if key not in _DARTS:
        _DARTS[key] = search_cost_tensor("darts", "cifar10", tuple(get_space("darts").primitives), table)
    return _DARTS[key]
