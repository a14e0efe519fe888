"""ONNX models without PyTorch: the op keys of the graph ONNX Runtime really runs.

A ``.onnx`` file is read as a graph (never executed as code). Its op keys are
those of the graph *after* ONNX Runtime's optimisation at a given level: a
session is opened with ``SessionOptions.optimized_model_filepath`` set, so
the graph it writes is the one it runs (Conv+BatchNormalization folded,
Conv+Relu as ``com.microsoft.FusedConv``, at level ``all`` on x86 the
NCHWc-blocked ``com.microsoft.nchwc.Conv`` and its reorders). Every node's
tensor shapes come from ``onnx.shape_inference``; where it knows no shape
(ONNX Runtime's own ``com.microsoft*`` ops) the optimised graph is run once,
as is, with every value exposed, and the shapes are read off the results.

Key of a node (space ``onnx``, a plain :class:`device_tables.OpKey`):

* ``op`` -- the node's ``op_type``, prefixed with its domain unless that is
  the default one (``Conv``, ``com.microsoft.FusedConv``, ``com.microsoft.nchwc.Conv``);
* batch, C_in, H, W -- from the node's first input (NCHW, or NC; a tensor of
  another rank is padded with 1s and its shape added as ``in_shape``);
* C_out -- dim 1 of the first output; ``hout``/``wout`` when a 4-d output's
  spatial size differs from the input's, ``out_shape`` for other ranks;
  float attributes to 7 significant digits (they are float32);
* stride -- the ``strides`` attribute (``stride=2x1`` in extra if unequal);
* every other scalar, list or string attribute as an extra field, renamed
  ``kernel`` (kernel_shape), ``dilation``, ``groups``, ``pads``, with the
  defaults left out (groups 1, dilation 1, pads 0, auto_pad NOTSET); a list
  of equal values is written as one value;
* ``n_in`` (inputs, when more than one), ``n_const`` (of them, initializers),
  ``in_shapes`` (``+``-joined, when a runtime input beyond the first has another shape),
  ``n_out`` (outputs, when more than one).

Keys exist only for static shapes: a graph input with a symbolic or unknown
dimension needs ``input_shape`` (``--input``) to fix it (a single-input model),
else :func:`load_onnx` refuses it with one clear error.

A node is timed alone as a one-node model (:func:`node_graph`): the node, its
initializers, its runtime float inputs as graph inputs, and any runtime
non-float input (a shape, an index) frozen to the value it had in the network.
That model is run *as is* (graph optimisation disabled): it already is what
the optimiser produced.

Subnormal floats. A node fed (or producing) subnormal float32 values -- below
1.2e-38, e.g. the softmax of a shifted-window attention whose mask adds -100 --
runs many times slower on x86 than on the normal random data a one-node model
is timed with (measured: swin_t's masked attention MatMuls 17-77x their
isolated time, the network 24 % faster with flush-to-zero). So the graph is
run once on a random input (:func:`value_shapes`), every float value's share
of subnormal elements is counted (its weights' too), and a node where an
input or an output holds at least :data:`SUBNORMAL_MIN` of them gets ``subnormal`` (that
largest share, one digit) in its key and is timed alone on the very inputs it
had in the network (:attr:`OnnxGraph.arrays`). Other keys are unchanged.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from device_tables import OpKey

from .errors import HwcostError
from .opkeys import SUBNORMAL_MIN, _geometry, _name, _shape_str, _subnormal_extra, subnormal_share

ONNX_SPACE = "onnx"
LEVELS = ("disable", "basic", "extended", "all")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_RENAME = {"kernel_shape": "kernel", "dilations": "dilation", "group": "groups"}
_DEFAULTS = {"groups": 1, "dilation": 1, "pads": 0, "auto_pad": "NOTSET"}


def is_onnx_spec(spec: str) -> bool:
    """Whether a ``--model`` names a file: it ends in ``.onnx`` or is an existing file."""
    spec = str(spec)
    return spec.lower().endswith(".onnx") or os.path.isfile(spec)


@dataclass
class OnnxGraph:
    """An ONNX model with static input shapes, as bytes, ready for an ONNX Runtime session.

    ``as_is``: run it without graph optimisation (a node of an already optimised
    graph). ``eval()`` returns itself, so code written for modules can pass it on.
    """

    model_bytes: bytes
    inputs: tuple  # ((name, shape, numpy dtype), ...) of the runtime inputs
    name: str = "onnx"
    as_is: bool = False
    arrays: tuple | None = None   # the inputs to run it on (a node fed subnormals: its network's), else random

    def eval(self) -> "OnnxGraph":
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs[0][1]) if self.inputs else ()

    def example_arrays(self, seed: int = 0) -> list[np.ndarray]:
        if self.arrays is not None:
            return list(self.arrays)
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                else np.zeros(shape, dtype) for _, shape, dtype in self.inputs]

    def proto(self):
        import onnx
        return onnx.load_model_from_string(self.model_bytes)


def _shape_value(shape):
    """A shape as a key's extra value: ``1x8x4x4``; one dim as an int (a lone number is no name)."""
    return int(shape[0]) if len(shape) == 1 else _shape_str(shape)


def _dims(value_info) -> tuple | None:
    """Static dims of a ValueInfoProto, or None when a dim is unknown or symbolic."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return None if any(d < 0 for d in dims) else dims


def _dim_text(value_info) -> str:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return "unknown rank"
    return " x ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def _np_dtype(elem_type: int):
    from onnx import helper
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def load_onnx(path: str, input_shape: tuple[int, ...] | None = None) -> OnnxGraph:
    """Read an ONNX file; fix its input shape with ``input_shape``; refuse dynamic dims left."""
    import onnx
    from google.protobuf.message import DecodeError
    if not os.path.isfile(path):
        raise HwcostError(f"ONNX model {path}: no such file")
    try:
        with open(path, "rb") as f:
            proto = onnx.load_model_from_string(f.read())
    except (DecodeError, ValueError, RuntimeError) as e:
        raise HwcostError(f"{path} is not an ONNX model (it does not parse as an ONNX ModelProto: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if proto.ir_version < 1 or not proto.graph.node:
        raise HwcostError(f"{path} is not an ONNX model (no graph nodes / no IR version)")
    inits = {i.name for i in proto.graph.initializer}
    runtime = [v for v in proto.graph.input if v.name not in inits]
    if not runtime:
        raise HwcostError(f"ONNX model {path} has no runtime input")
    if input_shape is not None:
        if len(runtime) != 1:
            raise HwcostError(f"--input fixes the shape of a single-input model; {path} has {len(runtime)} "
                              f"inputs ({', '.join(v.name for v in runtime)}): fix their dims in the file")
        v = runtime[0]
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise HwcostError(f"--input {_shape_str(input_shape)} has rank {len(input_shape)}, but input "
                              f"{v.name!r} of {path} is {_dim_text(v)}")
        for d, want in zip(dims, input_shape):
            if d.HasField("dim_value") and d.dim_value != want:
                raise HwcostError(f"--input {_shape_str(input_shape)} does not fit input {v.name!r} of {path}: "
                                  f"{_dim_text(v)}")
        for d, want in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(want)
    specs = []
    for v in runtime:
        dims = _dims(v)
        if dims is None or 0 in dims:
            raise HwcostError(f"ONNX model {path} has dynamic input dims (input {v.name!r}: {_dim_text(v)}); "
                              f"give fixed ones with --input, e.g. --input 1x3x224x224")
        specs.append((v.name, dims, _np_dtype(v.type.tensor_type.elem_type)))
    return OnnxGraph(proto.SerializeToString(), tuple(specs), name=os.path.basename(path))


# ---------------------------------------------------------------------------------------------
# The optimised graph and its shapes


def session_options(level: str, threads: int = 1):
    import onnxruntime as ort
    if level not in LEVELS:
        raise HwcostError(f"graph optimisation level must be one of {', '.join(LEVELS)}, got {level!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    return so


def _session(model_bytes: bytes, so, providers, what: str):
    import onnxruntime as ort
    try:
        return ort.InferenceSession(model_bytes, so, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise HwcostError(f"ONNX Runtime cannot load {what}: {str(e).splitlines()[0]}") from None


def optimized_graph(graph: OnnxGraph, level: str = "all", providers=("CPUExecutionProvider",)):
    """The ModelProto ONNX Runtime runs for ``graph`` at graph optimisation ``level``."""
    import onnx
    if level == "disable":
        return graph.proto()
    with tempfile.TemporaryDirectory(prefix="hwcost-onnx-") as tmp:
        so = session_options(level)
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        _session(graph.model_bytes, so, providers, graph.name)
        return onnx.load(so.optimized_model_filepath)


@dataclass
class _Value:
    shape: tuple
    elem_type: int
    array: np.ndarray | None = None  # kept for runtime non-float node inputs, and a subnormal node's inputs
    subnormal: float = 0.0           # share of its elements that were subnormal floats in the run


def node_subnormal(node, values: dict[str, _Value]) -> float:
    """The largest subnormal share among a node's inputs (its weights included) and its outputs (0 when
    none is known)."""
    return max((values[v].subnormal for v in list(node.input) + list(node.output) if v and v in values),
               default=0.0)


def subnormal_nodes(model, values: dict[str, _Value]) -> list:
    """The nodes of ``model`` where an input (a weight included) or an output holds >= :data:`SUBNORMAL_MIN`
    subnormals."""
    return [n for n in model.graph.node if node_subnormal(n, values) >= SUBNORMAL_MIN]


def value_shapes(model, providers=("CPUExecutionProvider",), keep_values: bool = True,
                 subnormals: bool = True) -> dict[str, _Value]:
    """Shape and element type of every value of ``model`` (static input shapes).

    ``onnx.shape_inference`` first; if a node's value stays unknown (ONNX
    Runtime's contrib ops), a node takes a runtime non-float input, or
    ``subnormals`` is asked, the graph is run once as is, on a random input,
    with every value as an output: its non-float values kept (``keep_values``),
    each float value's share of subnormal elements counted, and the runtime
    inputs of the nodes they reach (:func:`subnormal_nodes`) kept.
    """
    import onnx
    import onnx.numpy_helper
    from onnx import TensorProto, helper
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, _Value] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(v)
        if dims is not None and v.type.tensor_type.elem_type:
            out[v.name] = _Value(dims, v.type.tensor_type.elem_type)
    for t in model.graph.initializer:     # weights count too: a node on subnormal weights is slow on any input
        out[t.name] = _Value(tuple(t.dims), t.data_type,
                             subnormal=subnormal_share(onnx.numpy_helper.to_array(t)) if subnormals else 0.0)
    inits = {t.name for t in model.graph.initializer}
    produced = [o for n in model.graph.node for o in n.output if o]
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    non_float_inputs = {i for n in model.graph.node for i in n.input
                        if i and i not in inits and (i not in out or out[i].elem_type not in floats)}
    if all(o in out for o in produced) and not (keep_values and non_float_inputs) and not subnormals:
        return out
    run = onnx.ModelProto()
    run.CopyFrom(model)
    listed = {o.name for o in run.graph.output}
    for name in produced:
        if name not in listed:
            run.graph.output.append(helper.make_empty_tensor_value_info(name))
            listed.add(name)
    graph_inputs = [v for v in model.graph.input if v.name not in inits]
    rng = np.random.default_rng(0)
    feed = {}
    for v in graph_inputs:
        dtype = _np_dtype(v.type.tensor_type.elem_type)
        shape = out[v.name].shape
        feed[v.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                        else np.zeros(shape, dtype))
    sess = _session(run.SerializeToString(), session_options("disable"), providers, "the optimised graph")
    names = [o.name for o in sess.get_outputs()]
    try:
        results = dict(zip(names, sess.run(names, feed)))
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise HwcostError(f"ONNX Runtime cannot run the optimised graph on a random input to read its values "
                          f"(shapes, subnormal floats): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                          ) from None
    for name, array in results.items():
        array = np.asarray(array)
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        # a value shape inference could not type (after a contrib op) is a candidate above; keep it only if
        # it really is non-float -- a float activation stays a runtime input of its node's model
        keep = array if (keep_values and name in non_float_inputs and not np.issubdtype(array.dtype, np.floating)) \
            else None
        out[name] = _Value(tuple(int(d) for d in array.shape), elem, keep,
                           subnormal_share(array) if subnormals else 0.0)
    if subnormals and keep_values:
        values = {**feed, **results}        # the graph's (random, normal) inputs and every value it produced
        for node in subnormal_nodes(model, out):
            for i in node.input:
                if i and i not in inits and out[i].array is None:
                    out[i].array = values.get(i)
    return out


# ---------------------------------------------------------------------------------------------
# Keys


def _attr_value(a):
    from onnx import AttributeProto
    if a.type == AttributeProto.INT:
        return int(a.i)
    if a.type == AttributeProto.FLOAT:
        return float(f"{a.f:.7g}") if np.isfinite(a.f) else None   # float32: 7 digits
    if a.type in (AttributeProto.INTS, AttributeProto.FLOATS):
        vals = list(a.ints) if a.type == AttributeProto.INTS else [float(f"{f:.7g}") for f in a.floats]
        if not vals:
            return None
        if len(set(vals)) == 1:
            return vals[0]
        return "x".join(str(v) for v in vals)
    if a.type == AttributeProto.STRING:
        text = _name(a.s.decode("utf-8", "replace"))
        return text if not text.replace(".", "").replace("-", "").isdigit() else f"s{text}"
    if a.type == AttributeProto.STRINGS:
        return _name("_".join(s.decode("utf-8", "replace") for s in a.strings)) if a.strings else None
    return None  # tensors, graphs: not a shape argument


def op_name(node) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def node_key(node, values: dict[str, _Value], inits: set[str]) -> OpKey:
    """The op key of one node (module doc), from the shapes in ``values``."""
    ins = [i for i in node.input if i]
    outs = [o for o in node.output if o]
    missing = [v for v in ins + outs[:1] if v not in values]
    if missing:
        raise HwcostError(f"node {node.name or node.op_type} ({op_name(node)}): no static shape for "
                          f"{', '.join(missing)}; give fixed input shapes (--input)")
    first = values[ins[0]].shape if ins else values[outs[0]].shape
    batch, c_in, h, w = _geometry(first)
    o = values[outs[0]].shape if outs else first
    c_out = _geometry(o)[1] if len(o) >= 2 else 1
    extra: dict = {}
    stride = 1
    for a in node.attribute:
        value = _attr_value(a)
        if value is None:
            continue
        if a.name == "strides":
            if isinstance(value, int) and value >= 1:
                stride = value
            else:
                extra["stride"] = value
            continue
        name = _RENAME.get(a.name, _name(a.name))
        if _DEFAULTS.get(name) == value:
            continue
        extra[name] = value
    if "kernel" not in extra and node.op_type in ("Conv", "ConvTranspose", "FusedConv") and len(ins) > 1:
        k = values[ins[1]].shape[2:]
        if k:
            extra["kernel"] = k[0] if len(set(k)) == 1 else _shape_value(k)
    if len(first) not in (2, 4):
        extra["in_shape"] = _shape_value(first)
    if len(o) == 4 and len(first) == 4:
        if (o[2], o[3]) != (h, w):
            extra["hout"], extra["wout"] = int(o[2]), int(o[3])
    elif len(o) not in (2, 4) or len(first) not in (2, 4):
        extra["out_shape"] = _shape_value(o)
    if len(ins) > 1:
        extra["n_in"] = len(ins)
        runtime = [i for i in ins[1:] if i not in inits]
        if any(values[i].shape != first for i in runtime):
            extra["in_shapes"] = "+".join(_shape_str(values[i].shape) for i in ins if i not in inits)
    consts = sum(1 for i in ins if i in inits)
    if consts:
        extra["n_const"] = consts
    if len(outs) > 1:
        extra["n_out"] = len(outs)
    extra = _subnormal_extra(extra, node_subnormal(node, values))
    return OpKey(ONNX_SPACE, _name(op_name(node)), max(batch, 1), max(c_in, 1), max(c_out, 1), max(h, 1),
                 max(w, 1), stride, tuple(extra.items()))


@dataclass
class OnnxNodes:
    """The nodes of an optimised graph, keyed: what profile, predict and bundle read."""

    model: object                       # the optimised ModelProto
    values: dict                        # name -> _Value
    keys: list = field(default_factory=list)   # one key per node, in graph order
    level: str = "all"

    def counts(self) -> Counter:
        return Counter(self.keys)

    def first_nodes(self) -> dict:
        """Key -> the first node with that key (the one a profile times)."""
        out: dict = {}
        for node, key in zip(self.model.graph.node, self.keys):
            out.setdefault(key, node)
        return out


def graph_nodes(graph: OnnxGraph, level: str = "all", providers=("CPUExecutionProvider",),
                keep_values: bool = True) -> OnnxNodes:
    """Every node ONNX Runtime runs for ``graph`` at ``level``, keyed. Subnormal floats are looked for on
    the CPU only (a GPU computes on them at full speed); ``keep_values`` false: keys only, nothing kept
    to time a node with (:func:`node_graph` refuses a flagged node then)."""
    model = optimized_graph(graph, level, providers)
    values = value_shapes(model, providers, keep_values=keep_values,
                          subnormals=tuple(providers)[:1] == ("CPUExecutionProvider",))
    inits = {t.name for t in model.graph.initializer}
    keys = [node_key(n, values, inits) for n in model.graph.node]
    return OnnxNodes(model, values, keys, level)


def onnx_op_counts(graph: OnnxGraph, level: str = "all", providers=("CPUExecutionProvider",)) -> Counter:
    """Key -> nodes of the optimised graph with that key (one forward pass)."""
    return graph_nodes(graph, level, providers, keep_values=False).counts()


def node_graph(nodes: OnnxNodes, node) -> OnnxGraph:
    """A one-node model of ``node`` (module doc), run as is."""
    import onnx
    from onnx import helper, numpy_helper
    model = nodes.model
    inits = {t.name: t for t in model.graph.initializer}
    g_inputs, g_inits, specs, feeds = [], [], [], []
    for name in dict.fromkeys(i for i in node.input if i):
        if name in inits:
            g_inits.append(inits[name])
            continue
        v = nodes.values[name]
        if v.array is not None and not np.issubdtype(v.array.dtype, np.floating):
            g_inits.append(numpy_helper.from_array(v.array, name))
            continue
        g_inputs.append(helper.make_tensor_value_info(name, v.elem_type, list(v.shape)))
        specs.append((name, v.shape, _np_dtype(v.elem_type)))
        feeds.append(v.array)
    # a node fed subnormals in its network is timed on its network's inputs (module doc); any other on random
    # data, even where a value it shares with such a node was kept
    flagged = node_subnormal(node, nodes.values) >= SUBNORMAL_MIN
    if flagged and not all(a is not None for a in feeds):
        raise HwcostError(f"node {node.name or node.op_type} is fed subnormal floats in its network, but its "
                          f"network's values were not kept (graph_nodes(..., keep_values=True))")
    arrays = tuple(feeds) if flagged and feeds else None
    g_outputs = [helper.make_tensor_value_info(o, nodes.values[o].elem_type, list(nodes.values[o].shape))
                 if o in nodes.values else helper.make_empty_tensor_value_info(o) for o in node.output if o]
    one = onnx.ModelProto()
    one.ir_version = model.ir_version
    one.opset_import.extend(model.opset_import)
    one.graph.CopyFrom(helper.make_graph([node], f"node_{op_name(node)}", g_inputs, g_outputs, g_inits))
    return OnnxGraph(one.SerializeToString(), tuple(specs), name=f"{op_name(node)} node", as_is=True, arrays=arrays)


__all__ = ["LEVELS", "ONNX_SPACE", "SUBNORMAL_MIN", "OnnxGraph", "OnnxNodes", "graph_nodes", "is_onnx_spec", "load_onnx",
           "node_graph", "node_key", "onnx_op_counts", "optimized_graph", "session_options", "subnormal_nodes",
           "subnormal_share", "value_shapes"]
