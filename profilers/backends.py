"""Backends, registered by name: where and how one op (or a whole model) runs.

``torch-cpu``, ``torch-cuda``, ``ort-cpu`` and ``ort:<ExecutionProvider>``
(any ONNX Runtime provider). A backend fixes and records its threads, batch
and dtype; ``prepare(module, inputs)`` returns a function that runs the op
once, synchronised, and ``block_timer()`` the clock the :class:`Timer` uses.
A new backend is one class with ``@register_backend("name")``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn as nn

from spaces.errors import HwcostError, unknown

from .measure import BlockTimer, Measurement, Pairs, Settings, Timer, cpu_block_timer, quietest

_BACKENDS: dict[str, type["Backend"]] = {}
MAX_PAIRS = 5000          # runs of one network in a paired window at most (a backend whose clock is not the wall's)
SEQUENCE_NOISY_IQR = 0.3  # IQR / median of single calls timed in a sequence above which a key is "noisy"
_PREFIXES: dict[str, type["Backend"]] = {}  # "ort:" -> a backend taking the rest of the name


def register_backend(name: str, prefix: bool = False):
    """Class decorator: ``@register_backend("torch-cpu")``; ``prefix=True`` registers
    a family (``ort:`` + provider name). A name is registered once."""

    def deco(cls):
        registry = _PREFIXES if prefix else _BACKENDS
        if name in registry:
            raise HwcostError(f"backend {name!r} is already registered ({registry[name].__name__}); "
                              f"choose another name")
        registry[name] = cls
        return cls

    return deco


def list_backends() -> list[str]:
    return sorted(_BACKENDS) + [p + "<ExecutionProvider>" for p in sorted(_PREFIXES)]


def get_backend(name: str, threads: int = 1, batch: int = 1, dtype: str = "float32", **settings) -> "Backend":
    """A backend by name, e.g. ``get_backend("ort-cpu", threads=1)``."""
    if name in _BACKENDS:
        return _BACKENDS[name](threads=threads, batch=batch, dtype=dtype, **settings)
    for prefix, cls in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return cls(name[len(prefix):], threads=threads, batch=batch, dtype=dtype, **settings)
    raise unknown("backend", name, list_backends())


def sequence_refused(backend: str) -> str:
    """The error for ``--context sequence`` on a backend that cannot time keys in a sequence."""
    able = ", ".join(sorted(n for n, c in _BACKENDS.items() if c.times_sequences))
    return (f"--context sequence times each call with the host clock between the other calls: {able} only, "
            f"not {backend} (use --context alone)")


def times_sequences(name: str) -> bool:
    """Whether the backend called ``name`` can time keys in a sequence (``--context sequence``), asked before
    any backend is built; False for a name no backend has."""
    cls = _BACKENDS.get(name) or next((c for p, c in _PREFIXES.items() if name.startswith(p)), None)
    return bool(cls and cls.times_sequences)


def _torch_module(module, backend: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise HwcostError(f"backend {backend} runs PyTorch modules; an ONNX model runs on ort-cpu or "
                          f"ort:<ExecutionProvider>")
    return module


class _Empty(nn.Module):
    """The cheapest op a backend can run: what one call costs without any work."""

    def forward(self, x):
        return x + 0  # (an Identity op would let an exporter drop the node)


class Backend:
    """Runs modules for the timer. Subclasses set ``name`` and implement ``prepare``."""
    name = "?"
    dtypes = ("float32",)
    wall_clock = staticmethod(time.perf_counter)  # what time caps and warm-up are counted in
    times_sequences = False  # implements prepare_in_sequence (host-clock backends)

    def __init__(self, threads: int = 1, batch: int = 1, dtype: str = "float32"):
        for label, v in (("threads", threads), ("batch", batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HwcostError(f"--{label} must be a positive integer, got {v!r}")
        if dtype not in self.dtypes:
            raise HwcostError(f"backend {self.name} measures dtype {', '.join(self.dtypes)}, not {dtype!r}")
        self.threads, self.batch, self.dtype = threads, batch, dtype

    # -- what it is
    def version(self) -> str:
        return torch.__version__

    def execution_provider(self) -> str:
        return "cpu"

    def session_providers(self) -> list[str]:
        """The ONNX Runtime providers an ONNX graph is run with while it is keyed (shapes, subnormal floats):
        the backend's own for ONNX Runtime backends, the CPU's for the others (which run no graph)."""
        return ["CPUExecutionProvider"]

    def settings(self) -> dict:
        """Backend settings that change timings (recorded in the table's runtime)."""
        return {}

    def runtime(self) -> dict:
        return {"backend": self.name, "backend_version": self.version(),
                "execution_provider": self.execution_provider(), "threads": self.threads,
                "dtype": self.dtype, "batch": self.batch, **self.settings()}

    def accelerator(self) -> str | None:
        return None

    # -- how it runs
    @contextlib.contextmanager
    def active(self):
        """Thread count and grad mode for the duration of a measurement (restored after)."""
        threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
        torch.set_num_threads(self.threads)
        torch.set_grad_enabled(False)
        try:
            yield self
        finally:
            torch.set_num_threads(threads)
            torch.set_grad_enabled(grad)

    def prepare(self, module: nn.Module, inputs: tuple) -> Callable[[], object]:
        raise NotImplementedError

    def block_timer(self, settings: Settings) -> BlockTimer:
        return cpu_block_timer()

    def timer_name(self, settings: Settings) -> str:
        return "time.perf_counter"

    def timer(self, fn: Callable[[], object], settings: Settings, run_to_cap: bool = False) -> Timer:
        """A :class:`Timer` for a prepared ``fn`` with this backend's block timer and wall clock."""
        return Timer(fn, settings, self.block_timer(settings), self.wall_clock, run_to_cap)

    def measure(self, module: nn.Module, inputs: tuple, settings: Settings = Settings()) -> Measurement:
        """Time one module at its inputs, in one window (noisy ones retried)."""
        with self.active():
            fn = self.prepare(module.eval(), tuple(inputs))
            return self.timer(fn, settings).measure()

    def measure_interleaved(self, fns: list[Callable[[], object]], settings: Settings) -> list[Measurement]:
        """Time prepared ``fns`` (inside :meth:`active`) in ``settings.passes`` rounds, each
        running every fn for one window of ``max_time_s / passes`` seconds -- to its end when
        there are several, so the windows cover the span rather than stop at the CI. Each fn
        keeps its quietest window (lowest median) and records every window's median."""
        window = settings.window()
        windows: list[list[Measurement]] = [[] for _ in fns]
        for _ in range(settings.passes):
            for fn, mine in zip(fns, windows):
                mine.append(self.timer(fn, window, run_to_cap=settings.passes > 1).measure())
        results = []
        for mine in windows:
            best = mine[quietest(mine)]
            best.pass_medians = [w.median for w in mine]
            best.elapsed_s = sum(w.elapsed_s for w in mine)
            results.append(best)
        return results

    def measure_paired(self, fns: list[Callable[[], object]], candles: list[Callable[[], object]],
                       settings: Settings) -> list["Pairs"]:
        """Time prepared ``fns`` (inside :meth:`active`) one after the other, each for one window of
        ``settings.max_time_s`` (at least ``settings.min_samples`` runs): every run of it right after a
        run of one of ``candles``, rotating (:class:`~profilers.measure.Pairs`). Each fn and candle first
        runs for ``settings.warmup_s``. Runs are timed one by one with the backend's block timer (CUDA
        events on a GPU): a network's run lasts milliseconds, the clock microseconds."""
        if not candles:
            raise HwcostError("a paired measurement needs at least one candle network")
        block = self.block_timer(settings)
        clock = self.wall_clock
        for fn in list(candles) + list(fns):
            end = clock() + settings.warmup_s
            block(fn, 1)
            while clock() < end:
                block(fn, 1)
        out = []
        for fn in fns:
            times, lit, which = [], [], []
            end = clock() + settings.max_time_s
            while len(times) < MAX_PAIRS and (clock() < end or len(times) < settings.min_samples):
                j = len(times) % len(candles)
                lit.append(block(candles[j], 1))
                times.append(block(fn, 1))
                which.append(j)
            out.append(Pairs(times, lit, which))
        return out

    # -- keys timed in a sequence (``hwcost profile --context sequence``)
    def prepare_in_sequence(self, module: nn.Module, inputs: tuple) -> tuple[Callable[[], object], Callable[[], None]]:
        """(run, touch): ``run`` as :meth:`prepare`'s, and ``touch`` rewrites its inputs in place with
        their own values -- what the layer before it in a network has just done. Host-clock backends
        only: each call is timed alone (:meth:`measure_sequence`)."""
        raise HwcostError(sequence_refused(self.name))

    def measure_sequence(self, calls: list[tuple[Callable[[], object], Callable[[], None]]],
                         settings: Settings) -> list[Measurement]:
        """Time prepared ``calls`` (from :meth:`prepare_in_sequence`, inside :meth:`active`) one after
        the other, round after round, each call timed alone with the host clock after its ``touch``.

        A key timed in a loop of its own calls keeps its weights, code and branch history hot; in a
        network the other layers run between two of its calls and its input has just been written.
        Here the other calls of the sequence run between two calls of one, and its input is
        rewritten just before (measured against keys timed alone: docs/in-context.md). Rounds go on for ``settings.max_time_s`` per call (at least ``min_samples`` rounds). The
        clock's own cost (an empty pair of reads) is subtracted from every sample."""
        clock = self.wall_clock
        for run, touch in calls:  # warm-up: every call twice
            for _ in range(2):
                touch()
                run()
        empty = []
        for _ in range(101):
            t0 = clock()
            empty.append(clock() - t0)
        overhead = sorted(empty)[50]
        samples: list[list[float]] = [[] for _ in calls]
        budget, start, rounds = settings.max_time_s * len(calls), clock(), 0
        while rounds < settings.min_samples or clock() - start < budget:
            for (run, touch), mine in zip(calls, samples):
                touch()
                t0 = clock()
                run()
                mine.append(max(clock() - t0 - overhead, 0.0))
            rounds += 1
        elapsed = (clock() - start) / max(len(calls), 1)
        # one call's samples spread more than blocks of calls: "noisy" from SEQUENCE_NOISY_IQR
        judged = replace(settings, noisy_iqr=max(settings.noisy_iqr, SEQUENCE_NOISY_IQR))
        return [Measurement(s, 1, overhead, False, judged, elapsed) for s in samples]

    def call_overhead(self, settings: Settings = Settings()) -> Measurement:
        """The time of an (almost) empty op: what every isolated call pays (the quietest of
        ``settings.passes`` windows over ``max_time_s``, as the keys)."""
        with self.active():
            fn = self.prepare(_Empty(), (torch.zeros(self.batch, 1),))
            return self.measure_interleaved([fn], settings)[0]


@register_backend("torch-cpu")
class TorchCPU(Backend):
    """Eager PyTorch on the CPU: ``module(*inputs)`` under no_grad."""
    name = "torch-cpu"
    times_sequences = True

    def _placed(self, module, inputs) -> tuple[nn.Module, tuple]:
        return _torch_module(module, self.name).to("cpu"), tuple(t.to("cpu") for t in inputs)

    def prepare(self, module, inputs):
        module, inputs = self._placed(module, inputs)
        return lambda: module(*inputs)

    def prepare_in_sequence(self, module, inputs):
        module, inputs = self._placed(module, inputs)
        return (lambda: module(*inputs)), rewrite_in_place(inputs)


def rewrite_in_place(tensors) -> Callable[[], None]:
    """A function that rewrites each floating-point tensor of ``tensors`` with its own values (``x *= 1``,
    exact), bringing it into the caches written, as the op that produced it leaves it; a tensor that
    cannot be written in place (an expanded view) is read instead."""
    writable, readable = [], []
    with torch.no_grad():
        for t in tensors:
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                continue
            try:
                t.mul_(1)
                writable.append(t)
            except RuntimeError:
                readable.append(t)

    def touch() -> None:
        for t in writable:
            t.mul_(1)
        for t in readable:
            t.sum()

    return touch


def cuda_block_timer(event_factory: Callable[[], object] | None = None) -> BlockTimer:
    """Seconds between two CUDA events around k launches, after synchronising.

    Host clocks would time the launches, not the kernels; events are recorded
    on the stream and read after ``end.synchronize()``. ``event_factory`` is
    injectable so the logic is testable without a GPU.
    """
    make = event_factory or (lambda: torch.cuda.Event(enable_timing=True))

    def time_block(fn, k: int) -> float:
        start, end = make(), make()
        start.record()
        for _ in range(k):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

    return time_block


@register_backend("torch-cuda")
class TorchCUDA(Backend):
    """Eager PyTorch on the current CUDA device, timed with CUDA events."""
    name = "torch-cuda"

    def __init__(self, threads: int = 1, batch: int = 1, dtype: str = "float32"):
        super().__init__(threads, batch, dtype)
        if not torch.cuda.is_available():
            raise HwcostError(f"backend torch-cuda needs a CUDA GPU, and torch.cuda.is_available() is False "
                              f"here (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                              f"use torch-cpu or ort-cpu")

    def execution_provider(self) -> str:
        return f"cuda:{torch.cuda.current_device()}"

    def accelerator(self) -> str | None:
        return torch.cuda.get_device_name()

    def settings(self) -> dict:
        return {"cuda": torch.version.cuda, "cudnn_benchmark": torch.backends.cudnn.benchmark}

    def prepare(self, module, inputs):
        module = _torch_module(module, self.name).to("cuda")
        inputs = tuple(t.to("cuda") for t in inputs)
        return lambda: module(*inputs)

    def block_timer(self, settings: Settings) -> BlockTimer:
        return cuda_block_timer()

    def timer_name(self, settings: Settings) -> str:
        return "cuda events"


_GRAPH_OPT = ("disable", "basic", "extended", "all")  # spaces.onnx_graph.LEVELS


@register_backend("ort:", prefix=True)
class OnnxRuntime(Backend):
    """ONNX Runtime with one provider; each op is exported and run in its own session.

    Isolation: one session per exported op model, sequential execution,
    ``threads`` intra-op threads and one inter-op thread. Inputs and outputs
    are bound once (I/O binding), so a timed run is the session's work plus
    its call overhead, not numpy conversions.
    """
    dtypes = ("float32",)

    def __init__(self, provider: str, threads: int = 1, batch: int = 1, dtype: str = "float32",
                 graph_optimization: str = "all"):
        import onnxruntime as ort
        self.provider = provider
        self.name = "ort-cpu" if provider == "CPUExecutionProvider" else f"ort:{provider}"
        super().__init__(threads, batch, dtype)
        available = ort.get_available_providers()
        if provider not in available:
            raise HwcostError(f"ONNX Runtime execution provider {provider!r} is not available in this "
                              f"onnxruntime {ort.__version__}; available: {', '.join(available)}")
        if graph_optimization not in _GRAPH_OPT:
            raise HwcostError(f"graph_optimization must be one of {', '.join(_GRAPH_OPT)}, got {graph_optimization!r}")
        self.graph_optimization = graph_optimization
        self._tmpdir = tempfile.mkdtemp(prefix="hwcost-ort-")

    def version(self) -> str:
        import onnxruntime as ort
        return ort.__version__

    def execution_provider(self) -> str:
        return self.provider

    def settings(self) -> dict:
        return {"graph_optimization": self.graph_optimization, "execution_mode": "sequential",
                "inter_op_threads": 1, "io_binding": True, "opset": self._opset()}

    @staticmethod
    def _opset() -> int:
        from .export import DEFAULT_OPSET
        return DEFAULT_OPSET

    def _device(self) -> str:
        return "cuda" if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def session(self, model, as_is: bool = False):
        """A session of ``model`` (a path or ONNX bytes) with this backend's settings; ``as_is``:
        graph optimisation disabled (a node of a graph ONNX Runtime has already optimised)."""
        import onnxruntime as ort

        from spaces.onnx_graph import session_options
        so = session_options("disable" if as_is else self.graph_optimization, self.threads)
        return ort.InferenceSession(model, so, providers=self.session_providers())

    def session_providers(self) -> list[str]:
        return [self.provider] + (["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])

    def prepare(self, module, inputs):
        """``module``: a torch module (exported to ONNX here) or an :class:`spaces.onnx_graph.OnnxGraph`
        (an ONNX model, run from its bytes on its own example inputs; ``inputs`` are not used)."""
        import onnxruntime as ort

        from spaces.onnx_graph import OnnxGraph
        if isinstance(module, OnnxGraph):
            try:
                sess = self.session(module.model_bytes, as_is=module.as_is)
            except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
                raise HwcostError(f"ONNX Runtime ({self.name}) cannot run {module.name}: "
                                  f"{str(e).splitlines()[0]}") from None
            arrays = module.example_arrays()
        else:
            from .export import export_to_temp
            result = export_to_temp(module, inputs, check=False, directory=self._tmpdir)
            try:
                sess = self.session(result.path)
            finally:
                os.unlink(result.path)  # the session holds the model in memory
            arrays = [t.detach().cpu().numpy() for t in inputs]
        feed = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
        outs = sess.run(None, feed)  # first run: learn output shapes
        device = self._device()
        binding = sess.io_binding()
        keep = []  # OrtValues must outlive the binding
        for i, a in zip(sess.get_inputs(), arrays):
            v = ort.OrtValue.ortvalue_from_numpy(a, device, 0)
            binding.bind_ortvalue_input(i.name, v)
            keep.append(v)
        for o, a in zip(sess.get_outputs(), outs):
            v = ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, device, 0)
            binding.bind_ortvalue_output(o.name, v)
            keep.append(v)

        def run():
            sess.run_with_iobinding(binding)
            return keep

        return run

    def __del__(self):
        with contextlib.suppress(Exception):
            os.rmdir(self._tmpdir)


@register_backend("ort-cpu")
class OnnxRuntimeCPU(OnnxRuntime):
    """``ort:CPUExecutionProvider``."""

    def __init__(self, threads: int = 1, batch: int = 1, dtype: str = "float32", graph_optimization: str = "all"):
        super().__init__("CPUExecutionProvider", threads, batch, dtype, graph_optimization)
