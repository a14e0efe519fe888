"""PC-DARTS (Xu et al. 2020): first order on a partial-channel supernet (K=4) with edge
normalisation beta (search/supernet.py), alpha frozen for the first 15 of 50 epochs."""
from __future__ import annotations

from .base import Strategy, register_strategy

register_strategy(Strategy(name="pcdarts", partial_k=4, arch_lr=6e-4, weight_lr=0.1, weight_lr_min=0.0,
                           warmup_frac=15 / 50, doc="PC-DARTS (K=4, edge normalisation, warm-up)"))
