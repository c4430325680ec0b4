"""The KAF layer: the fast kernels equal the direct formula, ridge init, gradients, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from kaf_oracle import BOUNDARY, GAMMA, POINTS, STEP, D, analytic_gradients, rel_error, scale

from kafrob import kaf, native
from kafrob.kaf import KAF, kaf_direct, kaf_reference, kaf_uniform, ridge_coefficients


@pytest.fixture(params=["native", "portable"])
def kernels(request, monkeypatch) -> str:
    """kaf_uniform's implementations: the compiled CPU kernels and the portable TensorFlow ones (the latter
    also with many small parameter-gradient chunks, the last one padded)."""
    if request.param.startswith("portable"):
        monkeypatch.setattr(native, "library", lambda: None)
        if request.param == "portable-many-chunks":
            monkeypatch.setattr(kaf, "CHUNK_ELEMENTS", 1 << 10)
    elif native.library() is None:
        pytest.skip("no compiled KAF kernels here (a warning says why; KAFROB_NATIVE=1 makes this an error)")
    return request.param


def wide_inputs(channels, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1.5, 4000), rng.uniform(-12, 12, 2000), np.linspace(-60, 60, 121),
                        POINTS, POINTS + 1e-4, [0.0, -3.0, 3.0, 1e4, -1e4]])
    x = x[: len(x) // channels * channels]
    return x.reshape(-1, channels).astype(np.float32)


@pytest.mark.parametrize("init", ["random", "relu", "elu", "swish"])
def test_uniform_kernel_matches_direct_formula(init, kernels):
    rng = np.random.default_rng(1)
    coeffs = (rng.normal(0, 0.05, (4, D)) if init == "random"
              else np.tile(ridge_coefficients(init), (4, 1)) + rng.normal(0, 0.01, (4, D))).astype(np.float32)
    x = wide_inputs(4)
    ours = kaf_uniform(tf.constant(x), tf.constant(coeffs), start=-BOUNDARY, step=STEP, gamma=GAMMA).numpy()
    ref = kaf_reference(x, coeffs, POINTS, GAMMA)
    # Relative to the size of the terms (a relative error on a cancelling sum is meaningless even for the
    # direct float32 formula).
    assert rel_error(ours, ref, scale(x, coeffs)) <= 1e-5
    inside = np.abs(x) <= BOUNDARY
    assert np.all(np.abs(ours[inside] - ref[inside]) <= 1e-6 * np.maximum(np.abs(ref[inside]), 1.0) * 72)


def test_uniform_kernel_values_near_direct_float32_relative(kernels):
    """Plain relative error for well-conditioned values (|f| not cancelling), fp32 <= 1e-6."""
    coeffs = np.abs(np.random.default_rng(2).normal(0.5, 0.1, (3, D))).astype(np.float32)
    x = np.random.default_rng(3).uniform(-3, 3, (1000, 3)).astype(np.float32)
    ours = kaf_uniform(tf.constant(x), tf.constant(coeffs), start=-BOUNDARY, step=STEP, gamma=GAMMA).numpy()
    ref = kaf_reference(x, coeffs, POINTS, GAMMA)
    assert np.max(np.abs(ours - ref) / np.abs(ref)) <= 1e-6


def gradients_in(mode: str, fn, args, upstream):
    """Gradients of fn(*args) run eagerly, as a graph, or XLA-compiled (what training uses)."""
    def run(args, upstream):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = fn(*args)
        return y, tape.gradient(y, args, output_gradients=upstream)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    return run([tf.constant(a) for a in args], tf.constant(upstream))


MODES = ["eager", "graph", "xla"]
# The portable parameter gradients accumulate over chunks of rows: one chunk, or many with a padded last one.
CHUNKS = [pytest.param(1 << 18, id="one-chunk"), pytest.param(1 << 10, id="many-chunks")]


@pytest.mark.parametrize("kernels", ["native", "portable", "portable-many-chunks"], indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_uniform_kernel_gradients(mode, kernels):
    rng = np.random.default_rng(4)
    coeffs = np.tile(ridge_coefficients("swish"), (4, 1)) + rng.normal(0, .05, (4, D))
    coeffs = coeffs.astype(np.float32)
    x = wide_inputs(4, seed=5)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, (dx, dc) = gradients_in(mode, lambda x, c: kaf_uniform(x, c, start=-BOUNDARY, step=STEP, gamma=GAMMA),
                               [x, coeffs], upstream)
    assert rel_error(y, kaf_reference(x, coeffs, POINTS, GAMMA), scale(x, coeffs)) <= 1e-5
    refs = analytic_gradients(x, coeffs, upstream, POINTS, GAMMA)[:2]
    scales = analytic_gradients(x, coeffs, upstream, POINTS, GAMMA, magnitude=True)[:2]
    for got, ref, size in zip((dx, dc), refs, scales, strict=True):
        assert rel_error(got, ref, size) <= 1e-5


def test_finite_differences(kernels):
    """The analytic gradient of the layer agrees with central differences of the float64 formula."""
    layer = KAF(init="elu")
    x = tf.constant(np.linspace(-4, 4, 33, dtype=np.float32).reshape(-1, 1))
    layer(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x))
    dx = tape.gradient(y, x).numpy().ravel()
    coeffs = layer.coeffs.numpy().astype(np.float64)
    h = 1e-5
    xs = x.numpy().astype(np.float64)
    fd = (kaf_reference(xs + h, coeffs, POINTS, GAMMA) - kaf_reference(xs - h, coeffs, POINTS, GAMMA)) / (2 * h)
    np.testing.assert_allclose(dx, fd.ravel(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("mode", MODES)
def test_direct_kernel_and_its_gradients(mode, chunk, monkeypatch):
    monkeypatch.setattr(kaf, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(6)
    c = 3
    coeffs = rng.normal(0, 0.3, (c, D)).astype(np.float32)
    points = (POINTS + rng.normal(0, 0.05, (c, D))).astype(np.float32)
    gamma = (GAMMA * rng.uniform(0.8, 1.2, c)).astype(np.float32)
    x = wide_inputs(c, seed=7)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, grads = gradients_in(mode, kaf_direct, [x, coeffs, points, gamma], upstream)
    p64, g64 = points.astype(np.float64), gamma.astype(np.float64)
    assert rel_error(y, kaf_reference(x, coeffs, p64, g64), scale(x, coeffs, p64, g64)) <= 1e-5
    refs = analytic_gradients(x, coeffs, upstream, p64, g64)
    scales = analytic_gradients(x, coeffs, upstream, p64, g64, magnitude=True)
    for got, ref, size in zip(grads, refs, scales, strict=True):  # x, coefficients, dictionary, gamma
        assert rel_error(got, ref, size) <= 1e-5


@pytest.mark.parametrize("target", ["relu", "elu", "swish"])
def test_ridge_init_approximates_target(target):
    from kafrob.kaf import RIDGE_TARGETS

    layer = KAF(init=target)
    x = np.linspace(-3, 3, 601, dtype=np.float32).reshape(-1, 1)
    y = layer(x).numpy().ravel()
    err = np.max(np.abs(y - RIDGE_TARGETS[target](x.ravel().astype(np.float64))))
    # Measured max errors on [-3, 3] (largest at the ends of the dictionary and, for relu, the kink):
    # relu 0.0504, elu 0.0134, swish 0.0115.
    assert err <= {"relu": 0.055, "elu": 0.015, "swish": 0.013}[target], err


def test_kaf_free_trains_dictionary_and_gamma():
    layer = KAF(trainable_dictionary=True)
    layer.build((None, 8, 8, 5))
    names = {w.path.split("/")[-1]: w for w in layer.trainable_weights}
    assert set(names) == {"mix_coeffs", "dictionary", "gamma"}
    assert names["dictionary"].shape == (5, D) and names["gamma"].shape == (5,)
    fixed = KAF()
    fixed.build((None, 5))
    assert [w.path.split("/")[-1] for w in fixed.trainable_weights] == ["mix_coeffs"]
    assert [w.path.split("/")[-1] for w in fixed.non_trainable_weights] == ["dictionary"]


def test_kaf_free_gradients_reach_dictionary_and_gamma():
    layer = KAF(trainable_dictionary=True)
    x = tf.random.normal((4, 3, 3, 2))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(y, layer.trainable_weights)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_config_round_trip():
    layer = KAF(dictionary_size=12, boundary=2.5, init="swish", trainable_dictionary=True, name="k")
    clone = KAF.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("init,free", [("random", False), ("elu", False), ("random", True)])
def test_keras_file_round_trip(tmp_path, init, free):
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, KAF(init=init, trainable_dictionary=free)(keras.layers.Conv2D(4, 3)(inputs)))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_any_rank_and_float32_compute():
    layer = KAF(init="relu")
    for shape in [(5, 3), (2, 4, 3), (2, 2, 2, 2, 3)]:
        out = layer(tf.random.normal(shape))
        assert out.shape == shape and out.dtype == tf.float32


def test_mixed_precision_matches_float32(kernels):
    x = np.random.default_rng(8).normal(0, 2, (64, 6)).astype(np.float32)
    layer32 = KAF(init="swish")
    y32 = layer32(x).numpy()
    layer16 = KAF(init="swish", dtype="mixed_float16")
    layer16(x)
    layer16.set_weights(layer32.get_weights())
    y16 = layer16(x.astype(np.float16))
    assert y16.dtype == tf.float16
    # float16 inputs/outputs: the error is float16 rounding of x and of f(x), not of the 20 Gaussians.
    ref = kaf_reference(x.astype(np.float16).astype(np.float64), layer32.coeffs.numpy(), POINTS, GAMMA)
    assert np.max(np.abs(y16.numpy().astype(np.float64) - ref) / np.maximum(np.abs(ref), 1)) <= 2e-3
    coeffs = layer32.coeffs.numpy()
    assert rel_error(y32, kaf_reference(x, coeffs, POINTS, GAMMA), scale(x, coeffs)) <= 1e-5


@pytest.mark.parametrize("free", [False, True], ids=["kaf", "kaf_free"])
def test_mixed_precision_gradients_match_float32(free, kernels):
    x = np.random.default_rng(9).normal(0, 2, (8, 5, 5, 6)).astype(np.float16)
    layers = [KAF(init="elu", trainable_dictionary=free, dtype=policy) for policy in ("float32", "mixed_float16")]
    layers[0](x.astype(np.float32))
    layers[1](x)
    layers[1].set_weights(layers[0].get_weights())
    grads = []
    for layer, inputs in zip(layers, (x.astype(np.float32), x), strict=True):
        inputs = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = tf.reduce_sum(tf.cast(layer(inputs), tf.float32))
        grads.append(tape.gradient(y, [inputs, *layer.trainable_weights]))
    assert grads[1][0].dtype == tf.float16 and all(g.dtype == tf.float32 for g in grads[1][1:])
    for g32, g16 in zip(*grads, strict=True):
        g32, g16 = np.asarray(g32, np.float64), np.asarray(g16, np.float64)
        # Parameters get float32 gradients from float32 kernels; the input gradient is rounded to float16.
        np.testing.assert_allclose(g16, g32, rtol=2e-3, atol=2e-3 * np.max(np.abs(g32)))


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="known: random, relu, elu, swish"):
        KAF(init="tanh")

