"""FAB-T: the L-inf projection against a linear program, and the minimal distortion on a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from kafrob.attacks import attack, named
from kafrob.attacks.fab import FABConfig, fab_attack, project_linf


def lp_radius(p, w, b):
    """min t s.t. |d_i| <= t, w.(p + d) = b, 0 <= p + d <= 1 (variables d, t)."""
    n = len(p)
    c = np.r_[np.zeros(n), 1.0]
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ p],
                  bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)])
    return res.x[-1] if res.success else None


@pytest.mark.parametrize("seed", range(5))
def test_projection_is_the_smallest_linf_step_onto_the_hyperplane_in_the_box(seed):
    rng = np.random.default_rng(seed)
    p, w = rng.uniform(0, 1, (1, 12)), rng.normal(0, 1, (1, 12))
    b = w @ p[0] + rng.normal(0, 0.5, 1)
    d = project_linf(tf.constant(p, tf.float32), tf.constant(w, tf.float32), tf.constant(b, tf.float32)).numpy()[0]
    z = p[0] + d
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
    expected = lp_radius(p[0], w[0], b[0])
    if expected is None:  # the box does not reach the hyperplane: the closest point instead
        return
    assert w[0] @ z == pytest.approx(b[0], abs=1e-4)
    assert np.max(np.abs(d)) == pytest.approx(expected, abs=1e-5)


def test_fab_distance_is_the_closed_form_robust_radius(linear):
    distances = np.zeros(len(linear.y))
    fab_attack(linear.model, linear.x, linear.y, FABConfig(eps=0.0), distances=distances)  # eps 0: all 9 targets
    ratio = distances / linear.radius()
    assert ratio.min() >= 1 - 1e-4  # never below the true radius (that would be a bug)
    assert ratio.max() <= 1.01  # and within 1% of it after 100 iterations


def test_fab_t_finds_exactly_the_examples_within_eps(linear):
    r = linear.radius()
    eps = float(np.median(r))
    out = attack(linear.model, linear.x, linear.y, named("fab-t", eps=eps))
    keep = np.abs(r - eps) > 0.02 * eps
    np.testing.assert_array_equal(out.fooled[keep], (r < eps)[keep])
    assert np.max(np.abs(out.x_adv - linear.x)) <= eps + 1e-6
