"""APGD: its step-size schedule as published, and on a linear model the exact answer (fooled iff the L-inf robust
radius is below eps)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kafrob.attacks import attack, named
from kafrob.attacks.apgd import APGDConfig, checkpoints

BAND = 0.02  # radii within 2% of eps are left out: float32 rounding may decide those


def paper_checkpoints(n: int) -> list[int]:
    """w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), 0-based."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return [math.ceil(round(q * n, 6)) - 1 for q in p[1:] if q * n <= n]


@pytest.mark.parametrize("n", [100, 200])
def test_checkpoints_follow_the_paper(n):
    assert checkpoints(n) == paper_checkpoints(n)


def separated(linear, eps):
    r = linear.radius()
    keep = np.abs(r - eps) > BAND * eps
    return r, keep


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_apgd_finds_exactly_the_examples_within_eps(linear, name):
    eps = float(np.median(linear.radius()))
    out = attack(linear.model, linear.x, linear.y, named(name, eps=eps))
    r, keep = separated(linear, eps)
    np.testing.assert_array_equal(out.fooled[keep], (r < eps)[keep])
    assert np.max(np.abs(out.x_adv - linear.x)) <= eps + 1e-6
    assert not out.bad_start_gradient.any()


def test_apgd_result_does_not_depend_on_the_batch(linear):
    eps = float(np.median(linear.radius()))
    config = named("apgd-ce", eps=eps, iterations=20)
    ids = np.arange(100, 160)
    whole = attack(linear.model, linear.x, linear.y, config, seed=3, ids=ids)
    part = attack(linear.model, linear.x[10:20], linear.y[10:20], config, seed=3, ids=ids[10:20])
    np.testing.assert_array_equal(part.first, whole.first[10:20])
    np.testing.assert_allclose(part.x_adv, whole.x_adv[10:20], atol=1e-7)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="label_mode"):
        APGDConfig(label_mode="guess")
    with pytest.raises(ValueError):
        APGDConfig(loss="hinge")
    with pytest.raises(ValueError, match="unknown attack"):
        named("cw")
