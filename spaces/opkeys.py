"""Which op keys a built network runs, and how often -- computed here only.

The profiler (what to measure), the cost tensor (what the search prices) and
whole-network prediction (what a network costs) all read a network's op keys
through this module, so the keys a table is measured for are the keys the
cost model and the search ask for.

Two kinds of network:

* a network of a search space, whose modules :func:`spaces.registry.build_op`
  tagged (``hw_space``, ``hw_op``, ``hw_args``): :func:`op_key` keys one call of
  a tagged module, :func:`tagged_op_counts` runs the network once and counts
  every call; :func:`probe_genotype`, :func:`probe_nb201_arch` and
  :func:`probe_configs` build the probe networks whose runs cover every
  edge's shape;
* any PyTorch model: :func:`model_layer_keys` keys its layers (torch.fx, or
  forward hooks on its leaf modules when it cannot be traced), in space
  ``torch``.

:func:`network_op_counts` picks the right one for a built network.

Subnormal floats (as for ONNX nodes, :mod:`spaces.onnx_graph`): a layer whose
float32 inputs, weights or output hold at least :data:`SUBNORMAL_MIN` subnormal values
in the model's forward pass gets ``subnormal`` (that share, one digit) in its
key and keeps the inputs it had in the network, so it is timed on them: x86
runs arithmetic on subnormals many times slower than on the random data every
other layer is timed with.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import Counter
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from device_tables import OpKey

from .errors import HwcostError
from .genotypes import Genotype
from .nb201 import Nb201NetConfig
from .nb201_arch import EDGES as NB201_EDGES, Nb201Arch
from .networks import CifarNetConfig, ImageNetConfig
from .registry import get_space

# Called for every call of a tagged module: (module, its key, its inputs).
Observer = Callable[[nn.Module, OpKey, tuple], None]

# ---------------------------------------------------------------------------
# Networks of a search space (tagged modules)


def op_key(module: nn.Module, x: torch.Tensor, batch: int | None = None) -> OpKey:
    """The key of one call of a tagged module: its arguments and its input ``x``'s size.

    ``batch`` replaces the input's batch size (a network run at batch 1 keyed
    for another batch).
    """
    args = module.hw_args
    extra = tuple((k, v) for k, v in args.items() if k not in ("c_in", "c_out", "stride"))
    return OpKey(module.hw_space, module.hw_op, int(x.shape[0]) if batch is None else batch,
                 args["c_in"], args["c_out"], int(x.shape[2]), int(x.shape[3]), args["stride"], extra)


def parameter_free(module: nn.Module) -> bool:
    """A module without parameters or buffers: its output is a function of its inputs alone, so two
    calls of it (same op, same arguments) on the same tensor compute the same value."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def tagged_op_counts(model: nn.Module, input_shape: tuple[int, ...], memo: dict | None = None,
                     observe: Observer | None = None, merged: dict | None = None) -> dict[OpKey, int]:
    """Key -> number of calls in one forward pass (eval mode) of a network of tagged ops.

    Each tagged module computes once per distinct key; later calls with the
    same key return the remembered output, zeroed (``memo``, shareable between
    networks; the builders' forwards never write in place), so running eight
    probes of a 20-cell network costs one run of each distinct op.
    ``observe(module, key, inputs)``, if given, sees every call (which edge of
    which cell a key belongs to, for the cost tensor).

    ``merged`` (a dict, filled): key -> the calls an ONNX graph does not make
    -- a parameter-free op (a pool, an identity, a node sum) called again with
    the same key on the very tensors an earlier call read computes the same
    value, and the ONNX export and ONNX Runtime's common-subexpression
    elimination keep one node for both (``docs/in-context.md``). The later
    call's output is the earlier one's, so a chain of them merges too. Every
    call is still counted in the result.
    """
    counts: dict[OpKey, int] = {}
    memo = {} if memo is None else memo
    seen: dict[tuple, torch.Tensor] = {}   # (key, ids of the input tensors) -> first call's output
    alive: list = []                        # keeps every tensor an id stands for alive (no id reuse)

    def shape_only(module, real_forward):
        free = merged is not None and parameter_free(module)

        def forward(*inputs):
            key = op_key(module, inputs[0])
            counts[key] = counts.get(key, 0) + 1
            if observe is not None:
                observe(module, key, inputs)
            if key not in memo:
                memo[key] = real_forward(*inputs).zero_()
            if merged is None:
                return memo[key]
            sig = (key, tuple(id(t) for t in inputs)) if free else None
            if sig is not None and sig in seen:
                merged[key] = merged.get(key, 0) + 1
                return seen[sig]
            out = memo[key].view_as(memo[key])   # a tensor of its own: identity tells values apart
            alive.extend(inputs)
            alive.append(out)
            if sig is not None:
                seen[sig] = out
            return out
        return forward

    tagged = [m for m in model.modules() if hasattr(m, "hw_op")]
    for m in tagged:
        m.forward = shape_only(m, m.forward)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only contend with other work
    try:
        with torch.no_grad():
            model.eval()(torch.randn(*input_shape))
    finally:
        torch.set_num_threads(threads)
        for m in tagged:
            del m.forward
    return counts


def probe_genotype(ops: str | Sequence[str], steps: int = 4, first: bool = True) -> Genotype:
    """A DARTS-form probe cell (the same for normal and reduce cells).

    Node k (0-based) takes ``ops[2k]`` from state 0 and ``ops[2k+1]`` from
    state k+1, so every source state 0..steps occurs: state 0 (and 1, for node
    0) is a cell input -- a stride-2 edge in a reduction cell -- the others are
    intermediate nodes (stride 1), so one probe sees every edge's input shape
    and stride in both cell types.  ``ops`` given as one name puts that op on
    every edge.  ``first=False`` takes state 1 instead of 0 from node 1 on:
    other edges, with the same shapes.  Every node is concatenated (as a
    derived genotype's cells are).
    """
    if isinstance(ops, str):
        ops = [ops] * (2 * steps)
    if len(ops) != 2 * steps:
        raise HwcostError(f"a probe cell of {steps} nodes takes {2 * steps} ops, got {len(ops)}")
    src0 = 0 if first else 1
    edges = tuple(e for k in range(steps)
                  for e in ((ops[2 * k], src0 if k else 0), (ops[2 * k + 1], k + 1)))
    concat = tuple(range(2, steps + 2))
    return Genotype(edges, concat, edges, concat)


def probe_nb201_arch(ops: str | Sequence[str]) -> str:
    """An NB201 probe cell: one op on every edge, or ``ops`` repeated along the edges."""
    ops = [ops] if isinstance(ops, str) else list(ops)
    return Nb201Arch(tuple(itertools.islice(itertools.cycle(ops), len(NB201_EDGES)))).to_str()


def probe_configs(space: str, config) -> list:
    """``config`` once per searchable op of ``space`` (``none`` included), with that op on every edge."""
    ops = get_space(space).searchable_ops()  # includes ``none``: a real op of the supernet
    if isinstance(config, Nb201NetConfig):
        return [dataclasses.replace(config, arch=probe_nb201_arch(op)) for op in ops]
    if isinstance(config, (CifarNetConfig, ImageNetConfig)):
        if config.space != space:
            raise HwcostError(f"a {config.space} network configuration cannot enumerate space {space!r}")
        steps = config.genotype.steps
        return [dataclasses.replace(config, genotype=probe_genotype(op, steps)) for op in ops]
    raise HwcostError(f"cannot enumerate shapes of a {type(config).__name__}")


def network_op_counts(model: nn.Module, input_shape: tuple[int, ...], merged: dict | None = None) -> Counter:
    """Key -> calls per forward pass: tagged space ops if the network has any, else its layers.

    ``merged`` (a dict, filled for a network of tagged ops): the calls an ONNX graph merges
    (:func:`tagged_op_counts`)."""
    if any(hasattr(m, "hw_op") for m in model.modules()):
        return Counter(tagged_op_counts(model, tuple(input_shape), merged=merged))
    return Counter({layer.key: layer.count for layer in model_layer_keys(model, tuple(input_shape))})


# ---------------------------------------------------------------------------
# Layers of any PyTorch model

TORCH_SPACE = "torch"
_INVALID = re.compile(r"[\s/|=:,]+")
# Functional ops that the tracer records under a different name than the one a
# table should use (x += y computes what x + y does).
_FN_ALIASES = {"iadd": "add", "imul": "mul", "isub": "sub", "itruediv": "truediv"}
# Calls that produce no tensor work (shape queries) -- skipped.
_SKIP_CALLS = {"size", "dim", "getattr"}


class Layer(NamedTuple):
    """One distinct layer of a model: its key, a module computing it, example
    inputs, and how many times it occurs in one forward pass."""
    key: OpKey
    module: nn.Module
    inputs: tuple
    count: int
    calls: tuple = ()   # every call of the key: (position in the forward pass, module, inputs)


class FunctionalCall(nn.Module):
    """A functional op (``torch.cat``, ``x + y``, ``x.flatten(1)``) as a module:
    tensors come in as arguments, the rest of the call is frozen."""

    def __init__(self, fn, args, kwargs, method: bool):
        super().__init__()
        self.fn, self.args, self.kwargs, self.method = fn, args, kwargs, method

    def forward(self, *tensors):
        it = iter(tensors)
        fill = lambda a: next(it) if a is TENSOR_ARG else a  # noqa: E731
        args = torch.utils._pytree.tree_map(fill, self.args)
        kwargs = torch.utils._pytree.tree_map(fill, self.kwargs)
        if self.method:
            return getattr(args[0], self.fn)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)


class _TensorSlot:
    def __repr__(self):
        return "<tensor>"


TENSOR_ARG = _TensorSlot()

_SUBNORMAL_CHUNK = 1 << 20
SUBNORMAL_MIN = 0.01    # share of a layer's (node's) input or output elements that are subnormal to key it apart


def subnormal_share(array) -> float:
    """Share of the elements of a float32 array (numpy, or a CPU tensor) that are subnormal (non-zero,
    below 1.2e-38); 0 for any other dtype (float16 is widened to float32 by the CPU kernels, where its
    small values are normal)."""
    if isinstance(array, torch.Tensor):
        if array.dtype != torch.float32 or array.device.type != "cpu":
            return 0.0
        array = array.detach().numpy()
    if array.dtype != np.float32 or array.size == 0:
        return 0.0
    # Counted on the bits, in chunks: a float32 is subnormal when its exponent bits are all zero and its
    # mantissa is not, i.e. (bits & 0x7fffffff) in [1, 0x7fffff] -- no float copy of a large weight
    # (vgg11's classifier holds 400 MB), at most one chunk of temporaries.
    bits = np.ascontiguousarray(array).reshape(-1).view(np.uint32)
    n = 0
    for i in range(0, bits.size, _SUBNORMAL_CHUNK):
        m = bits[i:i + _SUBNORMAL_CHUNK] & np.uint32(0x7FFFFFFF)
        m -= np.uint32(1)                     # 0 wraps to 0xffffffff, out of the range below
        n += int(np.count_nonzero(m < np.uint32(0x7FFFFF)))
    return n / bits.size


def _subnormal_extra(extra: dict, share: float) -> dict:
    """``extra`` with the ``subnormal`` share (one digit: the same on any run) when it reaches the minimum."""
    return {**extra, "subnormal": float(f"{share:.1g}")} if share >= SUBNORMAL_MIN else extra


def _name(text: str) -> str:
    return _INVALID.sub("_", text).strip("_") or "op"


def _shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"


def _geometry(shape) -> tuple[int, int, int, int]:
    """(batch, channels, h, w) of an activation: NCHW, NC, or else (extra 'in_shape')."""
    shape = tuple(int(d) for d in shape)
    padded = shape + (1,) * (4 - len(shape))
    return padded[0] or 1, padded[1] or 1, padded[2] or 1, padded[3] or 1


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _module_extra(m: nn.Module) -> dict:
    """The arguments of a layer that change its cost but not its input/output shapes."""
    extra: dict[str, Any] = {}
    for attr, name in (("kernel_size", "kernel"), ("padding", "padding"), ("dilation", "dilation")):
        if hasattr(m, attr) and not isinstance(getattr(m, attr), str):
            v = _pair(getattr(m, attr))
            extra[name] = v[0] if len(set(v)) == 1 else _shape_str(v)
        elif hasattr(m, attr):
            extra[name] = _name(getattr(m, attr))
    if isinstance(getattr(m, "groups", None), int):
        extra["groups"] = m.groups
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
        extra["bias"] = int(m.bias is not None)
    if isinstance(getattr(m, "affine", None), bool):
        extra["affine"] = int(m.affine)
    if isinstance(getattr(m, "elementwise_affine", None), bool):
        extra["affine"] = int(m.elementwise_affine)
    if getattr(m, "ceil_mode", False):
        extra["ceil_mode"] = 1
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        extra["out"] = _shape_str(_pair(m.output_size))
    return extra


def _stride(m) -> int | str:
    s = _pair(getattr(m, "stride", 1) or 1)
    return int(s[0]) if len(set(s)) == 1 else _shape_str(s)


def _layer_key(op: str, ins: list, out, module: nn.Module | None, extra: dict) -> OpKey:
    """Key of a layer from its op type and its tensors' shapes."""
    first = ins[0].shape if ins else out.shape
    batch, c_in, h, w = _geometry(first)
    o = out.shape
    c_out = _geometry(o)[1] if len(o) >= 2 else 1
    if isinstance(module, nn.Linear):
        c_in, c_out = module.in_features, module.out_features
        h, w = (int(math.prod(first[1:-1])) or 1), 1
    extra = dict(extra)
    if len(first) > 4 or (len(first) == 3 and not isinstance(module, nn.Linear)):
        extra["in_shape"] = _shape_str(first)
    if len(ins) > 1:
        extra["n_inputs"] = len(ins)
        if any(tuple(t.shape) != tuple(first) for t in ins[1:]):
            extra["in_shapes"] = "_".join(_shape_str(t.shape) for t in ins)
    if len(o) != 2 and len(o) != 4 or (len(o) == 4 and len(first) != 4):
        extra["out_shape"] = _shape_str(o)
    stride = 1
    if module is not None:
        s = _stride(module)
        stride = s if isinstance(s, int) else 1
        if isinstance(s, str):
            extra["stride"] = s
    return OpKey(TORCH_SPACE, _name(op), batch, c_in, max(c_out, 1), h, w, max(stride, 1), tuple(extra.items()))


def _fresh(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return torch.randn(t.shape, dtype=t.dtype)
    return t.clone()


def _inputs_kept(tensors: list) -> tuple[float, tuple | None]:
    """(largest subnormal share among a layer's input tensors, copies of them taken before the call when
    that share reaches :data:`SUBNORMAL_MIN` -- an in-place layer would overwrite them -- else None)."""
    share = max((subnormal_share(t) for t in tensors), default=0.0)
    return share, (tuple(t.clone() for t in tensors) if share >= SUBNORMAL_MIN else None)


def _timed_inputs(tensors: list, share_in: float, kept, out, module: nn.Module | None = None
                  ) -> tuple[float, tuple]:
    """(the layer's subnormal share, the inputs it is timed on): its network's inputs when its inputs,
    its own weights (``module``'s parameters and buffers; a functional call's weights are among its
    inputs) or its output hold subnormals (an output of subnormals from normal inputs -- a softmax
    after a -100 mask -- needs these inputs to make them), else random ones of the same shapes."""
    own = [] if module is None else [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    share = max([share_in, subnormal_share(out) if isinstance(out, torch.Tensor) else 0.0]
                + [subnormal_share(w) for w in own])
    if share < SUBNORMAL_MIN:
        return share, tuple(_fresh(t) for t in tensors)
    return share, kept if kept is not None else tuple(t.clone() for t in tensors)


def _fx_layers(gm, x: torch.Tensor, names: list | None = None) -> list[tuple[OpKey, nn.Module, tuple]]:
    """Run a traced model node by node, keying every node that computes a tensor (``names``, if given,
    gets each keyed node's name, in the same order)."""
    import torch.fx as fx
    env: dict[fx.Node, Any] = {}
    out: list[tuple[OpKey, nn.Module, tuple]] = []
    modules = dict(gm.named_modules())
    load = lambda a: fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
    first = True
    for node in gm.graph.nodes:
        if node.op == "placeholder":      # the input; later forward arguments keep their defaults
            env[node] = x if first else (node.args[0] if node.args else None)
            first = False
            continue
        if node.op == "output":
            break
        if node.op == "get_attr":
            env[node] = _getattr_path(gm, node.target)
            continue
        args, kwargs = load(node.args), load(node.kwargs)
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        share_in, kept = _inputs_kept(tensors)
        if node.op == "call_module":
            m = modules[node.target]
            result = m(*args, **kwargs)
            op, module, extra = type(m).__name__, m, _module_extra(m)
        else:
            fn = node.target
            result = getattr(args[0], fn)(*args[1:], **kwargs) if node.op == "call_method" else fn(*args, **kwargs)
            name = fn if isinstance(fn, str) else getattr(fn, "__name__", type(fn).__name__)
            if (name in _SKIP_CALLS or not isinstance(result, torch.Tensor)
                    or (name == "getitem" and not isinstance(args[0], torch.Tensor))):  # picks from a tuple
                env[node] = result
                continue
            op = _FN_ALIASES.get(name, name)
            is_t = lambda a: TENSOR_ARG if isinstance(a, torch.Tensor) else a  # noqa: E731
            module = FunctionalCall(fn, torch.utils._pytree.tree_map(is_t, args),
                           torch.utils._pytree.tree_map(is_t, kwargs), node.op == "call_method")
            extra = {}
            consts = [a for a in torch.utils._pytree.tree_leaves((node.args, node.kwargs))
                      if not isinstance(a, fx.Node) and isinstance(a, (int, float)) and not isinstance(a, bool)]
            if op not in ("add", "mul", "sub", "truediv"):
                extra.update((f"arg{i}", c) for i, c in enumerate(consts))
            elif not tensors[1:]:
                extra["scalar"] = 1  # x + 1.0: one tensor operand
        env[node] = result
        first_out = result if isinstance(result, torch.Tensor) else next(
            (t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)), None)
        if first_out is not None and tensors:  # a module returning a tuple is keyed by its first output
            share, inputs = _timed_inputs(tensors, share_in, kept, first_out,
                                          module if node.op == "call_module" else None)
            key = _layer_key(op, tensors, first_out, module if node.op == "call_module" else None,
                             _subnormal_extra(extra, share))
            out.append((key, module, inputs))
            if names is not None:
                names.append(node.name)
    return out


def _getattr_path(obj, target: str):
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _leaf_modules(model: nn.Module) -> list[nn.Module]:
    """The modules without children: what forward hooks see of an untraceable model."""
    return [m for m in model.modules() if not list(m.children())]


def _hook_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[OpKey, nn.Module, tuple]]:
    """Fallback for untraceable models: every leaf module, via forward hooks
    (functional ops between modules are not seen)."""
    out = []

    before: dict[int, tuple] = {}

    def enter(m, inputs):
        before[id(m)] = _inputs_kept([t for t in inputs if isinstance(t, torch.Tensor)])

    def hook(m, inputs, output):
        share_in, kept = before.pop(id(m))
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        if tensors and isinstance(output, torch.Tensor):
            share, timed = _timed_inputs(tensors, share_in, kept, output, m)
            key = _layer_key(type(m).__name__, tensors, output, m, _subnormal_extra(_module_extra(m), share))
            out.append((key, m, timed))

    leaves = _leaf_modules(model)
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(hook))]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


HOOK_COVER = 0.95     # hooks on leaf modules must see this share of the computed tensor elements (glue such as a
#                      final mean may run outside them; an attention or a norm inside a composite module may not)


def _check_hooks_cover(model: nn.Module, x: torch.Tensor, raw, why: str) -> None:
    """Hooks see leaf modules only: compute done between them (a functional attention, a batch norm
    inside a module with children, a matmul in ``forward``) would silently go missing. Every aten op
    of one forward pass is watched (a dispatch mode) and the elements it computes are counted as
    inside a leaf module's call or outside all of them (views are not compute); if the leaves hold
    less than ``HOOK_COVER`` of them, one clear error naming the model, why torch.fx could not trace
    it and what runs outside the leaves."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    leaves = _leaf_modules(model)
    state = {"depth": 0, "inside": 0, "outside": Counter()}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            ins = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor)}
            n = sum(t.numel() for t in outs if t.untyped_storage().data_ptr() not in ins)   # views: no compute
            if state["depth"]:
                state["inside"] += n
            elif n:
                state["outside"][str(func.overloadpacket.__name__)] += n
            return out

    def enter(m, inputs):
        state["depth"] += 1

    def leave(m, inputs, output):
        state["depth"] -= 1
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with Watch():
            model(x)
    finally:
        for h in handles:
            h.remove()
    outside = sum(state["outside"].values())
    total = outside + state["inside"]
    if total and state["inside"] < HOOK_COVER * total:
        ops = ", ".join(name for name, _ in state["outside"].most_common(5))
        raise HwcostError(f"{type(model).__name__} cannot be keyed layer by layer: torch.fx cannot trace it ({why}), "
                          f"and {outside / total:.0%} of what it computes runs outside its leaf modules ({ops}), "
                          f"which hooks cannot see; profile it as ONNX instead (hwcost export --model ..., then "
                          f"--model NET.onnx)")


def model_layer_keys(model: nn.Module, input_shape: tuple[int, ...], use_fx: bool = True) -> list[Layer]:
    """Every distinct layer of ``model`` at ``input_shape``, with its count.

    torch.fx symbolic tracing sees leaf modules (Conv2d, BN, ReLU, pools,
    Linear, ...) and the functional ops between them (add, cat, flatten,
    mean, ...); a model that cannot be traced falls back to hooks on its leaf
    modules. The sum over layers of ``count x cost(key)`` is the model's cost
    as the sum of its layers.
    """
    import torch.fx as fx
    model = model.eval()
    x = torch.randn(*input_shape)
    gm, why = None, "not tried"
    if use_fx:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - tracing fails in many ways (control flow, ...): use hooks
            gm, why = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    try:
        with torch.no_grad():
            raw = _fx_layers(gm, x) if gm is not None else _hook_layers(model, x)
            if gm is None:
                _check_hooks_cover(model, x, raw, why)
    except RuntimeError as e:
        raise HwcostError(f"{type(model).__name__} cannot take input of shape "
                          f"{_shape_str(input_shape)}: {str(e).splitlines()[0]}") from None
    first: dict[OpKey, tuple[nn.Module, tuple]] = {}
    calls: dict[OpKey, list] = {}
    for position, (key, module, inputs) in enumerate(raw):
        first.setdefault(key, (module, inputs))
        calls.setdefault(key, []).append((position, module, inputs))
    return [Layer(k, m, ins, len(calls[k]), tuple(calls[k])) for k, (m, ins) in first.items()]

