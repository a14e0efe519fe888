"""Is this machine quiet enough to measure on? The host check behind ``hwcost host``.

The host's reference kernel (:func:`profilers.profile.reference_module`, the
one a profile times beside its passes) runs back to back on one thread in
short windows; the spread of the windows' medians says whether the machine
keeps one speed. On a dedicated board they agree within a few percent; on a
shared VM they move together in phases of a second or more, which no per-key
statistic sees (every sample of a key falls in one phase).

It also says what a slow phase is made of. Each call is timed by the wall
clock and by the thread's CPU time, and on Linux the VM's steal time
(``/proc/stat``) is read around each window. If the vCPU is taken away (steal,
or another process of the machine), the CPU time stays put while the wall
clock runs on: a CPU-time clock would take such phases out. If the CPU time
moves with the wall clock, the vCPU ran the whole time, only slower (a busy
sibling hyperthread, shared cache or memory bandwidth, a lower clock): no clock
takes that out; measure in the quiet phases, or on a quieter host.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

from device_tables.errors import HwcostError

from .environment import host_label
from .measure import QUIET_SPREAD

QUIET = QUIET_SPREAD   # windows' p90 / p10 at most this: the host keeps one speed (figures to +-5% within reach)
NOISY = 1.15     # above this: a single measurement can be off by more than +-10%


def steal_ms() -> float | None:
    """The VM's steal time so far (``/proc/stat``, all CPUs), ms; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1e3 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class HostCheck:
    """What :func:`check_host` saw: the windows' medians (us per call) and what they say."""
    host: str
    load: tuple[float, float, float] | None
    seconds: float
    window_s: float
    windows_us: list[float]
    cpu_windows_us: list[float] | None     # None: the thread's CPU clock is too coarse to time one call
    steal_window_ms: list[float] | None    # per window; None where /proc/stat cannot be read
    median_us: float
    spread: float                          # p90 / p10 of the windows' medians (max / min under 10 windows)
    rating: str                            # quiet | phases | noisy
    kind: str | None                       # of the phases: "contention" or "steal"; None when quiet
    kernel: str = "conv 3x3, 64 -> 64 channels at 32x32, BN, ReLU (profilers.profile.reference_module)"

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report, one line a fact; the last ones say what to do."""
        lo, hi = min(self.windows_us), max(self.windows_us)
        load = f"; load average {'/'.join(f'{v:.2f}' for v in self.load)}" if self.load else ""
        out = [f"host: {self.host}, {os.cpu_count()} logical cores{load}",
               f"reference kernel: {self.kernel}, one thread, {len(self.windows_us)} windows of {self.window_s:g} s",
               "window medians (us): " + " ".join(f"{m:.0f}" for m in self.windows_us),
               f"median {self.median_us:.0f} us; min {lo:.0f}, max {hi:.0f}; p90 / p10 {self.spread:.2f}"]
        if self.cpu_windows_us:
            ratio = [w / c for w, c in zip(self.windows_us, self.cpu_windows_us)]
            out.append(f"the thread's CPU time per call: window medians {min(self.cpu_windows_us):.0f}-"
                       f"{max(self.cpu_windows_us):.0f} us; wall / CPU time per window {min(ratio):.3f}-{max(ratio):.3f}")
        else:
            out.append("the thread's CPU clock is too coarse here to time one call: no check of what the phases are")
        if self.steal_window_ms is not None:
            out.append(f"steal time (the hypervisor ran something else on this VM's vCPUs; /proc/stat, all CPUs "
                       f"together): {sum(self.steal_window_ms):.0f} ms over {self.seconds:g} s, at most "
                       f"{max(self.steal_window_ms):.0f} ms in a window")
        if self.kind:   # a kind is only ever given with the CPU times it was told from
            c_lo, c_hi = min(self.cpu_windows_us), max(self.cpu_windows_us)
        if self.kind == "contention":
            out.append(f"the slow windows ran on the CPU the whole time, only slower (per call, its CPU time moved "
                       f"{c_hi / c_lo - 1:.0%}, its wall time {hi / lo - 1:.0%}): contention for the core's caches or "
                       f"memory, or its clock, not steal; no clock takes it out")
        elif self.kind == "steal":
            out.append(f"the slow windows lost the CPU (per call, its CPU time moved only {c_hi / c_lo - 1:.0%}, its "
                       f"wall time {hi / lo - 1:.0%}): taken by the hypervisor (steal) or by another process of this "
                       f"machine")
        if self.rating == "quiet":
            out.append(f"verdict: quiet (p90 / p10 {self.spread:.2f} <= {QUIET}): measurements here should repeat within "
                       f"a few percent; profile and calibrate now")
        elif self.rating == "phases":
            out.append(f"verdict: phases (p90 / p10 {self.spread:.2f}): a measurement can be a few percent off the "
                       f"host's quiet speed; tables keep each key's quietest pass, calibrate and verify measure the "
                       f"reference kernel beside them and say when a phase was missed")
        else:
            out.append(f"verdict: noisy (p90 / p10 {self.spread:.2f} > {NOISY}): one measurement can be more than 10% "
                       f"off another of the same network; figures to +-5% are below what this host repeats. Profile, "
                       f"calibrate and verify in one sitting, or use a quieter machine")
        out.append(f"({self.seconds:g} s sees phases of seconds; slower ones show as the phase notes of `profile`, "
                   f"`measure` and `calibrate`: run `hwcost host` again before calibrating)")
        return out


def rate(windows_us: list[float], cpu_windows_us: list[float] | None) -> tuple[float, str, str | None]:
    """(spread, rating, kind) of a check's windows: the spread is p90 / p10 of their medians (max /
    min under 10 windows); the phases are *steal* when the thread's CPU time per call moved less than
    half as much as its wall time, else *contention*."""
    if len(windows_us) >= 10:
        dec = statistics.quantiles(windows_us, n=10)
        spread = dec[-1] / dec[0]
    else:
        spread = max(windows_us) / min(windows_us)
    rating = "quiet" if spread <= QUIET else "phases" if spread <= NOISY else "noisy"
    kind = None
    if max(windows_us) / min(windows_us) > QUIET_SPREAD and cpu_windows_us:
        c = max(cpu_windows_us) / min(cpu_windows_us) - 1
        kind = "contention" if c > (max(windows_us) / min(windows_us) - 1) / 2 else "steal"
    return spread, rating, kind


def check_host(seconds: float = 12.0, window_s: float = 0.25) -> HostCheck:
    """Time the reference kernel on one thread (eager PyTorch) in ``window_s`` windows for ``seconds``."""
    if not (seconds > 0 and window_s > 0):
        raise HwcostError(f"the check needs positive seconds and window (got {seconds:g} s, {window_s:g} s)")
    if seconds < 2 * window_s:
        raise HwcostError(f"{seconds:g} s holds fewer than two windows of {window_s:g} s: nothing to compare")
    import torch

    from .profile import reference_module
    module, shape = reference_module()
    module.eval()
    x = torch.randn(*shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wall, cpu, steal = [], [], []
    try:
        with torch.no_grad():
            for _ in range(20):     # warm-up: first calls allocate and pick kernels
                module(x)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                w, c, stop = [], [], time.perf_counter() + window_s
                s0 = steal_ms()
                while time.perf_counter() < stop:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    module(x)
                    c.append(time.thread_time() - c0)
                    w.append(time.perf_counter() - t0)
                s1 = steal_ms()
                wall.append(statistics.median(w) * 1e6)
                cpu.append(statistics.median(c) * 1e6)
                steal.append(s1 - s0 if s0 is not None and s1 is not None else None)
    finally:
        torch.set_num_threads(threads)
    cpu_ok = cpu if min(cpu) > 0 else None    # some platforms tick the thread clock in ms
    spread, rating, kind = rate(wall, cpu_ok)
    try:
        load = tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        load = None
    return HostCheck(host=host_label(), load=load, seconds=seconds, window_s=window_s, windows_us=wall,
                     cpu_windows_us=cpu_ok, steal_window_ms=None if None in steal else steal,
                     median_us=statistics.median(wall), spread=spread, rating=rating, kind=kind)
