"""Progress of a search or a training run: a tqdm bar on a terminal; elsewhere (a log file, a
pipe) one plain line per epoch, since a bar's carriage-return updates make a log unreadable."""
from __future__ import annotations

import sys


def on_terminal() -> bool:
    """Whether stderr (where progress goes) is a terminal."""
    return sys.stderr.isatty()


class Progress:
    """``step(**postfix)`` after each step, ``epoch(text)`` after each epoch, ``close()`` at the end."""

    def __init__(self, desc: str, total: int, initial: int = 0, unit: str = "step"):
        self.desc, self.bar = desc, None
        if on_terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=min(total, initial), desc=desc, unit=unit, dynamic_ncols=True)

    def step(self, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)

    def epoch(self, text: str) -> None:
        """A line for the finished epoch where there is no bar."""
        if self.bar is None:
            print(f"{self.desc} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
