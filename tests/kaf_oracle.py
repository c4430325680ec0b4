"""The KAF tests' shared constants and float64 oracle (test_kaf.py, test_native.py)."""

from __future__ import annotations

import numpy as np

from kafrob.kaf import default_gamma, dictionary_points, kaf_reference

D, BOUNDARY = 20, 3.0
STEP = 2 * BOUNDARY / (D - 1)
GAMMA = default_gamma(D, BOUNDARY)
POINTS = dictionary_points(D, BOUNDARY)
TINY = 1e-30  # below any meaningful activation; float32 flushes such values to zero anyway


def scale(x, coeffs, points=POINTS, gamma=GAMMA):
    """sum_i |a_i| k_i(x): the size of the terms, the natural denominator for a sum that can cancel."""
    return kaf_reference(x, np.abs(coeffs), points, gamma)


def rel_error(ours, ref, denom):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(denom, TINY)))


def analytic_gradients(x, coeffs, upstream, points, gamma, magnitude=False):
    """Float64 gradients of sum(upstream * f) w.r.t. x, coeffs, points, gamma.

    ``magnitude=True`` sums the absolute values of the same terms instead: the natural denominator for a
    relative error of sums that can cancel.
    """
    absolute = np.abs if magnitude else (lambda v: v)
    x64 = np.asarray(x, np.float64)[..., None]
    gamma = np.asarray(gamma, np.float64)
    g = gamma[:, None] if gamma.ndim else gamma
    diff = x64 - points
    k = np.exp(-g * diff**2)
    u = absolute(np.asarray(upstream, np.float64)[..., None])
    a, d = absolute(np.asarray(coeffs, np.float64)), absolute(diff)
    dx = (u * a * k * (2 if magnitude else -2) * g * d).sum(-1)
    dcoeffs = (u * k).reshape(-1, *coeffs.shape).sum(0)
    dpoints = (u * a * k * 2 * g * d).reshape(-1, *coeffs.shape).sum(0)
    dgamma = (u * a * k * (diff**2 if magnitude else -(diff**2))).sum(-1).reshape(-1, coeffs.shape[0]).sum(0)
    return dx, dcoeffs, dpoints, dgamma
