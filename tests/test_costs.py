"""Analytical costs against independent counts (hooks + closed forms), not the code's own output."""
import pytest
import torch
import torch.nn as nn

from costmodels.analytical import activation_bytes, model_bytes, network_costs, op_costs
from spaces import BUILTIN_GENOTYPES, HwcostError, Nb201NetConfig, build_network, network_config


def closed_form_macs(model: nn.Module, shape) -> int:
    """Conv + linear multiply-accumulates from each layer's output shape (forward hooks)."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.randn(*shape))
    for h in hooks:
        h.remove()
    return total


NETS = [
    ("darts", "DARTS_V2", "cifar10"), ("darts", "PC_DARTS_CIFAR", "cifar10"),
    ("darts", "DARTS_V2", "imagenet"), ("sharpdarts", "SHARP_DARTS", "cifar10"),
]


@pytest.mark.parametrize("space,name,network", NETS)
def test_macs_equal_closed_form_count(space, name, network):
    g = BUILTIN_GENOTYPES[name][1]
    model = build_network(network_config(network, g, space))
    shape = model.input_shape()
    c = network_costs(model, shape)
    assert c.macs == closed_form_macs(model, shape)
    assert c.macs_with_bn > c.macs


def test_nb201_macs_and_params():
    net = build_network(Nb201NetConfig("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"))
    c = network_costs(net, net.input_shape())
    assert c.macs == closed_form_macs(net, net.input_shape())
    # NAS-Bench-201 reports 220.11 MFLOPs (its counter includes BN and pooling) for this network.
    assert 0.9 < c.macs / 220.11e6 < 1.02


@pytest.mark.parametrize("name,paper_m", [("DARTS_V2", 574), ("PC_DARTS_IMAGENET", 597), ("PDARTS", 557)])
def test_imagenet_macs_near_papers(name, paper_m):
    g = BUILTIN_GENOTYPES[name][1]
    model = build_network(network_config("imagenet", g))
    c = network_costs(model, model.input_shape())
    # Conv + linear only: within 8% under the papers' (unpublished-convention) counts.
    assert 0.92 < c.macs / (paper_m * 1e6) < 1.0


def test_sep_conv_closed_form():
    C, H = 16, 32
    c = op_costs("darts", "sep_conv_3x3", C, h=H)
    assert c.params == 2 * (C * 9 + C * C + 2 * C)
    assert c.macs == 2 * (C * 9 * H * H + C * C * H * H)
    # 8 tensors of C x H x W floats written: ReLU, dw, pw, BN, twice.
    assert c.activation_bytes == 8 * C * H * H * 4
    # params + BN running mean/var (num_batches_tracked is an int and not counted).
    assert c.model_bytes == (c.params + 2 * 2 * C) * 4


def test_activation_bytes_skip_views_and_identities():
    class M(nn.Module):
        def forward(self, x):
            y = x.view(x.size(0), -1)      # a view: writes nothing
            z = torch.relu(y)               # writes numel * 4
            return torch.cat([z, z], 1)     # writes 2 * numel * 4

    x = torch.randn(2, 3, 4, 4)
    assert activation_bytes(M(), (x,)) == 3 * x.numel() * 4
    assert activation_bytes(nn.Identity(), (x,)) == 0


def test_aux_head_counted_only_in_params_with_aux():
    g = BUILTIN_GENOTYPES["DARTS_V2"][1]
    model = build_network(network_config("cifar10", g, auxiliary=True, C=8, layers=5))
    c = network_costs(model, model.input_shape())
    aux = sum(p.numel() for p in model.auxiliary_head.parameters())
    assert aux > 0 and c.params_with_aux - c.params == aux
    assert c.model_bytes == model_bytes(model)


def test_shape_an_op_cannot_take():
    with pytest.raises(HwcostError, match="cannot take"):
        op_costs("darts", "factorized_reduce", 8, 8, h=7, stride=2)
