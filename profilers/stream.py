"""Weights streamed from memory: what an op timed alone does not pay, and a network does.

Timed alone, an op runs again and again on the same weights, so they sit in
the cache its last call left them in.  In a network, every other layer's
weights and activations pass through the cache between two calls of it; a
layer whose weights are large and whose work per weight byte is small
(a fully connected layer at batch 1, a 1x1 convolution on a 7x7 map) then
reads them from memory again, at the host's streaming bandwidth.  Measured on
an Intel Xeon VM (docs/in-context.md, "Weights streamed"): alexnet's three
Gemm nodes ran 1.13x, 1.80x and 1.88x their isolated times inside the network
(ONNX Runtime's own per-node profile), while a Gemm whose 16-64 MiB of weights
sit in cache ran at 26-28 GB/s and one of 128 MiB-1 GiB at 15.3 GB/s.

So the profile records two measured facts, nothing fitted:

* every entry's ``weight_bytes`` (the parameters and buffers of a layer or op,
  the initializers of an ONNX node: :func:`costmodels.analytical.weight_bytes`);
* the backend's weight-streaming bandwidth (:func:`stream_probe`): a
  matrix-vector product whose matrix (``STREAM_BYTES``, 1 GiB) is far larger
  than any cache, timed like any key -- the rate at which the device streams
  weights that are not in cache, for a kernel of the kind that streams them.

A key of ``b`` weight bytes measured at ``t`` ms alone can then cost up to
``max(0, b / BW - t)`` more in a network (:func:`costmodels.incontext.streaming_ms`): nothing for a
convolution whose compute hides the weights' reads, most of the gap for a
batch-1 Gemm.  How much of that bound a network pays would be the in-context model's
``streamed`` factor (``costmodels.incontext``), which the fit leaves out by
default: on one host it fixed alexnet and made two other zoo evaluations worse.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from spaces.errors import HwcostError

from .measure import Settings

if TYPE_CHECKING:
    from .backends import Backend

STREAM_BYTES = 1 << 30      # the probe's matrix: far beyond any CPU's last-level cache (2026: <= ~1 GiB)
STREAM_ROWS = 4096          # its input length; the matrix is STREAM_ROWS x (bytes / 4 / STREAM_ROWS)
# A table whose keys all hold less than this many weight bytes gets no probe: their weights cost
# microseconds to stream (1 MiB at 10 GB/s: 0.1 ms) and a small table should profile fast.
STREAM_MIN_WEIGHTS = 1 << 20
# Below this the probe's matrix may sit in a large last-level cache (host D: 22-28 GB/s up to 64 MiB,
# 14 GB/s from 128 MiB): a machine with too little free memory for it gets no probe rather than a wrong one.
MIN_PROBE_BYTES = 256 << 20
PROBE_SETTINGS = Settings(max_time_s=2.0, passes=1, min_samples=5, min_sample_s=1e-3)


def _available_bytes() -> int | None:
    """Memory a new allocation can get: ``MemAvailable`` (free plus reclaimable cache), bounded by the
    cgroup's limit in a container; None where neither can be read."""
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    for path, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(path).read().strip()
            if limit.isdigit():
                avail = min(avail, int(limit) - int(open(used).read().strip()))
                break
        except (OSError, ValueError):
            continue
    return max(avail, 0)


def probe_bytes(requested: int = STREAM_BYTES) -> int:
    """The probe's matrix size: ``requested``, at most an eighth of the free memory (the ONNX Runtime
    path holds the matrix about three times while it builds the session), in whole rows."""
    free = _available_bytes()
    size = min(requested, free // 8) if free else requested
    row = STREAM_ROWS * 4
    return max(row, size // row * row)


def _probe_subject(backend: "Backend", size: int):
    """(module or OnnxGraph, inputs) of a matrix-vector product with a ``size``-byte matrix."""
    cols = size // (4 * STREAM_ROWS)
    if backend.name.startswith("ort"):
        from onnx import TensorProto, helper, numpy_helper

        from spaces.onnx_graph import OnnxGraph
        w = np.full((STREAM_ROWS, cols), 0.5, np.float32)   # values do not change a float32 gemv's time
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "weight_stream_probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STREAM_ROWS])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
                                  [numpy_helper.from_array(w, "W")])
        del w
        from .export import DEFAULT_OPSET
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
        data = model.SerializeToString()
        del model, graph
        return OnnxGraph(data, (("x", (1, STREAM_ROWS), np.float32),), name="weight stream probe"), ()
    import torch
    from torch import nn
    torch.manual_seed(0)
    layer = nn.Linear(STREAM_ROWS, cols, bias=False)
    return layer, (torch.randn(1, STREAM_ROWS),)


def stream_probe(backend: "Backend", size: int | None = None, settings: Settings = PROBE_SETTINGS) -> dict:
    """Measure the backend's weight-streaming bandwidth (module doc): ``{"gbps", "bytes", "median_ms",
    "kernel"}``. ``size``: the matrix's bytes (default :func:`probe_bytes`)."""
    size = probe_bytes() if size is None else int(size)
    if size < STREAM_ROWS * 4:
        raise HwcostError(f"the weight-stream probe needs at least {STREAM_ROWS * 4} bytes, got {size}")
    module, inputs = _probe_subject(backend, size)
    fn = backend.prepare(module.eval(), tuple(inputs))
    del module
    ms = backend.timer(fn, settings).measure().median * 1e3
    del fn
    return {"gbps": round(size / ms / 1e6, 4), "bytes": size, "median_ms": round(ms, 6),
            "kernel": f"y = x W, x 1x{STREAM_ROWS}, W {STREAM_ROWS}x{size // (4 * STREAM_ROWS)} float32 "
                      f"(profilers.stream.stream_probe): weights read once per call, from memory"}


def probe_record(backend: "Backend", stream_bytes: int | None = None) -> dict:
    """What a profile records as ``measurement.weight_stream``: the probe (:func:`stream_probe`), or
    ``{"skipped": why}`` when the machine has too little free memory for a matrix beyond its caches or
    the probe failed -- the table is written either way, and its predictions then price no streaming."""
    size = probe_bytes() if stream_bytes is None else int(stream_bytes)
    if stream_bytes is None and size < MIN_PROBE_BYTES:
        return {"skipped": f"only {size >> 20} MiB could be spared for the probe's matrix "
                           f"(needs {MIN_PROBE_BYTES >> 20} MiB to be sure it is beyond the caches)"}
    try:
        return stream_probe(backend, size)
    except (HwcostError, MemoryError, RuntimeError) as e:
        return {"skipped": f"the weight-stream probe failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}


__all__ = ["MIN_PROBE_BYTES", "PROBE_SETTINGS", "STREAM_BYTES", "STREAM_MIN_WEIGHTS", "probe_bytes", "probe_record",
           "stream_probe"]
