"""Timing one callable until its median is known: the torch.utils.benchmark split.

* :class:`Settings` -- how to measure (frozen, recorded in every table).
* :class:`Measurement` -- raw per-run times in seconds -> median, p10/p90, IQR,
  the median's confidence interval and a quality flag. Units stay seconds
  inside; tables get milliseconds at the edge (:meth:`Measurement.to_entry`).
* :class:`Timer` -- warm-up, block sizing, timer-overhead subtraction and
  adaptive stopping. Backends differ only in their *block timer*: a function
  that runs ``fn`` k times and returns the elapsed seconds (``perf_counter``
  on a CPU, CUDA events on a GPU).

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
  by up to 1.7x in phases that last seconds (``benchmarks/host_stability.py``),
  longer than one key's window, so no statistic of one window can see them.
  Several passes over *all* keys put each key's windows seconds apart, and a
  key keeps its pass with the lowest median -- contention only ever adds time,
  so the quietest window is the one closest to a dedicated device (the reason
  ``timeit`` recommends the minimum of repeats).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Callable

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
        if self.passes == 1:
            return self
        return replace(self, max_time_s=self.max_time_s / self.passes, noisy_retries=0, passes=1)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) with P(x_(lo) <= true median <= x_(hi)) >= confidence.

    Distribution-free: the number of samples below the median is
    Binomial(n, 1/2), so [x_(r), x_(n-r+1)] (1-based) covers the median with
    probability 1 - 2 P(B <= r - 1). None when n is too small for any r.
    """
    alpha = 1.0 - confidence
    if n > 1000:  # normal approximation of the binomial, accurate to a rank here
        r = math.floor(n / 2 - _z(confidence) * math.sqrt(n) / 2)
        return (r - 1, n - r) if r >= 1 else None
    total, cdf, r = 2 ** n, 0, 0
    term = 1  # C(n, i)
    for i in range(n):
        cdf += term  # now P(B <= i) * 2**n
        if 2 * cdf > alpha * total:
            break
        r = i + 1
        term = term * (n - i) // (i + 1)
    return (r - 1, n - r) if r >= 1 else None


def _z(confidence: float) -> float:
    from statistics import NormalDist
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted data."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


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

    def __post_init__(self):
        self._sorted = sorted(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return _quantile(self._sorted, 0.5)

    @property
    def p10(self) -> float:
        return _quantile(self._sorted, 0.1)

    @property
    def p90(self) -> float:
        return _quantile(self._sorted, 0.9)

    @property
    def iqr(self) -> float:
        return _quantile(self._sorted, 0.75) - _quantile(self._sorted, 0.25)

    def median_ci(self) -> tuple[float, float] | None:
        ranks = median_ci_ranks(self.n, self.settings.confidence)
        return None if ranks is None else (self._sorted[ranks[0]], self._sorted[ranks[1]])

    @property
    def rel_ci(self) -> float:
        """Half-width of the median's confidence interval / median (inf if unknown)."""
        ci, med = self.median_ci(), self.median
        if ci is None or med <= 0:
            return math.inf
        return (ci[1] - ci[0]) / 2 / med

    @property
    def converged(self) -> bool:
        return self.n >= self.settings.min_samples and self.rel_ci <= self.settings.rel_ci

    @property
    def spread(self) -> float:
        """IQR / median: how disturbed the window was."""
        med = self.median
        return self.iqr / med if med > 0 else math.inf

    @property
    def quality(self) -> str:
        """"noisy" (IQR/median above the limit) > "capped" (CI not reached) > "ok"."""
        if self.spread > self.settings.noisy_iqr:
            return "noisy"
        return "ok" if self.converged else "capped"

    def summary(self) -> dict:
        """Milliseconds, for reports and ``hwcost measure --json``."""
        return {"latency_ms": self.median * 1e3, "p10_ms": self.p10 * 1e3, "p90_ms": self.p90 * 1e3,
                "n": self.n, "iqr_ms": self.iqr * 1e3, "rel_ci": _finite(self.rel_ci),
                "runs_per_sample": self.runs_per_sample, "quality": self.quality, "attempts": self.attempts,
                **({"passes": len(self.pass_medians), "pass_medians_ms": [_sig(v * 1e3) for v in self.pass_medians]}
                   if self.pass_medians else {})}

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


def cpu_block_timer(clock: Callable[[], float] = time.perf_counter) -> BlockTimer:
    """Elapsed ``clock`` seconds of k back-to-back calls (the CPU backends' timer)."""

    def time_block(fn, k: int) -> float:
        t0 = clock()
        for _ in range(k):
            fn()
        return clock() - t0

    return time_block


def _noop() -> None:
    return None


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

    def overhead(self, k: int, reps: int = 7) -> float:
        """Seconds a block of k empty calls takes: the timer's and the loop's own cost."""
        return sorted(self.block_timer(_noop, k) for _ in range(reps))[reps // 2]

    def warmup(self) -> float:
        """Run until ``warmup_s`` has passed (at least twice); return the fastest run (s)."""
        s, start = self.settings, self.wall_clock()
        times = []
        while len(times) < 2 or (self.wall_clock() - start < s.warmup_s and len(times) < 10_000):
            times.append(self.block_timer(self.fn, 1))
            if self.wall_clock() - start >= s.max_time_s and len(times) >= 2:
                break
        return max(min(times[1:]), 1e-9)

    def measure(self) -> Measurement:
        """Measure; a noisy window (another process, a host neighbour) is retried
        ``noisy_retries`` times and the quietest window (lowest IQR/median) kept --
        the number a dedicated device would show."""
        start = self.wall_clock()
        best = self.measure_once()
        for attempt in range(2, self.settings.noisy_retries + 2):
            if best.quality != "noisy":
                break
            m = self.measure_once()
            best = m if m.spread < best.spread else best
            best.attempts = attempt
        best.elapsed_s = self.wall_clock() - start
        return best

    def measure_once(self) -> Measurement:
        """One window: warm-up, block sizing, overhead, samples until the CI or the cap."""
        s, start = self.settings, self.wall_clock()
        t_run = self.warmup()
        k = max(1, math.ceil(s.min_sample_s / t_run))
        overhead = self.overhead(k)
        samples: list[float] = []
        capped = False
        round_size = s.min_samples
        while True:
            for _ in range(round_size):
                samples.append(max(self.block_timer(self.fn, k) - overhead, 0.0) / k)
                if self.wall_clock() - start >= s.max_time_s and len(samples) >= 3:
                    capped = True
                    break
            m = Measurement(samples, k, overhead, capped, s, self.wall_clock() - start)
            if capped or (m.converged and not self.run_to_cap):
                m.capped = capped and not m.converged
                return m
            round_size = max(s.min_samples // 2, len(samples) // 4)  # geometric growth: few CI checks
