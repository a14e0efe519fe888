"""Timing one callable until its median is known: the torch.utils.benchmark split.

* :class:`Settings` -- how to measure (frozen, recorded in every table).
* :class:`Measurement` -- raw per-run times in seconds -> median, p10/p90, IQR,
  the median's confidence interval and a quality flag. Units stay seconds
  inside; tables get milliseconds at the edge (:meth:`Measurement.to_entry`).
* :class:`Timer` -- warm-up, block sizing, timer-overhead subtraction and
  adaptive stopping. Backends differ only in their *block timer*: a function
  that runs ``fn`` k times and returns the elapsed seconds (``perf_counter``
  on a CPU, CUDA events on a GPU).

The statistics (quantiles, the median's CI) and the measurement loop are not
written here: they are the remote runner's (:mod:`profilers.runner`, a single
stdlib + numpy file), so a table measured on a board and one measured here
come from the same loop.

Why these choices:

* The **median**, not the mean: latency noise is one-sided (interrupts, other
  processes), and the median ignores a few slow outliers.
* **Blocks**: one sample runs the op k times, with k chosen so that a sample
  lasts >= ``min_sample_s`` (0.5 ms). A clock read costs ~0.2 us here, so the
  timer's share of a sample is < 0.1 %; what is left -- the loop and the clock
  around an empty call -- is measured at the same k and subtracted.
* **Stop when the median is known**: samples are taken in growing rounds until
  the 95 % confidence interval of the median, from order statistics (no
  assumption on the distribution), is narrower than ``rel_ci`` of the median,
  or the per-key time cap is hit.
* **Interleaved passes, quietest kept** (``passes``, used by the profile and by
  benchmarks that measure many networks): a shared host slows everything down
  by up to 1.7x in phases that last seconds (``hwcost host``),
  longer than one key's window, so no statistic of one window can see them.
  Several passes over *all* keys put each key's windows seconds apart, and a
  key keeps its pass with the lowest median -- contention only ever adds time,
  so the quietest window is the one closest to a dedicated device (the reason
  ``timeit`` recommends the minimum of repeats).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Callable

from .runner import (cpu_block_timer, median_ci_ranks, retry_noisy, sample_window, summarize,  # noqa: F401
                     window_settings)  # median_ci_ranks and cpu_block_timer are re-exported

BlockTimer = Callable[[Callable[[], object], int], float]


@dataclass(frozen=True)
class Settings:
    """How a key is measured; recorded in the table's ``measurement`` field."""
    rel_ci: float = 0.02        # stop when the median's 95% CI half-width <= rel_ci * median
    max_time_s: float = 2.0     # per-key cap on warm-up + sampling
    min_sample_s: float = 5e-4  # block size: each sample lasts at least this long
    warmup_s: float = 0.05      # run the op this long before sampling (caches, allocators, lazy init)
    min_samples: int = 10       # never judge the CI on fewer samples
    noisy_iqr: float = 0.10     # IQR / median above this -> quality "noisy"
    noisy_retries: int = 2      # re-measure a noisy key up to this often; keep the quietest window
    confidence: float = 0.95
    passes: int = 10            # interleaved passes over all keys; each key keeps its quietest (profile only)

    def __post_init__(self):
        from spaces.errors import HwcostError
        for name in ("rel_ci", "max_time_s", "min_sample_s", "noisy_iqr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise HwcostError(f"{name} must be a positive number, got {v!r}")
        if not 0 < self.confidence < 1:
            raise HwcostError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if not isinstance(self.noisy_retries, int) or self.noisy_retries < 0:
            raise HwcostError(f"noisy_retries must be an integer >= 0, got {self.noisy_retries!r}")
        if not isinstance(self.min_samples, int) or self.min_samples < 3:
            raise HwcostError(f"min_samples must be an integer >= 3, got {self.min_samples!r}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise HwcostError(f"passes must be an integer >= 1, got {self.passes!r}")

    def window(self) -> "Settings":
        """The settings of one pass's window: ``max_time_s`` is the cap over all passes of a key,
        and with several passes a noisy window is not retried (the other passes are the retries)."""
        return replace(self, **window_settings(self.to_dict()))

    def to_dict(self) -> dict:
        return asdict(self)


QUIET_SPREAD = 1.05   # windows of one thing further apart than this: the host changed phase between them


@dataclass
class Measurement:
    """Per-run times (seconds, timer overhead subtracted) and what they say."""
    samples: list[float]
    runs_per_sample: int = 1
    overhead_s: float = 0.0   # timer + loop time per sample that was subtracted
    capped: bool = False      # stopped by the time cap, not by the CI
    settings: Settings = field(default_factory=Settings)
    elapsed_s: float = 0.0    # wall time spent on this key (warm-up included)
    attempts: int = 1         # measurement windows taken (noisy ones are retried)
    pass_medians: list[float] | None = None  # every window's median when this is the quietest of passes
    session_medians: list[float] | None = None  # every session's median when this is the median session

    @cached_property
    def _stats(self) -> dict:
        return summarize(self.samples, self.settings.to_dict())

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return self._stats["median"]

    @property
    def p10(self) -> float:
        return self._stats["p10"]

    @property
    def p90(self) -> float:
        return self._stats["p90"]

    @property
    def iqr(self) -> float:
        return self._stats["iqr"]

    def median_ci(self) -> tuple[float, float] | None:
        return self._stats["ci"]

    @property
    def rel_ci(self) -> float:
        """Half-width of the median's confidence interval / median (inf if unknown)."""
        return self._stats["rel_ci"]

    @property
    def converged(self) -> bool:
        return self._stats["converged"]

    @property
    def spread(self) -> float:
        """IQR / median: how disturbed the window was."""
        return self._stats["spread"]

    @property
    def quality(self) -> str:
        """"noisy" (IQR/median above the limit) > "capped" (CI not reached) > "ok"."""
        return self._stats["quality"]

    def summary(self) -> dict:
        """Milliseconds, for reports and ``hwcost measure --json``."""
        return {"latency_ms": self.median * 1e3, "p10_ms": self.p10 * 1e3, "p90_ms": self.p90 * 1e3,
                "n": self.n, "iqr_ms": self.iqr * 1e3, "rel_ci": _finite(self.rel_ci),
                "runs_per_sample": self.runs_per_sample, "quality": self.quality, "attempts": self.attempts,
                **({"passes": len(self.pass_medians), "pass_medians_ms": [_sig(v * 1e3) for v in self.pass_medians],
                    "window_spread": _sig(self.window_spread) if self.window_spread else None}
                   if self.pass_medians else {})}

    @property
    def _windows(self) -> list[float]:
        """The windows' medians (``pass_medians``) a clock could time: a window timed at zero is none."""
        return [v for v in (self.pass_medians or ()) if v > 0]

    @property
    def window_spread(self) -> float | None:
        """Slowest / quietest window median when this is the quietest of several windows (passes), else
        None: above :data:`QUIET_SPREAD` the host ran in phases while it was measured."""
        ms = self._windows
        return max(ms) / min(ms) if len(ms) > 1 else None

    def phases_note(self) -> str | None:
        """One line for a report when the windows say the host changed phase, else None."""
        spread = self.window_spread
        if spread is None or spread <= QUIET_SPREAD:
            return None
        ms = [v * 1e3 for v in self._windows]
        return (f"its {len(ms)} windows' medians ran {min(ms):.4g} to {max(ms):.4g} ms ({spread:.2f}x): the host "
                f"changed phase while it was measured; the figure is the quietest window's "
                f"(`hwcost host` shows the host's phases)")

    def to_entry(self, key, **extra):
        """A device-table entry (milliseconds; a zero time is clamped to 1 ns: a table needs > 0)."""
        from device_tables import Entry
        p10, med, p90 = (max(_sig(v * 1e3), 1e-6) for v in (self.p10, self.median, self.p90))
        info = {"iqr_ms": _sig(self.iqr * 1e3), "rel_ci": _finite(self.rel_ci),
                "runs_per_sample": self.runs_per_sample, **extra}
        if self.attempts > 1:
            info["attempts"] = self.attempts
        return Entry(key, med, min(p10, med), max(p90, med), self.n, self.quality, info)

    def __repr__(self) -> str:
        return (f"Measurement(median={self.median * 1e3:.4g} ms, p10={self.p10 * 1e3:.4g}, "
                f"p90={self.p90 * 1e3:.4g}, n={self.n}x{self.runs_per_sample}, "
                f"rel_ci={self.rel_ci:.2%}, quality={self.quality})")


@dataclass
class Pairs:
    """One network timed run by run, each run right after a run of one of several *candles* (networks of
    the same kind whose time in a chosen host phase is known), rotating: ``times[i]`` followed
    ``candle_times[i]`` of candle ``candles[i]`` (seconds).

    A shared host changes speed in phases of seconds (``hwcost host``); two runs tens of milliseconds
    apart share a phase, so a run's time over its candle's cancels the phase. Host F (2-vCPU AMD EPYC
    VM), 12 DARTS networks on ORT timed in three passes minutes apart: the quietest-window median agreed
    between passes within 5% for 28-44%, the median per-run ratio to a DARTS candle for 100% (sd 0.9-1.5%);
    a ratio to a lone convolution for 28-61%: on ORT the candle must be of the network's kind.
    """
    times: list[float]
    candle_times: list[float]
    candles: list[int]

    def __post_init__(self):
        if not (len(self.times) == len(self.candle_times) == len(self.candles)):
            raise ValueError("times, candle_times and candles must have one entry per run")

    def __add__(self, other: "Pairs") -> "Pairs":
        return Pairs(self.times + other.times, self.candle_times + other.candle_times, self.candles + other.candles)

    def raw(self, settings: Settings = Settings()) -> Measurement:
        """The runs' times as the clock took them."""
        return Measurement(list(self.times), settings=settings)

    def in_phase(self, then_s, settings: Settings = Settings()) -> Measurement:
        """Each run brought to the phase the candles' ``then_s`` times (seconds, one per candle) were
        measured in: time x candle's time then / candle's time beside it."""
        return Measurement([t * then_s[j] / c for t, c, j in zip(self.times, self.candle_times, self.candles)],
                           settings=settings)

    def phase(self, then_s) -> float:
        """How much slower the host ran the candles beside these runs than then: median now / then."""
        return statistics.median(c / then_s[j] for c, j in zip(self.candle_times, self.candles))


def quietest(values, median=lambda v: v.median):
    """Index of the quietest of several windows of one key: the lowest median."""
    values = list(values)
    return min(range(len(values)), key=lambda i: median(values[i]))


def combine_passes(rows):
    """One key's table entry from its per-pass rows (``extra["pass"]``): the quietest pass.

    The entry is that pass's row (median, p10/p90, n and quality of one
    window, so they stay consistent with each other); ``extra`` records every
    pass's median and the total sample count.
    """
    from device_tables import Entry
    rows = sorted(rows, key=lambda e: e.extra.get("pass", 0))
    if len(rows) == 1 and "pass" not in rows[0].extra:
        return rows[0]
    best = rows[quietest(rows, lambda e: e.median_ms)]
    extra = {k: v for k, v in best.extra.items() if k != "pass"}
    extra.update(passes=len(rows), quietest_pass=best.extra["pass"],
                 pass_medians_ms=[e.median_ms for e in rows], samples_all_passes=sum(e.n for e in rows))
    return Entry(best.key, best.median_ms, best.p10_ms, best.p90_ms, best.n, best.quality, extra)


def _finite(x: float) -> float | None:
    return _sig(x) if math.isfinite(x) else None


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits (timings carry no more; tables stay readable)."""
    return float(f"{x:.{digits}g}")


class Timer:
    """Measure ``fn`` (one run of the op, synchronised) with adaptive stopping.

    ``block_timer`` and ``wall_clock`` are injectable: tests drive the timer
    with a fake clock, the CUDA backend with event pairs.
    """

    def __init__(self, fn: Callable[[], object], settings: Settings = Settings(),
                 block_timer: BlockTimer | None = None, wall_clock: Callable[[], float] = time.perf_counter,
                 run_to_cap: bool = False):
        self.fn = fn
        self.run_to_cap = run_to_cap  # sample until max_time_s even once the CI is met (paced windows)
        self.settings = settings
        self.block_timer = block_timer or cpu_block_timer(wall_clock)
        self.wall_clock = wall_clock

    def measure(self) -> Measurement:
        """Measure; a noisy window (another process, a host neighbour) is retried
        ``noisy_retries`` times and the quietest window (lowest IQR/median) kept --
        the number a dedicated device would show."""
        start = self.wall_clock()
        best, attempts = retry_noisy(self.measure_once, self.settings.noisy_retries,
                                     lambda m: m.quality == "noisy", lambda m: m.spread)
        best.attempts = attempts
        best.elapsed_s = self.wall_clock() - start
        return best

    def measure_once(self) -> Measurement:
        """One window: :func:`profilers.runner.sample_window` -- warm-up, block sizing, overhead,
        samples until the CI or the cap."""
        w = sample_window(self.fn, self.settings.to_dict(), self.block_timer, self.wall_clock, self.run_to_cap)
        return Measurement(w["samples"], w["runs_per_sample"], w["overhead_s"], w["capped"], self.settings,
                           w["elapsed_s"])
