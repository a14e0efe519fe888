"""The profile pipeline: keys -> measurements -> a device table, crash-safely.

Every measured key is appended to a journal (flushed and fsynced) before the
next one starts, so an interrupted run -- Ctrl-C, a kill, a power cut --
resumes where it stopped and never loses or repeats a row. The table is
written atomically at the end and the journal removed.

With ``Settings.passes`` > 1 (the default is 10) the keys are measured in
that many passes over all of them, one short window each, and every key
keeps its quietest pass (``profilers.measure.combine_passes``): a shared
host's slow phases last seconds, so a key's windows seconds apart rarely all
fall in one. The journal holds one row per key and pass; ``--resume``
continues in the pass and at the key where the run stopped.
"""
from __future__ import annotations

import copy
import itertools
import warnings

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from device_tables import DeviceTable, Journal, OpKey
from spaces.errors import HwcostError

from .backends import Backend, sequence_refused
from .environment import device_info
from .measure import QUIET_SPREAD, Measurement, Settings, combine_passes
from .shapes import key_module, model_layer_keys, space_keys


class ProfileInterrupted(HwcostError):
    """Ctrl-C during a profile: the journal holds every row measured so far."""


@dataclass
class Job:
    """One key to measure and how to build what it stands for: a module and its inputs, or an
    :class:`spaces.onnx_graph.OnnxGraph` (for the ort backends) and ``()``."""
    key: OpKey
    build: Callable[[], tuple[nn.Module, tuple]]
    extra: dict = field(default_factory=dict)  # recorded in the entry (e.g. a layer's count)
    # a model's layer: every call of the key as (order, build), order = (model, position in its forward
    # pass); ``--context sequence`` times them in that order, each with its own module and input
    calls: tuple = ()


def space_jobs(space: str, configs, batch: int = 1) -> list[Job]:
    """Jobs for every op x shape of a space (modules are built when measured)."""
    return [Job(k, (lambda k=k: key_module(k))) for k in space_keys(space, configs, batch)]


_MODELS = itertools.count()  # tells the calls of models profiled together apart


def model_jobs(model: nn.Module, input_shape: tuple[int, ...]) -> list[Job]:
    """Jobs for every distinct layer of a model, each recording its count and its calls in the order the
    model runs them."""
    tag = next(_MODELS)
    return [Job(layer.key, (lambda layer=layer: (layer.module, layer.inputs)), {"count": layer.count},
                tuple(((tag, position), (lambda m=m, ins=ins: (m, ins))) for position, m, ins in layer.calls))
            for layer in model_layer_keys(model, input_shape)]


def onnx_jobs(graph, level: str = "all", providers=("CPUExecutionProvider",)) -> list[Job]:
    """Jobs for every distinct node key of an ONNX model's graph as ONNX Runtime optimises it at
    ``level`` (:mod:`spaces.onnx_graph`): each builds a one-node model, run as is; each records its count."""
    from spaces.onnx_graph import graph_nodes, node_graph
    nodes = graph_nodes(graph, level, providers)
    counts = nodes.counts()
    return [Job(key, (lambda node=node: (node_graph(nodes, node), ())), {"count": counts[key]})
            for key, node in nodes.first_nodes().items()]


def jobs_for(model, input_shape: tuple[int, ...], level: str = "all",
             providers=("CPUExecutionProvider",)) -> list[Job]:
    """The jobs of a PyTorch model (:func:`model_jobs`, its layers) or of an ONNX graph
    (:func:`onnx_jobs`, its nodes at ``level``)."""
    from spaces.onnx_graph import OnnxGraph
    if isinstance(model, OnnxGraph):
        return onnx_jobs(model, level, providers)
    return model_jobs(model, input_shape)


def journal_path(out: str | Path) -> Path:
    return Path(str(out) + ".journal")


CONTEXTS = ("alone", "sequence")
SEQUENCE_KEYS = 32  # calls timed together in one sequence (--context sequence): a layer's neighbours


def _context_record(context: str) -> dict:
    if context == "alone":
        return {}
    return {"context": context,
            "context_note": f"every call of a model's layer keys timed in the order the model runs them (a "
                            f"space's keys in profile order), in runs of {SEQUENCE_KEYS} calls, one call at a time, "
                            f"round after round, each with its own module and its input rewritten just before "
                            f"(host clock, per call); a key pools its calls' samples; 'noisy' from an IQR of 30% "
                            f"of the median"}


def _call_builds(job: Job) -> list[Callable[[], tuple[nn.Module, tuple]]]:
    """The builds of a job's calls: every call of its key in a model (:attr:`Job.calls`), else its one build."""
    return [build for _, build in job.calls] or [job.build]


def _steps(todo: list, context: str) -> list[list]:
    """What is measured together: ``todo`` ((pass, job) in pass order) as lists of (pass, job, call index).

    Alone: one job (its first call) a step. Sequence: each pass's calls -- every call of a model's layer keys,
    in the order the model runs them (:attr:`Job.calls`), a space's keys in profile order -- in runs of
    ``SEQUENCE_KEYS``."""
    if context == "alone":
        return [[(number, job, 0)] for number, job in todo]
    steps: list[list] = []
    by_pass: dict[int, list] = {}
    for index, (number, job) in enumerate(todo):
        calls = job.calls or (((1 << 62, index), job.build),)   # a key without calls: after any model's
        by_pass.setdefault(number, []).extend((order, number, job, c) for c, (order, _) in enumerate(calls))
    for number in sorted(by_pass):
        ordered = [(n, job, c) for _, n, job, c in sorted(by_pass[number], key=lambda t: t[0])]
        steps += [ordered[i:i + SEQUENCE_KEYS] for i in range(0, len(ordered), SEQUENCE_KEYS)]
    return steps


def pool_calls(measured: list[Measurement]) -> Measurement:
    """One key's measurement from the measurements of its calls (each call's samples, pooled)."""
    if len(measured) == 1:
        return measured[0]
    first = measured[0]
    return Measurement([x for m in measured for x in m.samples], 1, first.overhead_s, False, first.settings,
                       sum(m.elapsed_s for m in measured))


def _settings_record(backend: Backend, settings: Settings, call_overhead: Measurement) -> dict:
    passes = ({"passes_note": f"{settings.passes} interleaved passes over all keys, one window of at most "
                              f"{settings.max_time_s / settings.passes:.3g} s per key and pass; each key keeps "
                              f"the pass with the lowest median"} if settings.passes > 1 else {})
    return {**settings.to_dict(), **passes, "timer": backend.timer_name(settings),
            "timer_overhead": "measured at each key's block size (empty calls) and subtracted",
            "call_overhead_ms": round(call_overhead.median * 1e3, 6),
            "call_overhead_note": "the time of an empty op on this backend; included in every entry, "
                                  "since each op runs alone (a network pays it once)",
            "isolation": ("one ONNX Runtime session per op model" if backend.name.startswith("ort")
                          else "one module call per op")}


def check_out_path(out: str | Path, resume: bool) -> Path:
    """Refuse to overwrite measured data; say what to do instead."""
    out, journal = Path(out), journal_path(out)
    if not out.parent.resolve().is_dir():
        raise HwcostError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.exists() and not journal.exists():
        raise HwcostError(f"{out} already exists; refusing to overwrite measured data "
                          f"(choose another --out, or delete it to measure again)")
    if journal.exists() and not resume:
        raise HwcostError(f"an interrupted profile left {journal}; add --resume to continue it "
                          f"(or delete the journal to start over)")
    return out


def profile(jobs: Iterable[Job], backend: Backend, out: str | Path, *, spaces: list[str],
            settings: Settings = Settings(), resume: bool = False, device_name: str | None = None,
            provenance: dict | None = None, progress: bool | None = None,
            on_entry: Callable | None = None, announce: Callable[[str], None] | None = None,
            reference: bool = True, stream_bytes: int | None = None, context: str = "alone",
            beside: Callable[[str], None] | None = None) -> DeviceTable:
    """Measure every job on ``backend`` and write the table to ``out``.

    ``resume`` continues the journal ``out + ".journal"`` left by an
    interrupted run (same backend, threads, batch and settings, else an
    error). ``progress`` (default: when stderr is a terminal) shows a tqdm bar;
    ``announce`` gets one line saying what will run, once the inputs are checked;
    ``on_entry`` gets each entry once it is saved. ``reference`` times the
    host's reference kernel beside the passes (:class:`HostPhases`; recorded in
    the table's ``measurement.host_reference``).

    Every entry records its ``weight_bytes`` (:func:`costmodels.analytical.weight_bytes`); when some key
    holds at least ``STREAM_MIN_WEIGHTS`` of them, the backend's weight-streaming bandwidth is measured
    once at the end (:func:`profilers.stream.stream_probe` with a matrix of ``stream_bytes``, default
    :func:`profilers.stream.probe_bytes`; 0: no probe) into ``measurement.weight_stream``: what the
    in-context model prices weights that a network streams from memory with. A probe that cannot run
    (too little memory, an error) is recorded as skipped, with why; every measured row is kept.

    ``context``: ``"alone"`` (default) times each key in a loop of its own calls (block timing, one
    window per key and pass); ``"sequence"`` times every call of a model's layer keys in the order the
    model runs them (:attr:`Job.calls`; a space's keys in profile order), runs of ``SEQUENCE_KEYS`` calls
    one call at a time, round after round, each with its own module and its input just rewritten
    (:meth:`Backend.measure_sequence`; host-clock backends), a key pooling its calls' samples: what a
    layer meets in an eager network. Recorded in ``measurement.context``; a resume must use the same.

    ``beside(when)`` is called where the reference kernel is timed (``"start"``, ``"after pass N"``,
    ``"end"``; inside :meth:`Backend.active`): something to time beside the passes, in their host phases
    (``benchmarks/zoo_accuracy.py --blocks paired`` times the model whose keys these are).
    """
    from costmodels.analytical import weight_bytes

    from .stream import STREAM_MIN_WEIGHTS, probe_record
    from tqdm import tqdm
    if context not in CONTEXTS:
        raise HwcostError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    if context == "sequence" and not backend.times_sequences:   # before a journal is opened
        raise HwcostError(sequence_refused(backend.name))
    jobs = list(jobs)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise HwcostError("profile jobs contain a key twice")
    out = check_out_path(out, resume)
    with backend.active():
        overhead = backend.call_overhead(settings)
    header = {"kind": "op", "spaces": sorted(spaces),
              "device": device_info(device_name, backend.accelerator()),
              "runtime": backend.runtime(),
              "measurement": {**_settings_record(backend, settings, overhead), **_context_record(context)},
              "provenance": {"tool": "hwcost profile", "keys": len(jobs), **(provenance or {})}}
    journal = Journal.open_or_resume(journal_path(out), header)
    passes = settings.passes
    rows = len(jobs) * passes
    try:
        _check_same_settings(journal, settings, context)
        done = journal.done_rows()
        todo = [(number, job) for number in range(1, passes + 1) for job in jobs
                if (job.key, number if passes > 1 else None) not in done]
        if announce is not None:
            resumed = f", resuming: {rows - len(todo)} of {rows} rows already measured" if len(todo) < rows else ""
            in_passes = f" in {passes} interleaved passes" if passes > 1 else ""
            announce(f"profiling {len(jobs)} keys{in_passes} on {backend.name} ({backend.threads} thread(s), "
                     f"batch {backend.batch}){resumed} -> {out}; journal {journal.path}")
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=rows, initial=rows - len(todo), unit="row" if passes > 1 else "key", file=sys.stderr,
                   disable=not show, dynamic_ncols=True, desc=f"profile {backend.name}")
        window = settings.window()
        last_pass = {job.key: number for number, job in todo}  # todo runs pass by pass
        prepared: dict[tuple[OpKey, int], Callable] = {}  # (key, call) built once, reused by every pass
        wbytes: dict[OpKey, int] = {}
        phases = HostPhases(backend, window) if reference and todo else None
        extras: dict = {}

        def mark(when: str) -> None:
            if phases is not None:
                phases.time(when)
            if beside is not None and todo:
                beside(when)
        try:
            with backend.active():
                mark("start")
                prepare = backend.prepare if context == "alone" else backend.prepare_in_sequence
                pooled: dict[OpKey, list[Measurement]] = {}  # sequence: a key's calls measured in this pass
                for i, step in enumerate(_steps(todo, context)):
                    number = step[0][0]
                    if i and number != previous:
                        mark(f"after pass {previous}")
                    previous = number
                    bar.set_postfix_str(f"pass {number}/{passes} {step[0][1].key.op}" if passes > 1
                                        else step[0][1].key.op, refresh=False)
                    for _, job, c in step:
                        if (job.key, c) not in prepared:
                            module, inputs = _call_builds(job)[c]()
                            if job.key not in wbytes:
                                wbytes[job.key] = weight_bytes(module)
                            prepared[job.key, c] = prepare(module.eval(), tuple(inputs))
                    if context == "alone":
                        measured = [backend.timer(prepared[step[0][1].key, 0], window).measure()]
                    else:
                        measured = backend.measure_sequence([prepared[job.key, c] for _, job, c in step], window)
                    entries = []
                    for (_, job, c), m in zip(step, measured):
                        if number == last_pass[job.key]:
                            del prepared[job.key, c]
                        mine = pooled.setdefault(job.key, [])
                        mine.append(m)
                        if context != "alone" and len(mine) < len(_call_builds(job)):
                            continue  # the key's other calls come later in this pass's sequence
                        del pooled[job.key]
                        m = pool_calls(mine)
                        weights = {"weight_bytes": wbytes[job.key]} if wbytes[job.key] else {}
                        calls = {"calls_timed": len(mine)} if len(mine) > 1 else {}
                        entries.append(m.to_entry(job.key, **job.extra, **weights, **calls,
                                                  **({"pass": number} if passes > 1 else {})))
                        journal.append(entries[-1])  # every measured row saved before anything else runs
                    for entry in entries:
                        if on_entry is not None:
                            on_entry(entry)
                    bar.update(len(entries))
                mark("end")
                heaviest = max((e.extra.get("weight_bytes", 0) for e in journal.entries()), default=0)
                if heaviest >= STREAM_MIN_WEIGHTS and stream_bytes != 0:
                    bar.set_postfix_str("weight-stream probe", refresh=True)
                    extras["weight_stream"] = rec = probe_record(backend, stream_bytes)
                    if "skipped" in rec:
                        (announce or warnings.warn)(f"weight-stream probe skipped: {rec['skipped']}; the table "
                                                    f"prices no streamed weights")
        finally:
            bar.close()
    except KeyboardInterrupt:
        journal.close()
        raise ProfileInterrupted(
            f"interrupted after {len(journal)} of {rows} rows ({len(jobs)} keys x {passes} passes); every "
            f"measured row is saved in {journal.path}; run the same command with --resume to continue") from None
    except BaseException:
        journal.close()
        raise
    if phases:
        extras["host_reference"] = phases.record()
    return journal.finalize(out, combine_passes, extras or None)


class HostPhases:
    """The reference kernel (:func:`reference_module`) timed at the start of a profile, after each
    pass and at the end, with the profile's own window: if its quietest window moved by more than
    ``QUIET`` between timings, the host did not stay in one quiet phase while the keys were measured
    (a neighbour's load, frequency changes) and the table says so (``hwcost table show``)."""

    QUIET = QUIET_SPREAD

    def __init__(self, backend: Backend, window):
        module, shape = reference_module()
        torch.manual_seed(0)
        self.fn = backend.prepare(module.eval(), (torch.randn(*shape),))
        self.backend, self.window = backend, window
        self.when: list[str] = []
        self.ms: list[float] = []

    def time(self, when: str) -> None:
        self.ms.append(self.backend.timer(self.fn, self.window).measure().median * 1e3)
        self.when.append(when)

    def record(self) -> dict:
        # the spread and the verdict from the recorded (rounded) times, so that the record agrees with itself
        ms = [round(v, 6) for v in self.ms]
        spread = round(max(ms) / min(ms), 4) if ms and min(ms) > 0 else 1.0
        return {"kernel": "conv 3x3, 64 -> 64 channels at 32x32, BN, ReLU (profilers.profile.reference_module)",
                "median_ms": ms, "when": self.when, "spread": spread, "quiet": spread <= self.QUIET}


def _check_same_settings(journal: Journal, settings: Settings, context: str = "alone") -> None:
    recorded = journal.header.get("measurement", {})
    diff = [f"{k}={recorded[k]!r} (this run: {v!r})" for k, v in settings.to_dict().items()
            if k in recorded and not _same(recorded[k], v)]
    if recorded.get("context", "alone") != context:
        diff.append(f"context={recorded.get('context', 'alone')!r} (this run: {context!r})")
    if diff:
        journal.close()
        raise HwcostError(f"journal {journal.path} was measured with {', '.join(diff)}; resume with the "
                          f"same settings, or use another --out")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def measure_models(models: list[tuple[nn.Module, tuple[int, ...]]], backend: Backend,
                   settings: Settings = Settings(max_time_s=10.0), sessions: int = 1) -> list[Measurement]:
    """End-to-end latency of whole networks (exported to ONNX on the ort backends), interleaved.

    Every network is prepared first, then measured by
    :meth:`Backend.measure_interleaved`: ``settings.passes`` rounds of one
    window per network, each keeping its quietest. Measuring networks that are
    to be compared in one call puts them through the same machine conditions;
    with one network the windows simply follow each other over ``max_time_s``.

    ``sessions`` > 1 prepares each network that many times (a new ONNX Runtime
    session, a new module copy: new memory placement) and keeps the session
    with the median time: on a 2-vCPU VM one DARTS network's quietest window
    differed by up to 10% between sessions prepared a minute apart (and its
    windows within a session by 3%), so one session's figure is one draw of
    the placement. The returned measurement records every session's median
    (``session_medians``).
    """
    with backend.active():
        fns = prepare_models(models, backend, sessions)
        measured = backend.measure_interleaved(fns, settings)
    return [median_session(measured[a:b]) for a, b in session_slices(models, sessions)]


def session_counts(models: list, sessions) -> list[int]:
    """Sessions per network: ``sessions`` (an int) for each, or one count per network; each a positive integer."""
    counts = list(sessions) if isinstance(sessions, (list, tuple)) else [sessions]
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HwcostError(f"sessions must be a positive integer, got {n!r}")
    if len(counts) == 1 and not isinstance(sessions, (list, tuple)):
        return counts * len(models)
    if len(counts) != len(models):
        raise HwcostError(f"one session count per network: {len(counts)} counts for {len(models)} networks")
    return counts


def session_slices(models: list, sessions) -> list[tuple[int, int]]:
    """(start, end) of each network's sessions among :func:`prepare_models`' prepared runs."""
    ends = list(itertools.accumulate(session_counts(models, sessions)))
    return list(zip([0] + ends[:-1], ends))


def prepare_models(models: list[tuple[nn.Module, tuple[int, ...]]], backend: Backend, sessions=1) -> list:
    """Every network prepared on ``backend`` (inside :meth:`Backend.active`) ``sessions`` times (an int, or one
    count per network), in order (network 0's sessions first), at a seeded random input of its shape; one clear
    error for a network that cannot run at its input."""
    fns = []
    for (model, shape), n in zip(models, session_counts(models, sessions)):
        for _ in range(n):
            torch.manual_seed(0)
            x = torch.randn(*shape)
            try:
                fns.append(backend.prepare(model.eval() if n == 1 else copy.deepcopy(model).eval(), (x,)))
            except RuntimeError as e:
                raise HwcostError(f"{type(model).__name__} cannot run at input "
                                  f"{'x'.join(map(str, shape))}: {str(e).splitlines()[0]}") from None
    return fns


def median_session(sessions: list[Measurement]) -> Measurement:
    """The session with the median time among one network's sessions (the lower middle one of an even
    number), recording every session's median (``session_medians``)."""
    order = sorted(range(len(sessions)), key=lambda j: sessions[j].median)
    chosen = sessions[order[(len(sessions) - 1) // 2]]
    chosen.session_medians = [m.median for m in sessions]
    return chosen


def reference_module() -> tuple[nn.Module, tuple[int, ...]]:
    """A fixed kernel timed beside the networks (a 3x3 conv, 64 channels at 32x32, BN, ReLU: 0.4-1.1 ms on
    one core): how fast the host runs *now*. Its quietest window, compared with the one recorded when a
    table was calibrated, says whether a measurement met the host's quiet phase."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()), (1, 64, 32, 32)


def measure_models_with_reference(models: list[tuple[nn.Module, tuple[int, ...]]], backend: Backend,
                                  settings: Settings = Settings(max_time_s=10.0), sessions: int = 1):
    """:func:`measure_models` with :func:`reference_module` interleaved as one more network;
    returns (the networks' measurements, the reference's)."""
    out = measure_models(list(models) + [reference_module()], backend, settings, sessions)
    return out[:-1], out[-1]


def measure_model(model: nn.Module, input_shape: tuple[int, ...], backend: Backend,
                  settings: Settings = Settings(max_time_s=10.0)) -> Measurement:
    """End-to-end latency of one network: the quietest of ``settings.passes`` consecutive
    windows sharing ``settings.max_time_s`` (see :func:`measure_models`)."""
    return measure_models([(model, tuple(input_shape))], backend, settings)[0]


def summarize(table: DeviceTable) -> str:
    q: dict[str, int] = {}
    for e in table.entries:
        q[e.quality] = q.get(e.quality, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(q.items()))

