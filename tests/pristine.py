"""Module-wide fixtures' state handed to each test as it was first made (not a test file).

A table file a module fitted once is written back before each test (a test before may have added to its
calibration); a search run once per module is copied for each test (tests re-derive and write into it)."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path


def restore(pristine) -> Path:
    """``pristine.path`` with the bytes first saved there (``pristine.saved``), as a new file, as save_table
    writes one."""
    fresh = pristine.path.with_name(pristine.path.name + ".restore")
    fresh.write_bytes(pristine.saved)
    os.replace(fresh, pristine.path)
    return pristine.path


def copy_run(pristine_run, tmp_path: Path) -> tuple:
    """(run directory, config, result, budget): a copy at ``tmp_path/run`` of the module's search."""
    out = tmp_path / "run"
    shutil.copytree(pristine_run.out, out)
    return out, pristine_run.cfg, copy.deepcopy(pristine_run.result), pristine_run.budget
