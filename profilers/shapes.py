"""Which op keys to measure: every op of a space at every shape it occurs at,
and every layer of any PyTorch model.

Shapes are never hand-listed, and keys are never computed here: the probe
networks and the keys of a built network come from :mod:`spaces.opkeys`, the
one place that also gives the cost tensor and whole-network prediction their
keys, so a table is measured for exactly the keys they ask for. For a space,
the network builders run with every tagged module intercepted, so the fixed
parts (stems, preprocessing, node sums, concats, classifier, NB201's
residual blocks) come with the searchable ops. Search coverage comes from
*probe* genotypes: one per searchable op, with that op on every edge and edge
inputs that reach both the cell inputs (stride 2 in a reduction cell) and the
intermediate nodes (stride 1).

Enumeration runs each probe network at batch 1 on the CPU, computing each
distinct op once (see :func:`spaces.opkeys.tagged_op_counts`), and then sets
the batch asked for. (The ``meta`` device computes nothing but its Python
decompositions are slower than this.)
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import torch
import torch.nn as nn

from device_tables import OpKey
from spaces.errors import HwcostError, unknown
from spaces.nb201 import Nb201NetConfig
from spaces.networks import CifarNetConfig, ImageNetConfig, build_network
from spaces.opkeys import (TENSOR_ARG, TORCH_SPACE, FunctionalCall, Layer, model_layer_keys, probe_configs,
                           probe_genotype, probe_nb201_arch, tagged_op_counts)
from spaces.registry import build_op, example_inputs, get_space

# Layer, model_layer_keys, probe_genotype, probe_nb201_arch and TORCH_SPACE live in spaces.opkeys
# (shared with the cost models); they are re-exported here for the profiler's callers.
__all__ = ["CONFIG_PRESETS", "Layer", "TORCH_SPACE", "key_module", "model_layer_keys", "parse_input_shape",
           "presets_for", "probe_genotype", "probe_nb201_arch", "resolve_configs", "resolve_model", "resolve_source",
           "space_keys", "torch_key_module"]

# ---------------------------------------------------------------------------
# Space keys


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
        for probe in probe_configs(space, config):
            model = build_network(probe)
            counts = tagged_op_counts(model, model.input_shape(1), memo)
            keys.update(dataclasses.replace(k, batch=batch) for k in counts)
    return sorted(keys, key=_key_order(space))


def key_module(key: OpKey, affine: bool = True) -> tuple[nn.Module, tuple]:
    """The module a space key stands for (eval mode) and random inputs of its shape."""
    if key.space == TORCH_SPACE:
        return torch_key_module(key)
    module = build_op(key.space, key.op, key.c_in, key.c_out, key.stride, affine, **dict(key.extra))
    return module.eval(), example_inputs(module, key.batch, key.h, key.w)


def torch_key_module(key: OpKey) -> tuple[nn.Module, tuple]:
    """Rebuild a common torch layer from its key (others need the model itself)."""
    ex = dict(key.extra)
    if "in_shape" in ex or "in_shapes" in ex or "stride" in ex or "subnormal" in ex:   # subnormal: its values matter
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
        return FunctionalCall(torch.flatten, (TENSOR_ARG, 1), {}, False), (x(),)
    if op in ("add", "mul") and "n_inputs" in ex:
        fn = operator.add if op == "add" else operator.mul
        return FunctionalCall(fn, (TENSOR_ARG, TENSOR_ARG), {}, False), (x(), x())
    raise HwcostError(f"cannot rebuild {key.to_str()} from its key alone; profile the model instead")


MODEL_FORMS = "torchvision:NAME, timm:NAME or package.module:factory"


def resolve_source(spec: str, input_text: str | None):
    """A ``--model`` and its ``--input`` -> (a PyTorch model or an ONNX graph, input shape).

    ``NET.onnx`` (or any existing file) is read as an ONNX model
    (:func:`spaces.onnx_graph.load_onnx`: ``--input`` is optional and fixes dynamic
    dims); the other forms (:func:`resolve_model`) need ``--input``.
    """
    from spaces.onnx_graph import is_onnx_spec, load_onnx
    shape = parse_input_shape(input_text) if input_text is not None else None
    if is_onnx_spec(spec):
        graph = load_onnx(str(spec), shape)
        return graph, graph.input_shape
    if shape is None:
        raise HwcostError("--model needs --input, e.g. --input 1x3x224x224")
    return resolve_model(spec), shape


def resolve_model(spec: str) -> nn.Module:
    """A model named on the command line, randomly initialised (weights are never downloaded):

    * ``torchvision:NAME`` -- a torchvision classification/detection/... model;
    * ``timm:NAME`` -- a timm model (the optional extra ``pip install -e '.[timm]'``);
    * ``package.module:factory`` -- a callable of the user's code (on ``PYTHONPATH``) that takes
      no arguments and returns an ``nn.Module``.

    An ONNX file is no PyTorch model: :func:`resolve_source` takes both.
    """
    from spaces.onnx_graph import is_onnx_spec
    if is_onnx_spec(spec):
        raise HwcostError(f"{spec} is an ONNX file, not a PyTorch model; here --model takes {MODEL_FORMS}")
    kind, sep, name = str(spec).partition(":")
    if not sep or not kind or not name:
        raise HwcostError(f"bad model {spec!r}: expected {MODEL_FORMS} (e.g. torchvision:mobilenet_v2)")
    # the same weights in every process and call (the caller's random state untouched): a node's key can
    # depend on its values (spaces.onnx_graph: subnormal floats), so profile, calibrate and predict must agree
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _build_model(spec, kind, name)


def _build_model(spec: str, kind: str, name: str) -> nn.Module:
    if kind == "torchvision":
        try:
            import torchvision
        except ImportError:  # pragma: no cover
            raise HwcostError("torchvision is not installed; it is needed for torchvision:NAME models") from None
        known = torchvision.models.list_models()
        if name not in known:
            raise unknown("torchvision model", name, known)
        return torchvision.models.get_model(name, weights=None).eval()
    if kind == "timm":
        return _timm_model(name)
    return _factory_model(spec, kind, name)


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise HwcostError("timm:NAME needs timm, an optional extra: pip install -e '.[timm]' (or pip install "
                          "timm)") from None
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise HwcostError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else
                                                             "; timm.list_models() lists them"))
    return timm.create_model(name, pretrained=False).eval()


def _factory_model(spec: str, module_name: str, attr: str) -> nn.Module:
    import importlib
    if not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise HwcostError(f"bad model {spec!r}: expected {MODEL_FORMS}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise HwcostError(f"model {spec!r}: cannot import {module_name} ({e}); is its directory on "
                          f"PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise HwcostError(f"model {spec!r}: {module_name} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
        raise HwcostError(f"model {spec!r}: {module_name}.{attr}() raised {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    if not isinstance(model, nn.Module):
        raise HwcostError(f"model {spec!r}: {module_name}.{attr}() returned {type(model).__name__}, "
                          f"not a torch.nn.Module")
    return model.eval()


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
