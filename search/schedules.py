"""Learning-rate schedules shared by search and training.

* ``cosine`` -- SGDR without restarts (sharpDARTS eq. 1; what DARTS uses):
  ``lr = lr_min + (lr_max - lr_min) * (1 + cos(pi t / T)) / 2``.
* ``cpa`` -- Cosine Power Annealing (sharpDARTS eq. 2):
  ``lr = lr_min + (lr_max - lr_min) * (p ** (c + 1) - p) / (p ** 2 - p)``,
  ``c = (1 + cos(pi t / T)) / 2``; the fraction is 1 at t = 0 and 0 at t = T
  for every p > 1, and ``p = 1`` falls back to ``cosine`` (as the paper's code
  does; the formula is 0/0 there). The paper trains with p = 2 on CIFAR-10
  and plots p = 10 for ImageNet.

``t`` may be fractional (per-step schedules: ``t = epoch + step / steps``).
"""
from __future__ import annotations

import math

from spaces.errors import HwcostError, unknown

SCHEDULES = ("cosine", "cpa")


def cosine_fraction(t: float, T: float) -> float:
    """(1 + cos(pi t / T)) / 2: 1 at t = 0, 0 at t = T."""
    if T <= 0:
        raise HwcostError(f"a schedule needs a positive length, got T={T}")
    t = min(max(t, 0.0), T)
    return 0.5 * (1.0 + math.cos(math.pi * t / T))


def cpa_fraction(t: float, T: float, p: float) -> float:
    """sharpDARTS eq. 2's normalised term; p = 1 gives the cosine fraction."""
    if p <= 0:
        raise HwcostError(f"Cosine Power Annealing needs p > 0, got p={p}")
    c = cosine_fraction(t, T)
    if abs(p - 1.0) < 1e-12:
        return c
    return (p ** (c + 1.0) - p) / (p * p - p)


def lr_at(t: float, T: float, lr_max: float, lr_min: float = 0.0, schedule: str = "cosine",
          power: float = 2.0) -> float:
    """Learning rate at (possibly fractional) epoch ``t`` of ``T``."""
    if schedule == "cosine":
        frac = cosine_fraction(t, T)
    elif schedule == "cpa":
        frac = cpa_fraction(t, T, power)
    else:
        raise unknown("schedule", schedule, SCHEDULES)
    return lr_min + (lr_max - lr_min) * frac
