"""Functions a notebook user calls; the CLI wraps each of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from spaces import (NETWORKS, Nb201NetConfig, build_network, get_space, load_genotype,
                    network_config)
from spaces.errors import HwcostError


@dataclass
class Target:
    """A network the user named: its module, input shape and a description."""
    model: nn.Module
    input_shape: tuple[int, ...]
    description: dict


def resolve_target(space: str = "darts", genotype: str | None = None, arch: str | None = None,
                   network: str = "cifar10", auxiliary: bool = False, batch: int = 1) -> Target:
    """(space, genotype | arch, network) -> the built network."""
    get_space(space)  # unknown space -> clear error
    if space == "nb201":
        if arch is None:
            raise HwcostError("--space nb201 needs --arch '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'")
        if genotype is not None:
            raise HwcostError("--genotype is for the darts/sharpdarts spaces; nb201 takes --arch")
        cfg = Nb201NetConfig(arch=arch)
        model = build_network(cfg)
        return Target(model, model.input_shape(batch),
                      {"space": space, "arch": cfg.arch, "network": "cifar10"})
    if arch is not None:
        raise HwcostError(f"--arch is for the nb201 space; space {space!r} takes --genotype")
    if genotype is None:
        raise HwcostError(f"space {space!r} needs --genotype (a built-in name or a genotype file)")
    if network not in NETWORKS:
        raise HwcostError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
    g_space, g = load_genotype(genotype, space)
    model = build_network(network_config(network, g, g_space, auxiliary=auxiliary))
    return Target(model, model.input_shape(batch),
                  {"space": g_space, "genotype": genotype, "network": network})


def cost(space: str = "darts", genotype: str | None = None, arch: str | None = None,
         network: str = "cifar10") -> dict:
    """Analytical costs of a network (auxiliary head built, counted only in params_with_aux)."""
    from costmodels.analytical import network_costs
    t = resolve_target(space, genotype, arch, network, auxiliary=(space != "nb201"))
    return {**t.description, "input_shape": list(t.input_shape),
            **network_costs(t.model, t.input_shape).to_dict()}


def export(onnx_path: str, space: str = "darts", genotype: str | None = None, arch: str | None = None,
           network: str = "cifar10", atol: float = 1e-4, seed: int = 0) -> dict:
    """Export a network to ONNX, check it and compare it with PyTorch on ORT CPU."""
    import torch

    from profilers.export import export_onnx
    torch.manual_seed(seed)
    t = resolve_target(space, genotype, arch, network)
    x = torch.randn(*t.input_shape)
    r = export_onnx(t.model, x, onnx_path, atol=atol)
    return {**t.description, "onnx": r.path, "opset": r.opset, "nodes": r.n_nodes,
            "max_abs_diff": r.max_abs_diff}


def model_cost(spec: str, input_text: str | None = None) -> dict:
    """Costs of a ``--model``: a PyTorch model (analytical counter) or an ONNX file (from its graph)."""
    from costmodels.analytical import network_costs, onnx_costs
    from profilers.shapes import resolve_source
    from spaces.onnx_graph import OnnxGraph
    model, shape = resolve_source(spec, input_text)
    if isinstance(model, OnnxGraph):
        return {**onnx_costs(model), "model": spec}
    return {"model": spec, "input_shape": list(shape), **network_costs(model, shape).to_dict()}


def model_export(onnx_path: str, spec: str, input_text: str | None = None, atol: float = 1e-4,
                 seed: int = 0) -> dict:
    """Export a ``--model`` (a PyTorch model) to ONNX, check it and compare it with PyTorch on ORT CPU."""
    import torch

    from profilers.export import export_onnx
    from profilers.shapes import resolve_source
    from spaces.onnx_graph import is_onnx_spec
    if is_onnx_spec(spec):
        raise HwcostError(f"{spec} is already an ONNX model; there is nothing to export (hwcost cost, measure, "
                          f"profile and predict take it as it is)")
    model, shape = resolve_source(spec, input_text)
    torch.manual_seed(seed)
    r = export_onnx(model, torch.randn(*shape), onnx_path, atol=atol)
    return {"model": spec, "input_shape": list(shape), "onnx": r.path, "opset": r.opset, "nodes": r.n_nodes,
            "max_abs_diff": r.max_abs_diff}


def list_spaces_info() -> list[dict]:
    from spaces import list_spaces
    out = []
    for name in list_spaces():
        sp = get_space(name)
        out.append({"space": name, "description": sp.description, "primitives": list(sp.primitives),
                    "searchable": sp.searchable_ops(), "fixed": sp.fixed_ops()})
    return out
