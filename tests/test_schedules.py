"""Cosine Power Annealing (sharpDARTS eq. 2) and cosine (eq. 1), checked against the equations."""
import math

import pytest

from search.schedules import cpa_fraction, lr_at
from spaces.errors import HwcostError


def eq2(t, T, lr_max, lr_min, p):  # written out as printed in the paper
    c = 0.5 * (1 + math.cos(math.pi * t / T))
    return lr_min + (lr_max - lr_min) * (p ** (c + 1) - p) / (p ** 2 - p)


@pytest.mark.parametrize("p", [2.0, 10.0, 1.5])
def test_cpa_end_points_and_formula(p):
    assert lr_at(0, 100, 0.025, 1e-8, "cpa", p) == pytest.approx(0.025)
    assert lr_at(100, 100, 0.025, 1e-8, "cpa", p) == pytest.approx(1e-8)
    for t in (1, 17.5, 50, 99):
        assert lr_at(t, 100, 0.025, 1e-8, "cpa", p) == pytest.approx(eq2(t, 100, 0.025, 1e-8, p), rel=1e-12)


def test_cpa_with_p_1_is_cosine():
    for t in (0, 3, 25, 50, 80, 100):
        assert lr_at(t, 100, 0.1, 0.001, "cpa", 1.0) == pytest.approx(lr_at(t, 100, 0.1, 0.001, "cosine"))
    # and p -> 1 is continuous with it
    assert cpa_fraction(30, 100, 1 + 1e-7) == pytest.approx(cpa_fraction(30, 100, 1.0), abs=1e-6)


def test_cpa_decays_faster_early_than_cosine_for_large_p():
    # the paper's point: p > 1 leaves the high lr sooner and keeps a shallower tail
    assert lr_at(25, 100, 1, 0, "cpa", 10) < lr_at(25, 100, 1, 0, "cosine")
    vals = [lr_at(t, 100, 1, 0, "cpa", 10) for t in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_bad_schedule_inputs():
    with pytest.raises(HwcostError):
        lr_at(1, 10, 0.1, schedule="step")
    with pytest.raises(HwcostError):
        lr_at(1, 0, 0.1)
    with pytest.raises(HwcostError):
        lr_at(1, 10, 0.1, schedule="cpa", power=0)
