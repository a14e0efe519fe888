"""DCA-NAS (Dey et al.): first order on a supernet with shared weights, a channel bottleneck and
derived cells (search/dcanas.py), under the hard budgets' dual ascent (search/objective.py).

Appendix D: weight lr 0.2 (batch 512) cosine to 0, alpha Adam lr 6e-4. The paper gives no
bottleneck factor; 4 matches PC-DARTS's K on CIFAR. Any strategy may set these supernet flags.
"""
from __future__ import annotations

from .base import Strategy, register_strategy

register_strategy(Strategy(
    name="dcanas", arch_lr=6e-4, weight_lr=0.2, weight_lr_min=0.0,
    doc="DCA-NAS (shared weights, channel bottleneck, derived cells, hard budgets)",
    supernet=(("share_weights", True), ("bottleneck", 4), ("derived_cells", True))))
