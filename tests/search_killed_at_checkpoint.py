"""Run ``hwcost search`` and SIGKILL it at a checkpoint event -- a helper for the resume tests.

    python tests/search_killed_at_checkpoint.py K STEPS <hwcost search arguments>

The process kills itself right after its K-th checkpoint is complete on disk (written and
renamed into place) and, when STEPS > 0, after STEPS more training steps (their log lines
written, no newer checkpoint): a resume must then drop those lines. Killing on these events,
not on a timer started by the parent, makes the cut land in the same place on any machine,
however loaded.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository, as `python -m` from its root


def kill_at(after_checkpoint: int, then_steps: int) -> None:
    """Wrap the search's checkpoint writer and step so the process dies at the chosen event."""
    from search.run import SearchRun

    save, step = SearchRun._save_checkpoint, SearchRun._step   # called as self._...(), so patch the class
    seen = {"checkpoints": 0, "steps_after": 0}

    def die() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def save_then_maybe_die(self, *args, **kwargs):
        save(self, *args, **kwargs)       # returns once checkpoint.pt is in place
        seen["checkpoints"] += 1
        if seen["checkpoints"] == after_checkpoint and then_steps == 0:
            die()

    def step_or_die(self, *args, **kwargs):
        if seen["checkpoints"] == after_checkpoint:
            if seen["steps_after"] == then_steps:
                die()                     # before this step: `then_steps` steps logged past the checkpoint
            seen["steps_after"] += 1
        return step(self, *args, **kwargs)

    SearchRun._save_checkpoint = save_then_maybe_die
    SearchRun._step = step_or_die


def main(argv: list[str]) -> int:
    k, steps, search_args = int(argv[0]), int(argv[1]), argv[2:]
    if k < 1 or steps < 0:
        raise SystemExit("usage: search_killed_at_checkpoint.py K>=1 STEPS>=0 <hwcost search arguments>")
    kill_at(k, steps)
    from hwcost.cli import main as cli
    return cli(["search", *search_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
