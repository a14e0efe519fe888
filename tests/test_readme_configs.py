"""The README's tiny configuration of each strategy runs as written (issue 14, item 9)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hwcost.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _tiny_lines() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- tiny-configs -->", 1)[1]
    body = re.search(r"```\n(.*?)```", block, re.S).group(1)
    return [line for line in body.splitlines() if line.startswith("hwcost search")]


def test_the_readme_lists_every_strategy():
    from search.strategies import STRATEGIES
    named = {shlex.split(line)[shlex.split(line).index("--strategy") + 1] for line in _tiny_lines()}
    assert set(STRATEGIES) <= named


# the sharpDARTS line takes ~30 s on a 2-vCPU host; tests/test_sharpdarts_search.py's runs are slow too
@pytest.mark.parametrize("line", [pytest.param(line, marks=pytest.mark.slow) if "sharpdarts" in line else line
                                  for line in _tiny_lines()])
# Every line runs by default with a batch of 16 (the lines leave it at the default 64, which made the two
# progressive darts lines ~15 s each): every option as written, a smaller problem. As written, in full: slow.
@pytest.mark.parametrize("batch", [pytest.param(None, marks=pytest.mark.slow, id="as-written"),
                                   pytest.param(16, id="batch16")])
def test_tiny_configuration_runs(line, batch, tmp_path):
    argv = shlex.split(line)[1:]
    i = argv.index("--out")
    argv[i + 1] = str(tmp_path / argv[i + 1])
    # (a line that sets its own batch runs it as written either way)
    extra = ["--batch-size", str(batch)] if batch is not None and "--batch-size" not in argv else []
    assert main(argv + ["--threads", "1", *extra, "--json"]) == 0
    assert (tmp_path / shlex.split(line)[-1] / "result.json").exists()
