#!/usr/bin/env python3
"""hwcost remote runner: time every op model of a bundle with ONNX Runtime on this device.

    python3 runner.py bundle.zip --out results.json [--threads 1] [--rel-ci 0.02]
                      [--max-time 2] [--passes 10] [--provider CPUExecutionProvider] [--resume]
    python3 bundle.zip --out results.json ...     (the bundle runs this file itself)

A single file that needs only Python 3.8+, numpy and onnxruntime, so that it
runs on a Raspberry Pi, an Android phone under Termux or any Linux board
(``pip install numpy onnxruntime``). It never imports torch or hwcost.

For each key of the bundle's ``manifest.json`` it builds an ONNX Runtime
session with a fixed number of intra-op threads, warms up, and then takes
samples of ``k`` back-to-back runs each (``k`` chosen so a sample lasts at
least ~0.5 ms, so the timer's resolution does not matter; the time of ``k``
empty calls is measured and subtracted), until the
half-width of the median's 95% confidence interval -- distribution-free, from
order statistics -- is under ``--rel-ci`` of the median, or the per-key time
cap is hit (quality "ok" or "capped"; "noisy" when IQR/median > 10%). This file
holds the one copy of that loop and its statistics: the local profiler
(``profilers.measure``) imports them, so both measure alike.
The median is reported rather than the mean because it is robust to the
occasional preemption by another process. The keys are measured in
``--passes`` (default 10) interleaved passes over all of them, one window of
``max_time / passes`` per key and pass, and each key keeps its quietest pass
(lowest median): slow phases (a busy neighbour, thermal throttling) last
seconds, longer than one window, and only add time.

If the bundle ships calibration networks (manifest ``calibration``: whole
networks of the space as ONNX, each with the spec that rebuilds it), they are
timed after the keys, in the same passes and windows, and written under
``calibration`` in the results: ``hwcost table import`` fits the table's
in-context model on them, as ``hwcost calibrate`` does for a local table.

If the bundle ships an empty op (manifest ``call_overhead``), it is timed first,
the same way: a local ONNX Runtime profile's ``call_overhead_ms``, which lets
``hwcost predict`` subtract the per-call cost every isolated op includes.

Each measured key is appended to a journal (``<out>.journal``, JSON lines,
flushed and fsynced) so an interrupted run continues with ``--resume``; at
the end ``<out>`` is written atomically and the journal removed.  Exit status:
0 all keys measured, 1 some keys failed (listed in the results), 2 bad input
(a bad zip, a missing manifest, an unsupported manifest version, ...), 130
interrupted.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone

MANIFEST_FORMAT = "hwcost.bundle"
MANIFEST_VERSIONS = (1,)
RESULTS_FORMAT = "hwcost.runner_results"
RESULTS_VERSION = 1
JOURNAL_FORMAT = "hwcost.runner_journal"
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
# Measurement settings the manifest may set and the command line may override.
DEFAULT_SETTINGS = {
    "provider": "CPUExecutionProvider",
    "threads": 1,
    "rel_ci": 0.02,        # stop when the median's 95% CI half-width is under this fraction of it
    "max_time_s": 2.0,     # per-key cap on warm-up + sampling
    "warmup_s": 0.2,       # per-key warm-up (first runs allocate, JIT kernels, fill caches)
    "min_sample_s": 0.0005,  # a sample is k runs lasting at least this long
    "min_samples": 10,
    "max_samples": 100000,
    "noisy_iqr": 0.10,     # IQR / median above this -> quality "noisy" (as the local profiler)
    "noisy_retries": 2,    # with one pass, re-measure a noisy key up to this often; keep the quietest window
    "seed": 0,
    "passes": 10,          # interleaved passes over all keys; each key keeps its quietest
}
CONFIDENCE = 0.95
# How every op is timed here, in the words a local ONNX Runtime profile records (measurement.isolation):
# each op model runs alone in its own session, so each time includes one run() call's overhead.
ISOLATION = "one ONNX Runtime session per op model"
# The journal row of the empty op the bundle ships (manifest "call_overhead"); not an op key.
CALL_OVERHEAD_KEY = "(call overhead: empty op)"
# Calibration networks (manifest "calibration") are measured as keys named with this prefix.
NETWORK_PREFIX = "network:"
# The environment fields that must agree for a journal to be resumed on this device.
_ENV_IDENTITY = ("device_name", "cpu_model", "machine", "onnxruntime", "provider", "threads")


class RunnerError(Exception):
    """Bad input: printed as one line, exit status 2."""


# ---------------------------------------------------------------- statistics
# The one copy of the measurement statistics and of the stopping loop: profilers.measure (the local
# profiler) imports them from here, so a runner's table and a local one are measured the same way.

@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE):
    """0-based ranks (lo, hi) of a distribution-free CI for the median of n samples, or None.

    The number of samples below the true median is Binomial(n, 1/2), so
    [x_(j), x_(n+1-j)] (1-based order statistics) covers the median with
    probability 1 - 2 P(B <= j-1); j is the largest rank keeping that >=
    ``confidence``. Exact (integer arithmetic) for n <= 1000, normal approximation above.
    """
    alpha = 1.0 - confidence
    if n > 1000:
        z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
        j = int(math.floor(n / 2.0 - z * math.sqrt(n) / 2.0))
        return (j - 1, n - j) if j >= 1 else None
    total, cdf, j, term = 2 ** n, 0, 0, 1  # term = C(n, i)
    for i in range(n):
        cdf += term  # now P(B <= i) * 2**n
        if 2 * cdf > alpha * total:
            break
        j = i + 1
        term = term * (n - i) // (i + 1)
    return (j - 1, n - j) if j >= 1 else None


def quantile(srt, q: float) -> float:
    """Linear interpolation between order statistics of sorted data (numpy's default)."""
    pos = q * (len(srt) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(srt) - 1)
    return srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)


def relative_ci(srt, median: float, confidence: float = CONFIDENCE) -> float:
    """Half-width of the median's CI relative to the median (inf when n is too small)."""
    ranks = median_ci_ranks(len(srt), confidence)
    if ranks is None or median <= 0:
        return math.inf
    return (srt[ranks[1]] - srt[ranks[0]]) / (2.0 * median)


def summarize(samples, s) -> dict:
    """What a window's per-run times (seconds) say, judged by settings ``s`` (rel_ci, min_samples,
    noisy_iqr, optional confidence): median, p10/p90, IQR, the median's CI, and the quality flag --
    "noisy" (IQR/median over noisy_iqr: too disturbed to trust) > "capped" (CI not reached) > "ok"."""
    srt = sorted(samples)
    med = quantile(srt, 0.5)
    ranks = median_ci_ranks(len(srt), s.get("confidence", CONFIDENCE))
    rel = relative_ci(srt, med, s.get("confidence", CONFIDENCE))
    iqr = quantile(srt, 0.75) - quantile(srt, 0.25)
    spread = iqr / med if med > 0 else math.inf
    converged = len(srt) >= s["min_samples"] and rel <= s["rel_ci"]
    return {"sorted": srt, "median": med, "p10": quantile(srt, 0.10), "p90": quantile(srt, 0.90), "iqr": iqr,
            "ci": None if ranks is None else (srt[ranks[0]], srt[ranks[1]]), "rel_ci": rel, "spread": spread,
            "converged": converged,
            "quality": "noisy" if spread > s["noisy_iqr"] else "ok" if converged else "capped"}


def cpu_block_timer(clock=time.perf_counter):
    """A block timer: the elapsed ``clock`` seconds of k back-to-back calls of ``fn``."""

    def time_block(fn, k: int) -> float:
        t0 = clock()
        for _ in range(k):
            fn()
        return clock() - t0

    return time_block


def _noop() -> None:
    return None


def window_settings(s: dict) -> dict:
    """One pass's settings: ``max_time_s`` is a key's cap over all its passes, and with several
    passes a noisy window is not retried (the other passes are its retries)."""
    if s["passes"] == 1:
        return s
    return dict(s, max_time_s=s["max_time_s"] / s["passes"], noisy_retries=0, passes=1)


def sample_window(fn, s, block_timer=None, clock=time.perf_counter, run_to_cap: bool = False) -> dict:
    """One measurement window of ``fn`` (one run of the op): warm up, size blocks, measure the timer's
    own cost, then sample until the median's CI is narrow enough or the time cap is hit.

    ``s`` holds rel_ci, max_time_s, warmup_s, min_sample_s, min_samples and optionally confidence and
    max_samples. ``block_timer(fn, k)`` returns the seconds k back-to-back calls take (``perf_counter``
    around them by default; CUDA events on a GPU) and ``clock`` counts warm-up and the cap: both are
    injectable, so tests drive this loop with a fake clock. ``run_to_cap`` samples until the cap even
    once the CI is met (paced windows). Returns per-run seconds, the overhead subtracted from each
    block, k, whether the CI was missed, the time spent and the warm-up runs.

    * Warm-up: at least 2 runs and ``warmup_s``, never past half the cap (the rest is for samples).
    * Blocks: k runs with k sized on the fastest warm-up run after the first, so a sample lasts
      >= ``min_sample_s`` and the clock's resolution does not matter.
    * Overhead: the median of 7 blocks of k empty calls -- the loop's and the clock's own cost --
      is subtracted from every block.
    * Stop: the CI is judged at ``min_samples`` and then every ~10 % more samples; the cap ends a
      window once it has 3 samples.
    """
    time_block = block_timer or cpu_block_timer(clock)
    start = clock()
    warmup_s = min(s["warmup_s"], s["max_time_s"] / 2)
    warm = []
    while len(warm) < 2 or (clock() - start < warmup_s and len(warm) < 10_000):
        warm.append(time_block(fn, 1))
    k = max(1, int(math.ceil(s["min_sample_s"] / max(min(warm[1:]), 1e-9))))
    overhead = sorted(time_block(_noop, k) for _ in range(7))[3]
    confidence, max_samples = s.get("confidence", CONFIDENCE), s.get("max_samples") or math.inf
    samples, next_check = [], s["min_samples"]
    while True:
        samples.append(max(time_block(fn, k) - overhead, 0.0) / k)
        n = len(samples)
        capped = n >= 3 and clock() - start >= s["max_time_s"]
        if capped or n >= next_check or n >= max_samples:
            srt = sorted(samples)
            met = n >= s["min_samples"] and relative_ci(srt, quantile(srt, 0.5), confidence) <= s["rel_ci"]
            if capped or n >= max_samples or (met and not run_to_cap):
                return {"samples": samples, "runs_per_sample": k, "overhead_s": overhead, "capped": not met,
                        "elapsed_s": clock() - start, "warmup_runs": len(warm)}
            next_check = max(n + 5, int(n * 1.1))  # re-check geometrically: sorting stays cheap


def retry_noisy(once, retries: int, noisy, spread):
    """``once()`` measures a window; a noisy one (another process, a host neighbour) is measured
    again up to ``retries`` times and the quietest (lowest ``spread``) kept -- the number a dedicated
    device would show. Returns (window, windows taken)."""
    best, attempts = once(), 1
    while attempts <= retries and noisy(best):
        w = once()
        attempts += 1
        best = w if spread(w) < spread(best) else best
    return best, attempts


# ---------------------------------------------------------------- environment

def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _getprop(name: str) -> str:
    exe = shutil.which("getprop")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (x86 'model name', ARM 'Hardware'/'Model'), else platform."""
    fields = {}
    for line in _read("/proc/cpuinfo").splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    for name in ("model name", "hardware", "cpu model", "processor", "model"):
        value = fields.get(name, "")
        if value and not value.isdigit():
            return value
    return platform.processor() or platform.machine() or "unknown"


def device_environment(ort, provider: str, threads: int, device_name: str | None = None) -> dict:
    """What a latency depends on besides the model: the board, the runtime, the threads."""
    android_model = _getprop("ro.product.model")
    board = (_read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")).strip("\x00 \n")
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    import numpy
    env = {
        "device_name": device_name or android_model or board or cpu,
        "android_model": android_model or None,
        "android_manufacturer": (_getprop("ro.product.manufacturer") or None) if android_model else None,
        "board": board or None,
        "cpu_model": cpu,
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": ort.__version__,
        "backend": backend_name(provider),
        "provider": provider,
        "threads": threads,
        "timer": "time.perf_counter",
        "timer_resolution_s": time.get_clock_info("perf_counter").resolution,
        "timer_overhead_s": timer_overhead(),
    }
    return env


def backend_name(provider: str) -> str:
    """The backend's name as a local profile records it (``runtime.backend``): ONNX Runtime on the CPU
    is ``ort-cpu``, on another execution provider ``ort:<provider>`` -- one name for one runtime, so
    a runner's table merges with a local one."""
    return "ort-cpu" if provider == "CPUExecutionProvider" else f"ort:{provider}"


def timer_overhead(n: int = 200) -> float:
    """Median cost of one perf_counter pair: recorded; negligible against >= 0.5 ms samples."""
    pc = time.perf_counter
    d = []
    for _ in range(n):
        t0 = pc()
        d.append(pc() - t0)
    d.sort()
    return d[n // 2]


# ---------------------------------------------------------------- bundle

def _fail(what: str):
    raise RunnerError(what)


def check_settings(d: dict, where: str) -> dict:
    if not isinstance(d, dict):
        _fail(f"{where}: settings must be an object")
    unknown = sorted(set(d) - set(DEFAULT_SETTINGS))
    if unknown:
        _fail(f"{where}: unknown setting(s) {', '.join(unknown)}")
    s = dict(DEFAULT_SETTINGS, **d)
    for name in ("threads", "min_samples", "max_samples", "seed", "passes", "noisy_retries"):
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name in ("seed", "noisy_retries") else 1):
            _fail(f"{where}: {name} must be a positive integer, got {v!r}")
    for name in ("rel_ci", "max_time_s", "warmup_s", "min_sample_s", "noisy_iqr"):
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (v == 0 and name in ("rel_ci", "max_time_s", "noisy_iqr")):
            _fail(f"{where}: {name} must be a positive number, got {v!r}")
        s[name] = float(v)
    if not isinstance(s["provider"], str) or not s["provider"]:
        _fail(f"{where}: provider must be a non-empty string, got {s['provider']!r}")
    return s


def _check_input(d, where: str) -> dict:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        _fail(f"{where}: an input must be an object with a name, shape and dtype")
    shape = d.get("shape")
    if not isinstance(shape, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape):
        _fail(f"{where}: input {d['name']!r} needs a shape of positive integers, got {shape!r}")
    if d.get("dtype") not in DTYPES:
        _fail(f"{where}: input {d['name']!r} has dtype {d.get('dtype')!r}; supported: {', '.join(DTYPES)}")
    return d


def open_bundle(path: str):
    """Open and validate the bundle; returns (zipfile, manifest, bundle_id)."""
    if not os.path.isfile(path):
        _fail(f"bundle {path} does not exist (or is not a file)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        _fail(f"{path} is not a readable zip file ({e}); copy the bundle again")
    try:
        raw = zf.read("manifest.json")
    except KeyError:
        _fail(f"{path} has no manifest.json: not an hwcost bundle (make one with `hwcost bundle`)")
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        _fail(f"{path}: cannot read manifest.json ({e}); copy the bundle again")
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        _fail(f"{path}: manifest.json is not valid JSON ({e})")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        _fail(f"{path}: manifest.json is not an hwcost bundle manifest (format {found!r}, "
              f"expected {MANIFEST_FORMAT!r})")
    version = m.get("version")
    if version not in MANIFEST_VERSIONS:
        _fail(f"{path}: manifest version {version!r} is not supported by this runner (it reads "
              f"{', '.join(map(str, MANIFEST_VERSIONS))}); use the runner.py shipped inside the same bundle")
    m["settings"] = check_settings(m.get("settings", {}), f"{path}: manifest settings")
    keys = m.get("keys")
    # a verify bundle (`hwcost verify`) holds whole networks only: no op keys, calibration networks
    if not isinstance(keys, list) or not (keys or m.get("calibration")):
        _fail(f"{path}: manifest.json lists no keys")
    names = set(zf.namelist())
    co = m.get("call_overhead")  # optional (bundles before it lack it): the empty op's model
    if co is not None:
        where = f"{path}: manifest call_overhead"
        if not isinstance(co, dict) or not isinstance(co.get("model"), str) or not isinstance(co.get("inputs"), list):
            _fail(f"{where}: needs a 'model' string and an 'inputs' list")
        if co["model"] not in names:
            _fail(f"{where}: model file {co['model']} is missing from the zip")
        for d in co["inputs"]:
            _check_input(d, where)
    nets = m.get("calibration")  # optional: whole networks for the table's in-context model
    if nets is not None and not isinstance(nets, list):
        _fail(f"{path}: manifest calibration must be a list")
    for i, k in enumerate(nets or []):
        if not isinstance(k, dict) or not isinstance(k.get("name"), str) or not isinstance(k.get("spec"), dict):
            _fail(f"{path}: manifest calibration[{i}]: needs a 'name' string and a 'spec' object")
    seen = set()
    for i, k in enumerate(keys + calibration_keys(m)):
        where = f"{path}: manifest keys[{i}]"
        if not isinstance(k, dict) or not isinstance(k.get("key"), str) or not isinstance(k.get("model"), str):
            _fail(f"{where}: needs 'key' and 'model' strings")
        if k["key"] in seen:
            _fail(f"{where}: key {k['key']} is listed twice")
        seen.add(k["key"])
        if k["model"] not in names:
            _fail(f"{where}: model file {k['model']} is missing from the zip")
        if not isinstance(k.get("inputs"), list):
            _fail(f"{where}: needs an 'inputs' list")
        for d in k["inputs"]:
            _check_input(d, where)
    return zf, m, hashlib.sha256(raw).hexdigest()


def calibration_keys(manifest: dict) -> list:
    """The manifest's calibration networks as keys the measurement loop runs (``network:NAME``)."""
    return [dict(k, key=NETWORK_PREFIX + k["name"]) for k in manifest.get("calibration") or []]


# ---------------------------------------------------------------- measurement

def make_feed(np, inputs: list, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for d in inputs:
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            feed[d["name"]] = rng.standard_normal(d["shape"]).astype(dtype)
        else:
            feed[d["name"]] = np.zeros(d["shape"], dtype=dtype)
    return feed


def make_session(ort, model_bytes: bytes, provider: str, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=[provider])


def measure(run, s: dict, block_timer=None, clock=time.perf_counter) -> dict:
    """One key's window (:func:`sample_window`; a noisy one retried ``noisy_retries`` times, the
    quietest kept), as a result row. ``run()`` executes the model once. Times are seconds inside,
    ms in the result."""

    def once():
        w = sample_window(run, s, block_timer, clock)
        return w, summarize(w["samples"], s)

    (w, st), attempts = retry_noisy(once, s.get("noisy_retries", 0), lambda ws: ws[1]["quality"] == "noisy",
                                    lambda ws: ws[1]["spread"])
    row = {
        "median_ms": st["median"] * 1e3,
        "p10_ms": st["p10"] * 1e3,
        "p90_ms": st["p90"] * 1e3,
        "min_ms": st["sorted"][0] * 1e3,
        "iqr_ms": st["iqr"] * 1e3,
        "n": len(st["sorted"]),
        "runs_per_sample": w["runs_per_sample"],
        "rel_ci": st["rel_ci"] if math.isfinite(st["rel_ci"]) else None,
        "quality": st["quality"],
        "warmup_runs": w["warmup_runs"],
        "overhead_ms": w["overhead_s"] * 1e3,  # the timer's and loop's own cost per block: subtracted
    }
    if attempts > 1:
        row["attempts"] = attempts
    return row


def _session_runner(np, ort, model_bytes: bytes, k: dict, settings: dict):
    """A session for one op model and a function that runs it once on fixed random inputs."""
    sess = make_session(ort, model_bytes, settings["provider"], settings["threads"])
    if sess.get_providers()[0] != settings["provider"]:  # ORT falls back silently
        raise RuntimeError(f"{settings['provider']} could not take the model; "
                           f"onnxruntime fell back to {sess.get_providers()[0]}")
    feed = make_feed(np, k["inputs"], settings["seed"])
    names = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(names, feed)


def measure_call_overhead(np, ort, model_bytes: bytes, entry: dict, settings: dict) -> dict:
    """The empty op's time, as every key is timed (its own session, ``settings["passes"]`` windows of
    ``max_time_s / passes``, the quietest kept): what each isolated op pays once and a network once in
    total -- a local ORT profile's ``measurement.call_overhead_ms``. A failure is a row with ``error``."""
    t0 = time.perf_counter()
    passes = settings["passes"]
    window = window_settings(settings)
    try:
        run_once = _session_runner(np, ort, model_bytes, entry, settings)
        rows = []
        for p in range(1, passes + 1):
            t_pass = time.perf_counter()
            rows.append(dict(measure(run_once, window), time_s=round(time.perf_counter() - t_pass, 3), **{"pass": p}))
        row = quietest_pass(rows)
    except Exception as e:  # noqa: BLE001 - as for a key: recorded, and the keys are still measured
        row = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:500] or type(e).__name__}"}
    row.update(key=CALL_OVERHEAD_KEY, time_s=round(time.perf_counter() - t0, 3))
    return row


def quietest_pass(rows: list) -> dict:
    """One key's result from its per-pass rows: the pass with the lowest median, with every pass's median."""
    best = dict(min(rows, key=lambda r: r["median_ms"]))
    best.update(passes=len(rows), quietest_pass=best.pop("pass"),
                pass_medians_ms=[r["median_ms"] for r in rows], time_s=round(sum(r["time_s"] for r in rows), 3))
    return best


# ---------------------------------------------------------------- journal and results

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str, doc: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


class Journal:
    """JSON lines: a header, then one row per key (or per key and pass), each flushed and fsynced.

    ``done`` maps a key to its final row (a single-pass result, a finished
    key from a results file, or an error); ``passes`` maps (key, pass) to a
    pass's row.
    """

    def __init__(self, path: str, header: dict, resume: bool):
        self.path, self.done, self.passes = path, {}, {}
        exists = os.path.exists(path)
        if exists and not resume:
            _fail(f"journal {path} exists from an interrupted run; pass --resume to continue it, "
                  f"or delete it to start over")
        if exists:
            self._load(header)
            self.f = open(path, "ab")
        else:
            self.header = header
            self.f = open(path, "xb")
            self.write(header)
            _fsync_dir(os.path.dirname(os.path.abspath(path)))

    def _load(self, header: dict) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn:
            try:
                json.loads(torn.decode("utf-8"))
                lines.append(torn)  # complete line whose newline was cut
                torn = b""
            except ValueError:
                pass  # a line cut mid-write: that key was never reported saved; measure it again
        if torn or not data.endswith(b"\n"):
            keep = data[: len(data) - len(torn)]
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
                if keep and not keep.endswith(b"\n"):
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        if not lines:
            with open(self.path, "wb") as f:  # killed while writing the header
                f.write(json.dumps(header).encode("utf-8") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.header = header
            return
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except ValueError:
                _fail(f"journal {self.path}: line {number} is corrupt; only a torn last line is "
                      f"repaired automatically, so inspect or delete the file")
        old = rows[0]
        if not isinstance(old, dict) or old.get("format") != JOURNAL_FORMAT:
            _fail(f"journal {self.path} is not a runner journal; delete it or choose another --out")
        check_resumable(old, header, f"journal {self.path}", "delete the journal to start over")
        self.header = old
        for number, row in enumerate(rows[1:], start=2):
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                _fail(f"journal {self.path}: line {number} is not a result row")
            if "pass" in row:
                self.passes[(row["key"], row["pass"])] = row
            elif "error" not in row:
                self.done[row["key"]] = row
            else:
                self.done.setdefault(row["key"], row)

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def check_resumable(old: dict, header: dict, what: str, otherwise: str) -> None:
    """Refuse to mix measurements of another bundle, other settings or another device."""
    diffs = []
    if old.get("bundle_id") != header["bundle_id"]:
        diffs.append("another bundle")
    for group, names in (("settings", sorted(header["settings"])), ("environment", _ENV_IDENTITY)):
        was = old.get(group) if isinstance(old.get(group), dict) else {}
        diffs += [f"{name}={was.get(name)!r} (now {header[group][name]!r})"
                  for name in names if was.get(name) != header[group][name]]
    if diffs:
        _fail(f"{what} was written with {', '.join(diffs)}; resume with the same bundle, settings "
              f"and device, or {otherwise}")


def journal_from_results(out: str, journal_path: str, header: dict) -> None:
    """--resume on a finished results file: keep its measured keys, retry its failed ones."""
    try:
        with open(out, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"cannot resume from {out}: {e}; pass --force to measure again")
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT or not isinstance(doc.get("bundle"), dict):
        _fail(f"cannot resume from {out}: not a runner results file; pass --force to overwrite it")
    old = {"format": JOURNAL_FORMAT, "version": RESULTS_VERSION, "bundle_id": doc["bundle"].get("id"),
           "started": doc.get("started"), "settings": doc.get("settings"), "environment": doc.get("environment")}
    check_resumable(old, header, out, "pass --force to measure again")
    rows = [old] + list(doc.get("results") or []) + list(doc.get("failed") or []) \
        + [{k: v for k, v in r.items() if k not in ("name", "spec")} for r in doc.get("calibration") or []
           if isinstance(r, dict) and "error" not in r]
    if isinstance(doc.get("call_overhead"), dict) and "error" not in doc["call_overhead"]:
        rows.append(dict(doc["call_overhead"], key=CALL_OVERHEAD_KEY))  # kept; a failed one is measured again
    with open(journal_path, "xb") as f:
        f.write(b"".join(json.dumps(r, allow_nan=False).encode("utf-8") + b"\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _import_runtime():
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        _fail(f"{e.name or 'a module'} is not installed; run `pip install numpy onnxruntime` "
              f"(on Termux: `pkg install python-numpy` first)")
    return np, ort


def run(args) -> int:
    zf, manifest, bundle_id = open_bundle(args.bundle)
    np, ort = _import_runtime()
    overrides = {"provider": args.provider, "threads": args.threads, "rel_ci": args.rel_ci,
                 "max_time_s": args.max_time, "warmup_s": args.warmup, "passes": args.passes}
    settings = check_settings(dict(manifest["settings"], **{k: v for k, v in overrides.items() if v is not None}),
                               "command line")
    available = ort.get_available_providers()
    if settings["provider"] not in available:
        _fail(f"execution provider {settings['provider']} is not available in this onnxruntime; "
              f"available: {', '.join(available)}")
    out = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(out)):
        _fail(f"cannot write {args.out}: directory {os.path.dirname(out)} does not exist")
    journal_path = out + ".journal"
    env = device_environment(ort, settings["provider"], settings["threads"], args.device_name)
    header = {"format": JOURNAL_FORMAT, "version": RESULTS_VERSION, "bundle_id": bundle_id,
              "started": _now(), "settings": settings, "environment": env}
    if args.force and os.path.exists(journal_path):
        os.unlink(journal_path)  # asked to measure again from scratch
    if os.path.exists(out) and not os.path.exists(journal_path) and not args.force:
        if not args.resume:
            _fail(f"{args.out} exists; pass --resume to retry its failed keys, or --force to overwrite it")
        journal_from_results(out, journal_path, header)
    journal = Journal(journal_path, header, args.resume)
    started = journal.header.get("started", header["started"])
    keys = manifest["keys"] + calibration_keys(manifest)
    passes = settings["passes"]
    window = window_settings(settings)

    def finished(key: str) -> bool:
        return "error" not in journal.done.get(key, {"error": 1})

    todo = [(p, k) for p in range(1, passes + 1) for k in keys
            if not finished(k["key"]) and (passes == 1 or (k["key"], p) not in journal.passes)]
    rows_total = len(keys) * passes
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if len(todo) < rows_total:
        say(f"resuming: {rows_total - len(todo)} of {rows_total} rows ({len(keys)} keys x {passes} passes) "
            f"already measured")
    say(f"{env['device_name']} | onnxruntime {env['onnxruntime']} {settings['provider']} | "
        f"{settings['threads']} thread(s) | {len(todo)} rows, {passes} interleaved pass(es), "
        f"<= {settings['max_time_s']:g} s per key")
    width, t_run = len(str(rows_total)), time.perf_counter()
    last = {k["key"]: p for p, k in todo}  # todo runs pass by pass
    runners, failed_now = {}, set()  # sessions are built once and kept for the key's later passes
    empty = manifest.get("call_overhead")
    try:
        if empty is not None and not finished(CALL_OVERHEAD_KEY):
            row = measure_call_overhead(np, ort, zf.read(empty["model"]), empty, settings)
            journal.write(row)
            journal.done[CALL_OVERHEAD_KEY] = row
            say(f"call overhead (an empty op, {ISOLATION}): " + (
                f"{row['median_ms']:.4g} ms" if "error" not in row else f"FAILED ({row['error'][:120]})"))
        for i, (p, k) in enumerate(todo):
            if k["key"] in failed_now:
                continue
            t_key = time.perf_counter()
            try:
                if k["key"] not in runners:
                    runners[k["key"]] = _session_runner(np, ort, zf.read(k["model"]), k, settings)
                row = {"key": k["key"], **measure(runners[k["key"]], window)}
                if passes > 1:
                    row["pass"] = p
                status = (f"{row['median_ms']:.4g} ms  ±{100 * (row['rel_ci'] or math.inf):.1f}%  "
                          f"n={row['n']}x{row['runs_per_sample']}  {row['quality']}")
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors (Fail, EPFail, ...) derive only
                # from Exception; a model this device cannot run is recorded and the others still measured
                msg = " ".join(str(e).split())[:500] or type(e).__name__
                row = {"key": k["key"], "error": f"{type(e).__name__}: {msg}"}
                status = f"FAILED ({row['error'][:120]})"
                failed_now.add(k["key"])
            row["time_s"] = round(time.perf_counter() - t_key, 3)
            journal.write(row)
            if "pass" in row:
                journal.passes[(k["key"], p)] = row
            else:
                journal.done[k["key"]] = row
            if p == last[k["key"]] or k["key"] in failed_now:
                runners.pop(k["key"], None)
            done = rows_total - len(todo) + i + 1
            elapsed = time.perf_counter() - t_run
            eta = elapsed / (i + 1) * (len(todo) - i - 1)
            pass_note = f"pass {p}/{passes} " if passes > 1 else ""
            say(f"[{done:>{width}}/{rows_total}] {pass_note}{k['key']}  {status}  "
                f"(elapsed {_hms(elapsed)}, eta {_hms(eta)})")
    except KeyboardInterrupt:
        journal.close()
        saved = sum("error" not in r for k, r in journal.done.items() if k != CALL_OVERHEAD_KEY) + len(journal.passes)
        print(f"runner: interrupted; {saved} rows are saved in {journal_path}; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    for k in keys:  # a key measured in every pass: its quietest pass
        mine = [journal.passes.get((k["key"], p)) for p in range(1, passes + 1)]
        if passes > 1 and not finished(k["key"]) and all(mine):
            journal.done[k["key"]] = quietest_pass(mine)
    journal.close()
    rows = [journal.done[k["key"]] for k in keys if not k["key"].startswith(NETWORK_PREFIX)]
    results = [r for r in rows if "error" not in r]
    failed = [{"key": r["key"], "error": r["error"]} for r in rows if "error" in r]
    # a network the device could not run is recorded with its error; the table is still imported
    calibration = [dict(journal.done[k["key"]], key=k["key"], name=k["name"], spec=k["spec"])
                   for k in keys if k["key"].startswith(NETWORK_PREFIX)]
    doc = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
           "bundle": {"id": bundle_id, "manifest_version": manifest["version"],
                      "created": manifest.get("created"), "producer": manifest.get("producer"),
                      "spaces": manifest.get("spaces"), "networks": manifest.get("networks"),
                      "dtype": manifest.get("dtype"), "batch": manifest.get("batch")},
           "started": started, "finished": _now(), "settings": settings, "environment": env,
           "isolation": ISOLATION, "results": results, "failed": failed}
    if calibration:
        doc["calibration"] = calibration
    if CALL_OVERHEAD_KEY in journal.done:  # the empty op (bundles that ship one)
        doc["call_overhead"] = {k: v for k, v in journal.done[CALL_OVERHEAD_KEY].items() if k != "key"}
    atomic_write_json(out, doc)
    os.unlink(journal_path)
    _fsync_dir(os.path.dirname(out))
    nets = f", {sum('error' not in r for r in calibration)} calibration networks" if calibration else ""
    say(f"wrote {args.out}: {len(results)} keys measured, {len(failed)} failed{nets}")
    if failed:
        print(f"runner: {len(failed)} key(s) failed, e.g. {failed[0]['key']}: {failed[0]['error']}; "
              f"they are listed under 'failed' in {args.out}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner.py", description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="the bundle .zip made by `hwcost bundle`")
    p.add_argument("--out", required=True, help="results file to write (JSON)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the bundle's, usually 1)")
    p.add_argument("--rel-ci", type=float, help="target relative 95%% CI half-width of the median (e.g. 0.02)")
    p.add_argument("--max-time", type=float, help="per-key cap on warm-up + sampling, seconds")
    p.add_argument("--warmup", type=float, help="per-key warm-up, seconds")
    p.add_argument("--passes", type=int, help="interleaved passes over all keys, each key keeping its quietest "
                                              "(default: the bundle's, usually 10)")
    p.add_argument("--provider", help="ONNX Runtime execution provider (default CPUExecutionProvider)")
    p.add_argument("--device-name", help="name to record for this device (default: detected)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run from its journal")
    again.add_argument("--force", action="store_true",
                       help="measure again from scratch: overwrite --out, discard an interrupted run's journal")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RunnerError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only directory: what was journaled is kept
        print(f"runner: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
