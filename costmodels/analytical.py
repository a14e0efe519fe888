"""Exact analytical costs of any op or network: params, MACs, activation memory, size.

Conventions (the README repeats them):

* ``params`` -- trainable parameters, auxiliary head excluded (as the papers count);
  ``params_with_aux`` includes it.
* ``macs`` -- multiply-accumulates of convolutions and linear layers only, counted
  by fvcore. BN, pooling, ReLU, adds and concats count zero (they are folded or
  memory-bound on every runtime we target). ``macs_with_bn`` adds fvcore's count
  for BN (1 per element, 2 when affine) and global average pooling
  (1 per input element).
* ``activation_bytes`` -- bytes written by one forward pass: the sum of the
  sizes of every tensor an ATen op produces; views and identities alias their
  input and write nothing; the input itself is not counted.
* ``model_bytes`` -- bytes of the parameters and buffers a deployed (eval)
  model carries, auxiliary head excluded.
"""
from __future__ import annotations

import functools

import logging
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from spaces.errors import HwcostError

AUX_PREFIX = "auxiliary_head"
METRICS = ("params", "macs", "activation_bytes", "model_bytes")


@dataclass(frozen=True)
class Costs:
    params: int
    params_with_aux: int
    macs: int
    macs_with_bn: int
    activation_bytes: int
    model_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module, include_aux: bool = False) -> int:
    return sum(p.numel() for n, p in model.named_parameters()
               if include_aux or not n.startswith(AUX_PREFIX))


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters + buffers (BN running stats), aux head excluded."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return sum(t.numel() * t.element_size() for n, t in tensors
               if not n.startswith(AUX_PREFIX) and t.is_floating_point())


def initializer_bytes(model_proto) -> int:
    """Bytes of every initializer of an ONNX ``ModelProto`` (what ``onnx_costs`` calls ``model_bytes``)."""
    import numpy as np
    from onnx import helper
    return sum(int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in model_proto.graph.initializer)


def weight_bytes(module) -> int:
    """Bytes of weights an op or layer reads per call: a module's :func:`model_bytes` (parameters and
    float buffers such as BN statistics, which an eval-mode layer reads too), or the initializers of an
    ONNX graph (:class:`spaces.onnx_graph.OnnxGraph`, e.g. one node's model)."""
    from spaces.onnx_graph import OnnxGraph
    if isinstance(module, OnnxGraph):
        return initializer_bytes(module.proto())
    return model_bytes(module)


# fvcore's per-operator names of the multiply-accumulate ops.
_MAC_OPS = {"conv", "linear", "addmm", "matmul", "bmm", "baddbmm", "einsum", "mm"}


def _fvcore_macs(model: nn.Module, inputs: tuple) -> tuple[int, int]:
    """(conv+linear MACs, fvcore's total incl. BN and global pooling)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and jit tracing warn about deprecations
        from fvcore.nn import FlopCountAnalysis
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        fca = FlopCountAnalysis(model, inputs)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_op = fca.by_operator()
    return int(sum(v for k, v in by_op.items() if k in _MAC_OPS)), int(sum(by_op.values()))


class _WriteCounter(TorchDispatchMode):
    """Adds up the bytes of every new tensor an ATen op returns (aliases excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        in_ptrs = {t.untyped_storage().data_ptr() for t in _tensors(args) + _tensors(kwargs)}
        for t in _tensors(out):
            if t.untyped_storage().data_ptr() not in in_ptrs:
                self.bytes += t.numel() * t.element_size()
        return out


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def activation_bytes(model: nn.Module, inputs: tuple) -> int:
    with torch.no_grad(), _WriteCounter() as counter:
        model(*inputs)
    return counter.bytes


def _run(model: nn.Module, inputs: tuple, what: str):
    try:
        with torch.no_grad():
            return model(*inputs)
    except RuntimeError as e:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise HwcostError(f"{what} cannot take input of shape {shapes}: {str(e).splitlines()[0]}") from None


def network_costs(model: nn.Module, input_shape: tuple[int, ...]) -> Costs:
    """All analytical costs of a network at ``input_shape`` (eval mode)."""
    model = model.eval()
    inputs = (torch.randn(*input_shape),)
    _run(model, inputs, type(model).__name__)
    macs, macs_bn = _fvcore_macs(model, inputs)
    return Costs(
        params=count_params(model),
        params_with_aux=count_params(model, include_aux=True),
        macs=macs,
        macs_with_bn=macs_bn,
        activation_bytes=activation_bytes(model, inputs),
        model_bytes=model_bytes(model),
    )


def op_costs(space: str, op: str, c_in: int, c_out: int | None = None, h: int = 32, w: int | None = None,
             stride: int = 1, batch: int = 1, affine: bool = True, **extra) -> Costs:
    """Costs of one op at one shape (the same numbers a table key stands for). Counted once per process
    for each op and shape (fvcore traces the op: ~0.1 s); :class:`Costs` is frozen."""
    extra_items = tuple(sorted(extra.items()))
    try:
        hash(extra_items)
    except TypeError:  # an unhashable extra: counted every time
        return _op_costs(space, op, c_in, c_out, h, w, stride, batch, affine, **extra)
    return _op_costs_once(space, op, c_in, c_out, h, w, stride, batch, affine, extra_items)


@functools.lru_cache(maxsize=8192)
def _op_costs_once(space, op, c_in, c_out, h, w, stride, batch, affine, extra_items) -> Costs:
    return _op_costs(space, op, c_in, c_out, h, w, stride, batch, affine, **dict(extra_items))


def _op_costs(space: str, op: str, c_in: int, c_out: int | None, h: int, w: int | None, stride: int, batch: int,
              affine: bool, **extra) -> Costs:
    from spaces.registry import build_op, example_inputs
    module = build_op(space, op, c_in, c_out, stride, affine, **extra).eval()
    inputs = example_inputs(module, batch, h, h if w is None else w)
    _run(module, inputs, f"{space}/{op}")
    params = count_params(module)
    return Costs(params, params, *_fvcore_macs(module, inputs),
                 activation_bytes(module, inputs), model_bytes(module))


# ONNX graphs: the op types whose multiply-accumulates are counted (ONNX Runtime's fused forms included).
ONNX_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")


def onnx_costs(graph) -> dict:
    """Params, MACs, activation and model bytes of an ONNX model (:class:`spaces.onnx_graph.OnnxGraph`),
    read from the graph as stored (not as ONNX Runtime optimises it), at its fixed input shapes:

    * ``params`` -- elements of the floating-point initializers, BatchNormalization's running mean
      and variance left out (buffers in PyTorch, not parameters);
    * ``macs`` -- multiply-accumulates of the nodes in :data:`ONNX_MAC_OPS` (Conv: output elements x
      C_in/groups x kernel; ConvTranspose: input elements x C_out/groups x kernel; Gemm and MatMul:
      output elements x K); every other op counts zero, as in :func:`network_costs`;
    * ``activation_bytes`` -- bytes of every node output; ``model_bytes`` -- bytes of all initializers.
    """
    import numpy as np
    from onnx import helper

    from spaces.onnx_graph import value_shapes
    model = graph.proto()
    values = value_shapes(model, keep_values=False, subnormals=False)
    itemsize = lambda elem: np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize  # noqa: E731
    stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization"
             for i in (3, 4) if len(n.input) > i}
    inits = {t.name: t for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for name, t in inits.items()
                 if name not in stats and np.issubdtype(helper.tensor_dtype_to_np_dtype(t.data_type), np.floating))
    macs, shape = 0, lambda name: values[name].shape  # noqa: E731
    for n in model.graph.node:
        if n.op_type not in ONNX_MAC_OPS or len(n.input) < 2 or any(v not in values for v in (*n.input[:2], n.output[0])):
            continue
        out, a, b = shape(n.output[0]), shape(n.input[0]), shape(n.input[1])
        if n.op_type in ("Conv", "FusedConv"):
            macs += int(np.prod(out)) * int(np.prod(b[1:]))
        elif n.op_type == "ConvTranspose":
            macs += int(np.prod(a)) * int(np.prod(b[1:]))
        elif n.op_type in ("Gemm", "FusedGemm"):
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            macs += int(np.prod(out)) * int(a[0] if trans_a else a[-1])
        else:
            macs += int(np.prod(out)) * int(a[-1])
    outputs = {o for n in model.graph.node for o in n.output if o and o in values}
    return {"model": graph.name, "input_shape": list(graph.input_shape), "nodes": len(model.graph.node),
            "params": params, "macs": macs, "mac_ops": list(ONNX_MAC_OPS),
            "activation_bytes": sum(int(np.prod(values[o].shape)) * itemsize(values[o].elem_type) for o in outputs),
            "model_bytes": initializer_bytes(model)}
