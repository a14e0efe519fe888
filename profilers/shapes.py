"""Which op keys to measure: every op of a space at every shape it occurs at,
and every layer of any PyTorch model.

Shapes are never hand-listed. For a space, the network builders run with
every module that :func:`spaces.registry.build_op` tagged (``hw_op``)
intercepted -- a forward hook that also skips repeated work -- so the fixed
parts (stems, preprocessing, node sums, concats, classifier, NB201's
residual blocks) come with the searchable ops. Search
coverage comes from *probe* genotypes: one per searchable op, with that op on
every edge and edge inputs that reach both the cell inputs (stride 2 in a
reduction cell) and the intermediate nodes (stride 1).

Enumeration runs each probe network at batch 1 on the CPU, computing each
distinct op once (see :func:`network_keys`), and then sets the batch asked
for. (The ``meta`` device computes nothing but its Python decompositions
are slower than this.)
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from device_tables import OpKey
from spaces.errors import HwcostError, unknown
from spaces.genotypes import Genotype
from spaces.nb201 import Nb201NetConfig
from spaces.nb201_arch import EDGES, Nb201Arch
from spaces.networks import CifarNetConfig, ImageNetConfig, build_network
from spaces.registry import build_op, example_inputs, get_space

# ---------------------------------------------------------------------------
# Space keys


def probe_genotype(op: str, steps: int = 4) -> Genotype:
    """Every edge uses ``op``; node k takes inputs (0, k+1).

    Input 0 (and 1, for node 0) is a cell input -- a stride-2 edge in a
    reduction cell -- and inputs 2..steps+1 are intermediate nodes (stride 1),
    so one probe covers both edge kinds of both cell types.
    """
    edges = tuple(e for k in range(steps) for e in ((op, 0), (op, k + 1)))
    concat = tuple(range(2, steps + 2))
    return Genotype(edges, concat, edges, concat)


def probe_nb201_arch(op: str) -> str:
    return Nb201Arch(tuple(op for _ in EDGES)).to_str()


# Named network configurations; each function maps a space to its config
# (whose genotype/arch is replaced by the probes).
_PLACEHOLDER = probe_genotype("skip_connect")
CONFIG_PRESETS: dict[str, Callable[[str], Any]] = {
    # The DARTS search supernet's shapes: C=16, 8 cells, reductions at cells 2 and 5.
    "cifar10-search": lambda space: CifarNetConfig(_PLACEHOLDER, space, C=16, layers=8),
    "cifar10": lambda space: CifarNetConfig(_PLACEHOLDER, space, C=36, layers=20),
    "imagenet": lambda space: ImageNetConfig(_PLACEHOLDER, space, C=48, layers=14),
    "nb201": lambda space: Nb201NetConfig(probe_nb201_arch("skip_connect")),
}
_PRESETS_BY_SPACE = {"darts": ("cifar10-search", "cifar10", "imagenet"),
                     "sharpdarts": ("cifar10-search", "cifar10", "imagenet"),
                     "nb201": ("nb201",)}


def presets_for(space: str) -> tuple[str, ...]:
    get_space(space)
    return _PRESETS_BY_SPACE.get(space, ())


def resolve_configs(space: str, names) -> list:
    """``"cifar10-search,cifar10"`` (or a list of names) -> network configs of ``space``."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    known = presets_for(space)
    if not names:
        raise HwcostError(f"no network configuration given for space {space!r}; known: {', '.join(known)}")
    out = []
    for name in names:
        if name not in known:
            raise unknown(f"network configuration for space {space!r}", name, known)
        out.append(CONFIG_PRESETS[name](space))
    return out


def _probe_configs(space: str, config) -> list:
    """The config once per probe: each searchable op on every edge."""
    ops = get_space(space).searchable_ops()  # includes ``none``: a real op of the supernet
    if isinstance(config, Nb201NetConfig):
        return [dataclasses.replace(config, arch=probe_nb201_arch(op)) for op in ops]
    if isinstance(config, (CifarNetConfig, ImageNetConfig)):
        if config.space != space:
            raise HwcostError(f"a {config.space} network configuration cannot enumerate space {space!r}")
        steps = config.genotype.steps
        return [dataclasses.replace(config, genotype=probe_genotype(op, steps)) for op in ops]
    raise HwcostError(f"cannot enumerate shapes of a {type(config).__name__}")


def hooked_key(module: nn.Module, inputs: tuple) -> OpKey:
    """The key of one call of a tagged module, from its arguments and its input."""
    x = inputs[0]
    batch, _, h, w = x.shape
    args = dict(module.hw_args)
    extra = tuple((k, v) for k, v in args.items() if k not in ("c_in", "c_out", "stride"))
    return OpKey(module.hw_space, module.hw_op, int(batch), args["c_in"], args["c_out"],
                 int(h), int(w), args["stride"], extra)


def network_keys(model: nn.Module, input_shape: tuple[int, ...],
                 memo: dict | None = None) -> dict[OpKey, int]:
    """Key -> number of calls in one forward pass of a network of tagged ops.

    Each tagged module computes once per distinct key; later calls with the
    same key return the remembered output, zeroed (``memo``, shareable between
    networks; the builders' forwards never write in place), so enumerating
    eight probes of a 20-cell network costs one run of each distinct op.
    """
    counts: dict[OpKey, int] = {}
    memo = {} if memo is None else memo

    def shape_only(module, real_forward):
        def forward(*inputs):
            key = hooked_key(module, inputs)
            counts[key] = counts.get(key, 0) + 1
            if key not in memo:
                memo[key] = real_forward(*inputs).zero_()
            return memo[key]
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


def _key_order(space: str):
    names = list(get_space(space).ops)
    return lambda k: (names.index(k.op), k.batch, k.c_in, k.c_out, -k.h, -k.w, k.stride, k.extra)


def space_keys(space: str, configs, batch: int = 1) -> list[OpKey]:
    """Every op of ``space`` at every shape it occurs at in ``configs`` (probed).

    ``configs`` are network configs or preset names. The result is
    de-duplicated and sorted by (op in registry order, shape).
    """
    get_space(space)
    if isinstance(configs, str):
        configs = resolve_configs(space, configs)
    configs = [resolve_configs(space, [c])[0] if isinstance(c, str) else c for c in configs]
    if not isinstance(batch, int) or batch < 1:
        raise HwcostError(f"batch must be a positive integer, got {batch!r}")
    keys: set[OpKey] = set()
    memo: dict = {}
    for config in configs:
        for probe in _probe_configs(space, config):
            model = build_network(probe)
            counts = network_keys(model, model.input_shape(1), memo)
            keys.update(dataclasses.replace(k, batch=batch) for k in counts)
    return sorted(keys, key=_key_order(space))


def key_module(key: OpKey, affine: bool = True) -> tuple[nn.Module, tuple]:
    """The module a space key stands for (eval mode) and random inputs of its shape."""
    if key.space == TORCH_SPACE:
        return torch_key_module(key)
    module = build_op(key.space, key.op, key.c_in, key.c_out, key.stride, affine, **dict(key.extra))
    return module.eval(), example_inputs(module, key.batch, key.h, key.w)


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


class _Call(nn.Module):
    """A functional op (``torch.cat``, ``x + y``, ``x.flatten(1)``) as a module:
    tensors come in as arguments, the rest of the call is frozen."""

    def __init__(self, fn, args, kwargs, method: bool):
        super().__init__()
        self.fn, self.args, self.kwargs, self.method = fn, args, kwargs, method

    def forward(self, *tensors):
        it = iter(tensors)
        fill = lambda a: next(it) if a is _TENSOR else a  # noqa: E731
        args = torch.utils._pytree.tree_map(fill, self.args)
        kwargs = torch.utils._pytree.tree_map(fill, self.kwargs)
        if self.method:
            return getattr(args[0], self.fn)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)


class _TensorSlot:
    def __repr__(self):
        return "<tensor>"


_TENSOR = _TensorSlot()


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


def _fx_layers(gm, x: torch.Tensor) -> list[tuple[OpKey, nn.Module, tuple]]:
    """Run a traced model node by node, keying every node that computes a tensor."""
    import torch.fx as fx
    env: dict[fx.Node, Any] = {}
    out: list[tuple[OpKey, nn.Module, tuple]] = []
    modules = dict(gm.named_modules())
    load = lambda a: fx.node.map_arg(a, lambda n: env[n])  # noqa: E731
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = x
            continue
        if node.op == "output":
            break
        if node.op == "get_attr":
            env[node] = _getattr_path(gm, node.target)
            continue
        args, kwargs = load(node.args), load(node.kwargs)
        if node.op == "call_module":
            m = modules[node.target]
            result = m(*args, **kwargs)
            op, module, extra = type(m).__name__, m, _module_extra(m)
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        else:
            fn = node.target
            result = getattr(args[0], fn)(*args[1:], **kwargs) if node.op == "call_method" else fn(*args, **kwargs)
            name = fn if isinstance(fn, str) else getattr(fn, "__name__", type(fn).__name__)
            if (name in _SKIP_CALLS or not isinstance(result, torch.Tensor)
                    or (name == "getitem" and not isinstance(args[0], torch.Tensor))):  # picks from a tuple
                env[node] = result
                continue
            op = _FN_ALIASES.get(name, name)
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            is_t = lambda a: _TENSOR if isinstance(a, torch.Tensor) else a  # noqa: E731
            module = _Call(fn, torch.utils._pytree.tree_map(is_t, args),
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
            key = _layer_key(op, tensors, first_out, module if node.op == "call_module" else None, extra)
            out.append((key, module, tuple(_fresh(t) for t in tensors)))
    return out


def _getattr_path(obj, target: str):
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _hook_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[OpKey, nn.Module, tuple]]:
    """Fallback for untraceable models: every leaf module, via forward hooks
    (functional ops between modules are not seen)."""
    out = []

    def hook(m, inputs, output):
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        if tensors and isinstance(output, torch.Tensor):
            key = _layer_key(type(m).__name__, tensors, output, m, _module_extra(m))
            out.append((key, m, tuple(_fresh(t) for t in tensors)))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


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
    gm = None
    if use_fx:
        try:
            gm = fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - tracing fails in many ways (control flow, ...): use hooks
            gm = None
    try:
        with torch.no_grad():
            raw = _fx_layers(gm, x) if gm is not None else _hook_layers(model, x)
    except RuntimeError as e:
        raise HwcostError(f"{type(model).__name__} cannot take input of shape "
                          f"{_shape_str(input_shape)}: {str(e).splitlines()[0]}") from None
    first: dict[OpKey, tuple[nn.Module, tuple]] = {}
    counts: dict[OpKey, int] = {}
    for key, module, inputs in raw:
        first.setdefault(key, (module, inputs))
        counts[key] = counts.get(key, 0) + 1
    return [Layer(k, m, ins, counts[k]) for k, (m, ins) in first.items()]


def torch_key_module(key: OpKey) -> tuple[nn.Module, tuple]:
    """Rebuild a common torch layer from its key (others need the model itself)."""
    ex = dict(key.extra)
    if "in_shape" in ex or "in_shapes" in ex or "stride" in ex:
        raise HwcostError(f"cannot rebuild {key.to_str()} from its key alone; profile the model instead")
    x = lambda c=key.c_in: torch.randn(key.batch, c, key.h, key.w)  # noqa: E731
    op = key.op
    if op == "Conv2d":
        m = nn.Conv2d(key.c_in, key.c_out, ex["kernel"], key.stride, ex.get("padding", 0),
                      ex.get("dilation", 1), ex.get("groups", 1), bool(ex.get("bias", 1)))
        return m.eval(), (x(),)
    if op == "Linear":
        m = nn.Linear(key.c_in, key.c_out, bool(ex.get("bias", 1)))
        return m.eval(), (torch.randn(key.batch, key.c_in),)
    if op == "BatchNorm2d":
        return nn.BatchNorm2d(key.c_in, affine=bool(ex.get("affine", 1))).eval(), (x(),)
    simple = {"ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Hardswish": nn.Hardswish, "SiLU": nn.SiLU,
              "Sigmoid": nn.Sigmoid, "Hardsigmoid": nn.Hardsigmoid, "Identity": nn.Identity}
    if op in simple:
        return simple[op]().eval(), (x(),)
    if op in ("MaxPool2d", "AvgPool2d"):
        cls = nn.MaxPool2d if op == "MaxPool2d" else nn.AvgPool2d
        return cls(ex["kernel"], key.stride, ex.get("padding", 0), ceil_mode=bool(ex.get("ceil_mode", 0))).eval(), (x(),)
    if op == "AdaptiveAvgPool2d" and ex.get("out") == "1x1":
        return nn.AdaptiveAvgPool2d(1).eval(), (x(),)
    if op == "flatten" and ex == {"arg0": 1}:
        return _Call(torch.flatten, (_TENSOR, 1), {}, False), (x(),)
    if op in ("add", "mul") and "n_inputs" in ex:
        fn = operator.add if op == "add" else operator.mul
        return _Call(fn, (_TENSOR, _TENSOR), {}, False), (x(), x())
    raise HwcostError(f"cannot rebuild {key.to_str()} from its key alone; profile the model instead")


def resolve_model(spec: str) -> nn.Module:
    """``torchvision:NAME`` -> the model, randomly initialised (never downloads weights)."""
    kind, sep, name = spec.partition(":")
    if kind != "torchvision" or not sep or not name:
        raise HwcostError(f"bad model {spec!r}: expected torchvision:NAME (e.g. torchvision:mobilenet_v2)")
    try:
        import torchvision
    except ImportError:  # pragma: no cover
        raise HwcostError("torchvision is not installed; it is needed for torchvision:NAME models") from None
    known = torchvision.models.list_models()
    if name not in known:
        raise unknown("torchvision model", name, known)
    return torchvision.models.get_model(name, weights=None).eval()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` -> (1, 3, 224, 224)."""
    parts = str(text).lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise HwcostError(f"bad --input {text!r}: expected positive sizes joined by 'x', e.g. 1x3x224x224")
    return shape
