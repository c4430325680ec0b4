"""Square: the published window schedule, the exact answer on a linear model, and batch independence."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.attacks import attack, named
from kafrob.attacks.square import window_fraction


def test_window_schedule_halves_at_the_published_points():
    # p_init / 2**k after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 queries
    queries = 10_000
    for q, expected in ((10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (2500, 0.8 / 64), (9999, 0.8 / 512)):
        assert float(window_fraction(q, queries, 0.8)) == pytest.approx(expected, rel=1e-6)


def test_square_finds_exactly_the_examples_within_eps(linear):
    r = linear.radius()
    eps = float(np.median(r))
    out = attack(linear.model, linear.x, linear.y, named("square", eps=eps, queries=1000))
    keep = np.abs(r - eps) > 0.1 * eps  # a random search: a wider band than the gradient attacks'
    np.testing.assert_array_equal(out.fooled[keep], (r < eps)[keep])
    assert np.max(np.abs(out.x_adv - linear.x)) <= eps + 1e-6


def test_square_result_does_not_depend_on_the_batch(linear):
    eps = float(np.median(linear.radius()))
    config = named("square", eps=eps, queries=300)
    whole = attack(linear.model, linear.x, linear.y, config, seed=1)
    part = attack(linear.model, linear.x[20:30], linear.y[20:30], config, seed=1, ids=np.arange(20, 30))
    np.testing.assert_array_equal(part.first, whole.first[20:30])
    np.testing.assert_array_equal(part.x_adv, whole.x_adv[20:30])
