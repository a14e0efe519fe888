"""ONNX export: one function for the ``export`` command and for the profilers.

The TorchScript-based exporter is used by default: it is ~50x faster than the
dynamo exporter on op-sized models (0.08 s vs 4 s here), which matters when a
profile exports hundreds of op models. Where it is unavailable we fall back to
the dynamo exporter. Every export is checked with ``onnx.checker`` and, when
asked, numerically against PyTorch on ONNX Runtime's CPU execution provider.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from spaces.errors import HwcostError

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportResult:
    path: str
    max_abs_diff: float | None  # vs PyTorch on ORT CPU; None when not checked
    opset: int
    n_nodes: int


def _export(model: nn.Module, inputs: tuple, path: str, opset: int) -> None:
    names = [f"input{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, inputs, path, dynamo=False, opset_version=opset,
                              input_names=names, output_names=["output"], do_constant_folding=True)
        except TypeError:  # a torch whose export no longer takes dynamo=False
            torch.onnx.export(model, inputs, path, input_names=names, output_names=["output"])


def export_onnx(model: nn.Module, inputs: tuple | torch.Tensor, path: str | os.PathLike,
                opset: int = DEFAULT_OPSET, check: bool = True, atol: float | None = None) -> ExportResult:
    """Export ``model`` (eval mode) at ``inputs`` to ``path``; check it.

    ``check`` runs ``onnx.checker`` and compares ORT CPU with PyTorch; with
    ``atol`` set, a max abs difference larger than ``atol`` times the output's scale
    (its largest magnitude, at least 1) raises: float32 rounds relative to the values, and
    a derived network of pooling cells alone sums its paths into outputs of ~1e7.
    """
    import onnx
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    model = model.eval()
    path = str(path)
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise HwcostError(f"cannot write {path}: directory {parent} does not exist")
    try:
        _export(model, inputs, path, opset)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:  # pragma: no cover - message path
        raise HwcostError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from None
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    diff = None
    if check:
        diff, scale = max_abs_diff_vs_torch(model, inputs, path)
        if atol is not None and not diff <= atol * max(1.0, scale):
            raise HwcostError(f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {atol:g}"
                              + (f" x the output's scale {scale:.3g}" if scale > 1.0 else "") + ")")
    return ExportResult(path, diff, opset, len(proto.graph.node))


def ort_session(path: str, threads: int = 1, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=list(providers))


def max_abs_diff_vs_torch(model: nn.Module, inputs: tuple, path: str) -> tuple[float, float]:
    """(largest |ORT - PyTorch| over the first output, largest |PyTorch output|)."""
    sess = ort_session(path)
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = model(*inputs)
    want = (want[0] if isinstance(want, (tuple, list)) else want).detach().cpu().numpy()
    if not got.size:
        return 0.0, 0.0
    return float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))


def export_to_temp(model: nn.Module, inputs, opset: int = DEFAULT_OPSET, check: bool = True,
                   directory: str | None = None) -> ExportResult:
    """Export into a fresh temporary file (the profilers' use)."""
    fd, path = tempfile.mkstemp(suffix=".onnx", dir=directory)
    os.close(fd)
    return export_onnx(model, inputs, path, opset, check)


def export_graph(model: nn.Module, input_shape: tuple[int, ...], name: str = "model"):
    """``model`` exported to ONNX at ``input_shape`` and read back as a
    :class:`spaces.onnx_graph.OnnxGraph` (no file left behind): how a PyTorch model is keyed by
    the nodes ONNX Runtime runs (``hwcost profile --keys nodes``, a node table's predictions and
    calibration)."""
    import dataclasses

    from spaces.onnx_graph import load_onnx
    torch.manual_seed(0)
    result = export_to_temp(model, (torch.randn(*input_shape),), check=False)
    try:
        graph = load_onnx(result.path, tuple(input_shape))
    finally:
        os.unlink(result.path)
    return dataclasses.replace(graph, name=name)
