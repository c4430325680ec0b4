"""The compiled KAF CPU kernels: multithreaded and scalar paths, bad input, build cache and switches.

Their equivalence with the direct formula (values, gradients; eager, graph, XLA) is in test_kaf.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kafrob import native
from kafrob.kaf import default_gamma, dictionary_points, kaf_reference, kaf_uniform

D, BOUNDARY = 20, 3.0
STEP = 2 * BOUNDARY / (D - 1)
GAMMA = default_gamma(D, BOUNDARY)
DICTIONARY = tf.constant([-BOUNDARY, STEP, GAMMA], tf.float64)


@pytest.fixture(scope="module")
def ops():
    lib = native.library()
    if lib is None:
        pytest.skip("no compiled KAF kernels here (a warning says why; KAFROB_NATIVE=1 makes this an error)")
    return lib


def _float64_reference(x, coeffs, upstream, size=D, boundary=BOUNDARY):
    """f(x), f'(x), the coefficient gradient, and the terms' size sum |a_j| k_j(x), in float64."""
    points, gamma = dictionary_points(size, boundary), default_gamma(size, boundary)
    x64 = x.astype(np.float64)[..., None]
    k = np.exp(-gamma * (x64 - points) ** 2)
    slope = (coeffs.astype(np.float64) * k * -2 * gamma * (x64 - points)).sum(-1)
    coeff_grad = (upstream.astype(np.float64)[..., None] * k).reshape(-1, *coeffs.shape).sum(0)
    return (kaf_reference(x, coeffs, points, gamma), slope, coeff_grad,
            kaf_reference(x, np.abs(coeffs), points, gamma))


@pytest.mark.parametrize("channels", [16, 64, 5], ids=["8-lane", "8-lane-wide", "scalar"])
def test_large_inputs_split_across_threads(ops, channels):
    """Inputs large enough for several threads; channel counts for the vector and the scalar lanes."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.5, (6000, channels)).astype(np.float32)
    coeffs = rng.normal(0, 0.5, (channels, D)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    value, slope = ops.kafrob_kaf(x, coeffs, DICTIONARY)
    coeff_grad = ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, DICTIONARY)
    ref_value, ref_slope, ref_coeff_grad, size = _float64_reference(x, coeffs, upstream)
    # Double-precision arithmetic: what remains is float32 rounding of the results (and of the sums' terms).
    np.testing.assert_allclose(value, ref_value, rtol=0, atol=2e-7 * size.max())
    np.testing.assert_allclose(slope, ref_slope, rtol=0, atol=2e-7 * 2 * GAMMA * 10 * size.max())
    np.testing.assert_allclose(coeff_grad, ref_coeff_grad, rtol=1e-6, atol=1e-6 * np.abs(ref_coeff_grad).max())


@pytest.mark.parametrize("size,boundary", [(7, 2.0), (33, 4.0)])
@pytest.mark.parametrize("channels", [8, 3])
def test_other_dictionaries(ops, size, boundary, channels):
    """Dictionary sizes other than the thesis's 20 (a separately compiled coefficient-gradient loop)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (4000, channels)).astype(np.float32)
    coeffs = rng.normal(0, 0.5, (channels, size)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    step = 2 * boundary / (size - 1)
    assert native.supports(size, step, default_gamma(size, boundary))
    dictionary = tf.constant([-boundary, step, default_gamma(size, boundary)], tf.float64)
    value, slope = ops.kafrob_kaf(x, coeffs, dictionary)
    coeff_grad = ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, dictionary)
    ref_value, ref_slope, ref_coeff_grad, scale = _float64_reference(x, coeffs, upstream, size, boundary)
    np.testing.assert_allclose(value, ref_value, rtol=0, atol=2e-7 * scale.max())
    np.testing.assert_allclose(slope, ref_slope, rtol=0, atol=2e-6 * np.abs(ref_slope).max())
    np.testing.assert_allclose(coeff_grad, ref_coeff_grad, rtol=1e-6, atol=1e-6 * np.abs(ref_coeff_grad).max())


def test_non_finite_inputs(ops):
    """NaN propagates (the NaN-loss guard relies on it); +-inf is infinitely far from every Gaussian."""
    x = tf.constant([[np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 0.0, 0.0]])
    value, slope = ops.kafrob_kaf(x, tf.ones((8, D)), DICTIONARY)
    assert np.isnan(value[0, 0]) and np.isnan(slope[0, 0])
    np.testing.assert_array_equal(value[0, 1:5], 0.0)
    np.testing.assert_array_equal(slope[0, 1:5], 0.0)
    assert np.all(value[0, 5:] > 0)


def test_empty_batch(ops):
    x = tf.zeros((0, 4, 8))
    value, slope = ops.kafrob_kaf(x, tf.ones((8, D)), DICTIONARY)
    assert value.shape == slope.shape == (0, 4, 8)
    np.testing.assert_array_equal(ops.kafrob_kaf_coefficient_gradient(x, x, tf.ones((8, D)), DICTIONARY), 0.0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_bad_shapes_are_rejected(ops, jit):
    def call(x, coeffs):
        return ops.kafrob_kaf(x, coeffs, DICTIONARY)[0]

    run = tf.function(call, jit_compile=True) if jit else call
    with pytest.raises(tf.errors.InvalidArgumentError, match="coeffs must have shape"):
        run(tf.zeros((4, 3)), tf.zeros((4, D)))


def test_kaf_uniform_uses_the_kernels_in_xla(ops):
    """Inside a jit-compiled function the op becomes the custom call (and TensorFlow's devices, created
    long before the library was loaded, still find its XLA kernel)."""
    x = tf.random.normal((8, 8))
    coeffs = tf.random.normal((8, D))

    @tf.function(jit_compile=True)
    def run(x):
        return kaf_uniform(x, coeffs, start=-BOUNDARY, step=STEP, gamma=GAMMA)

    hlo = run.experimental_get_compiler_ir(x)(stage="hlo")
    assert 'custom_call_target="kafrob_kaf_value_and_slope"' in hlo
    np.testing.assert_allclose(run(x), kaf_reference(x.numpy(), coeffs.numpy(), dictionary_points(), GAMMA),
                               rtol=1e-5, atol=1e-6)


def test_build_is_cached(ops):
    path = native.build()
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp


def test_switches_and_missing_compiler(monkeypatch):
    assert native.load("0") is None
    with pytest.raises(ValueError, match="must be 0, 1 or unset"):
        native.load("yes")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(native.NativeBuildError, match="no C.. compiler"):
        native.load("1")
    with pytest.warns(RuntimeWarning, match="portable TensorFlow kernels.*no C.. compiler"):
        assert native.load("") is None


def test_supported_dictionaries():
    assert native.supports(D, STEP, GAMMA)
    step = 6 / 59
    assert not native.supports(60, step, default_gamma(60, 3.0))  # rho^59 would overflow double precision
