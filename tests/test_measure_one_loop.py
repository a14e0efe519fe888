"""One measurement loop: the remote runner (``profilers.runner``) and the local timer
(``profilers.measure``) are fed the same run times through a fake clock and must agree on
the median, the CI, the samples taken, the quality and when they stopped."""
import itertools
import math

import numpy as np
import pytest

from profilers import measure, runner
from profilers.measure import Settings, Timer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _scripted(times, overhead):
    """A clock, an op whose runs take ``times`` on it, and a block timer that costs ``overhead``."""
    clock, it = Clock(), iter(times)

    def fn():
        clock.t += next(it)

    def block_timer(f, k):
        t0 = clock()
        for _ in range(k):
            f()
        clock.t += overhead
        return clock() - t0

    return clock, fn, block_timer


def _noisy_then_quiet():
    return itertools.chain(itertools.islice(itertools.cycle([1e-3, 2e-3]), 300), itertools.repeat(1.2e-3))


CASES = {  # name: (run times, settings shared by both paths, timer overhead per block)
    "converges": (lambda: itertools.repeat(1e-4), dict(rel_ci=0.02, max_time_s=2.0, min_sample_s=5e-4,
                                                       warmup_s=0.01, min_samples=10), 2e-6),
    "capped and noisy": (lambda: itertools.cycle([1e-3, 2e-3]), dict(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4,
                                                                     warmup_s=0.01, noisy_retries=0), 0.0),
    "retried": (_noisy_then_quiet, dict(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4, warmup_s=0.01,
                                        noisy_retries=2), 1e-6),
    "slow CI": (lambda: iter(np.random.default_rng(0).lognormal(math.log(1e-3), 0.02, 10**6).tolist()),
                dict(rel_ci=0.002, max_time_s=3.0, min_sample_s=1e-3, warmup_s=0.05, min_samples=12), 3e-7),
    "warm-up past half the cap": (lambda: itertools.repeat(2e-3), dict(rel_ci=0.05, max_time_s=0.02,
                                                                       min_sample_s=1e-3, warmup_s=1.0), 0.0),
}


@pytest.mark.parametrize("case", CASES)
def test_runner_and_local_timer_give_the_same_measurement(case):
    times, shared, overhead = CASES[case]
    local = Settings(**shared)
    remote = runner.check_settings(shared, "test")
    clock_r, fn_r, bt_r = _scripted(times(), overhead)
    row = runner.measure(fn_r, remote, block_timer=bt_r, clock=clock_r)
    clock_l, fn_l, bt_l = _scripted(times(), overhead)
    m = Timer(fn_l, local, bt_l, clock_l).measure()
    assert clock_r.t == clock_l.t   # the same stop decision, at the same moment
    assert row["n"] == m.n and row["runs_per_sample"] == m.runs_per_sample
    assert row["median_ms"] == m.median * 1e3 and row["p10_ms"] == m.p10 * 1e3 and row["p90_ms"] == m.p90 * 1e3
    assert row["iqr_ms"] == m.iqr * 1e3 and row["quality"] == m.quality
    assert row["rel_ci"] == (m.rel_ci if math.isfinite(m.rel_ci) else None)
    assert row["overhead_ms"] == m.overhead_s * 1e3 == pytest.approx(overhead * 1e3)
    assert row.get("attempts", 1) == m.attempts


def test_each_statistic_has_one_copy():
    assert measure.median_ci_ranks is runner.median_ci_ranks
    assert measure.cpu_block_timer is runner.cpu_block_timer
    m = measure.Measurement([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 8.0, 7.0])
    assert m.median == runner.quantile(sorted(m.samples), 0.5) == 4.5
    # the one check schedule: a window stops by its CI, by its cap or (runner) by max_samples
    clock, fn, bt = _scripted(itertools.repeat(1e-3), 0.0)
    w = runner.sample_window(fn, dict(runner.DEFAULT_SETTINGS, max_samples=4, rel_ci=1e-9), bt, clock)
    assert len(w["samples"]) == 4 and w["capped"]
