"""The sharpDARTS space (Hundt et al., Table 1): convs are SharpSepConv blocks.

``c_mid`` (an op-key extra) overrides each conv's middle width, as the
sharpDARTS eval networks do with C_mid = 32; ``c_mid=0`` means "use the op's
own C_mid / C_mid_mult" (flood x4, choke 32, sep/dil x1).
"""
from __future__ import annotations

import torch.nn as nn

from . import blocks as B
from .darts import none_op, register_cell_fixed_parts, skip_connect
from .registry import register_op, register_space

SPACE = "sharpdarts"
# Default search primitives of the sharpDARTS code (avg_pool_3x3 is in Table 1
# and in SHARPSEPCONV_DARTS, but not among the default primitives).
PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3",
              "flood_conv_3x3", "dil_flood_conv_3x3", "choke_conv_3x3", "dil_choke_conv_3x3")

register_space(SPACE, "sharpDARTS space: SharpSepConv blocks, flood/choke/dilated variants", PRIMITIVES)


def _pool(kind):
    def factory(c_in, c_out, stride, affine):
        pool = B.PoolBN(kind, stride, c_in, with_bn=not affine)
        if c_in == c_out:
            return pool
        # sharpDARTS: pooling adds a 1x1 conv + BN when channels change.
        return nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))
    factory.__doc__ = f"3x3 {kind} pool, padding 1 (+1x1 conv + BN if channels change)."
    return factory


register_op(SPACE, "none")(none_op)
register_op(SPACE, "max_pool_3x3")(_pool("max"))
register_op(SPACE, "avg_pool_3x3")(_pool("avg"))
register_op(SPACE, "skip_connect")(skip_connect)


# name -> (dilation, C_mid_mult, C_mid) from Table 1 (K = 3 for all).
SHARP_CONVS = {
    "sep_conv_3x3": (1, 1, None),
    "dil_conv_3x3": (2, 1, None),
    "flood_conv_3x3": (1, 4, None),
    "dil_flood_conv_3x3": (2, 4, None),
    "choke_conv_3x3": (1, 1, 32),
    "dil_choke_conv_3x3": (2, 1, 32),
}


def _sharp(dilation, mult, cmid_default):
    def factory(c_in, c_out, stride, affine, c_mid=0):
        return B.SharpSepConv(c_in, c_out, 3, stride, dilation, affine,
                              c_mid_mult=mult, c_mid=c_mid or cmid_default)
    factory.__doc__ = (f"SharpSepConv 3x3, dilation {dilation}, "
                       + (f"C_mid {cmid_default}" if cmid_default else f"C_mid_mult {mult}")
                       + "; c_mid > 0 overrides")
    return factory


for _name, (_d, _m, _c) in SHARP_CONVS.items():
    register_op(SPACE, _name, parametric=True, extras=("c_mid",))(_sharp(_d, _m, _c))

register_cell_fixed_parts(SPACE)
