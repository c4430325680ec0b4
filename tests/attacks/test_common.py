"""The shared pieces: losses and margins against their formulas, the projection, the random streams."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kafrob.attacks.common import dlr_loss, dlr_targeted_loss, hash_uniform, margin, project, random_starts

Z = np.array([[3.0, 1.0, 2.0, -1.0, 0.5], [0.0, 4.0, 1.0, 2.0, 3.0]], np.float32)
Y = np.array([0, 0])  # first row: predicted; second: not


def test_margin_and_dlr_match_their_formulas():
    # row 0: z_y=3, best other 2, sorted 3,2,1 -> margin 1, DLR -(1)/(3-1); row 1: z_y=0, best other 4 (sorted 4,3,2)
    np.testing.assert_allclose(margin(tf.constant(Z), tf.constant(Y)).numpy(), [1.0, -4.0])
    np.testing.assert_allclose(dlr_loss(tf.constant(Z), tf.constant(Y)).numpy(), [-1 / 2, 4 / 2], rtol=1e-6)
    t = np.array([2, 4])  # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected = [-(3 - 2) / (3 - (1 + 0.5) / 2), -(0 - 3) / (4 - (2 + 1) / 2)]
    np.testing.assert_allclose(dlr_targeted_loss(tf.constant(Z), tf.constant(Y), tf.constant(t)).numpy(), expected,
                               rtol=1e-6)


def test_dlr_is_invariant_to_shifting_and_scaling_the_logits():
    z = tf.constant(np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32))
    y = tf.constant(np.arange(8) % 10)
    np.testing.assert_allclose(dlr_loss(3.0 * z + 7.0, y).numpy(), dlr_loss(z, y).numpy(), rtol=1e-4, atol=1e-5)


def test_project_lands_in_the_ball_and_the_box():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 5, 5, 3)).astype(np.float32)
    far = x + rng.uniform(-1, 1, x.shape).astype(np.float32)
    p = project(tf.constant(far), tf.constant(x), 0.1).numpy()
    assert np.max(np.abs(p - x)) <= 0.1 + 1e-7 and p.min() >= 0 and p.max() <= 1


def test_random_starts_keep_pgds_stream_and_separate_others():
    ids = np.array([5, 9])
    pgd = random_starts(ids, 3, 1, (2, 2, 1), 0.5)
    np.testing.assert_array_equal(pgd[1], np.random.default_rng([3, 1, 9]).uniform(-0.5, 0.5, (2, 2, 1))
                                  .astype(np.float32))  # the stream stored evaluations were computed with
    np.testing.assert_array_equal(random_starts(ids[1:], 3, 1, (2, 2, 1), 0.5)[0], pgd[1])  # batch-independent
    assert not np.allclose(random_starts(ids, 3, 1, (2, 2, 1), 0.5, stream=1), pgd)


def test_hash_uniform_is_per_key_and_uniform():
    keys = tf.range(20_000)
    u = hash_uniform(7, keys, 3).numpy()
    assert u.min() >= 0 and u.max() < 1
    np.testing.assert_array_equal(hash_uniform(7, keys[100:200], 3).numpy(), u[100:200])
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(2000))  # 5 sigma of a fair histogram
    assert not np.array_equal(hash_uniform(8, keys, 3).numpy(), u)


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_project_is_identity_inside(eps):
    x = tf.constant(np.full((1, 2, 2, 1), 0.5, np.float32))
    np.testing.assert_array_equal(project(x, x, eps).numpy(), x.numpy())
