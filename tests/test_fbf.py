"""The single-step adversaries of training: FBF's FGSM from a random start, and N-FGSM."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kafrob.fbf import EPS, FBF_PREDICTED, N_FGSM, FBFConfig, fgsm_random_start


@pytest.fixture(scope="module")
def linear():
    """logits = W x: the input gradient of the cross-entropy is known in closed form."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(10, use_bias=False)])


def _example(model, config: FBFConfig, seed=(0, 1)):
    x = tf.constant(np.random.default_rng(0).uniform(0.2, 0.8, (64, 4, 4, 3)).astype(np.float32))
    y = tf.constant(np.arange(64) % 10, tf.int32)
    return x, y, fgsm_random_start(model, x, y, tf.constant(seed, tf.int64), config)


def _noise(config: FBFConfig, x, seed=(0, 1)):
    bound = config.noise_ratio * config.eps
    return tf.random.stateless_uniform(tf.shape(x), tf.constant(seed, tf.int64), -bound, bound)


@pytest.mark.parametrize("config", [FBFConfig(), FBF_PREDICTED], ids=["true-label", "predicted-label"])
def test_fbf_steps_from_the_start_along_the_gradient_sign_and_back_into_the_ball(linear, config):
    x, y, x_adv = _example(linear, config)
    with tf.GradientTape() as tape:
        start = x + _noise(config, x)
        tape.watch(start)
        z = linear(start)
        target = y if config.label_mode == "true" else tf.argmax(z, -1, output_type=tf.int32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, z))
    stepped = _noise(config, x) + 1.25 * EPS * tf.sign(tape.gradient(loss, start))
    expected = tf.clip_by_value(x + tf.clip_by_value(stepped, -EPS, EPS), 0.0, 1.0)
    np.testing.assert_allclose(x_adv.numpy(), expected.numpy(), atol=1e-7)
    assert float(tf.reduce_max(tf.abs(x_adv - x))) <= EPS + 1e-6


def test_n_fgsm_starts_at_twice_eps_steps_eps_and_is_not_projected(linear):
    x, y, x_adv = _example(linear, N_FGSM)
    delta = (x_adv - x).numpy()
    noise = _noise(N_FGSM, x).numpy()
    step = delta - noise  # inside [0.2, 0.8] nothing is clipped to the image box: +-eps exactly
    np.testing.assert_allclose(np.abs(step), EPS, atol=1e-6)
    assert EPS < np.abs(delta).max() <= 3 * EPS + 1e-6 and np.abs(noise).max() > 1.9 * EPS


def test_the_predicted_label_step_differs_where_the_model_is_wrong(linear):
    x, y, true_step = _example(linear, FBFConfig())
    *_, predicted_step = _example(linear, FBF_PREDICTED)
    wrong = np.argmax(linear(x + _noise(FBFConfig(), x)).numpy(), -1) != y.numpy()
    differ = np.any((true_step - predicted_step).numpy().reshape(len(wrong), -1) != 0, axis=1)
    assert wrong.any() and np.array_equal(differ, wrong)


def test_the_step_is_each_images_own_gradient_sign_which_the_batch_mean_rounds_away_in_float16():
    """A confident float16 classifier (mixed precision, as the thesis trained): the batch mean scales each image's
    logit gradient (about 1e-6) by 1/1024, under float16's smallest step, so its gradient is zero; FBF's step moves
    every image, by the sign of its own gradient."""
    kernel = np.zeros((8, 10), np.float32)
    kernel[:, 0], kernel[0, 1:] = 2.2, 0.3 * np.arange(1, 10)  # class 0 ahead by about 13.4 logits at x = 0.9
    model, exact = (keras.Sequential([keras.Input((8,)), keras.layers.Dense(10, dtype=d, use_bias=False)])
                    for d in ("mixed_float16", "float32"))
    model.layers[0].kernel.assign(kernel)
    exact.layers[0].kernel.assign(kernel)
    x, y, seed = tf.fill((1024, 8), 0.9), tf.zeros(1024, tf.int32), (0, 1)
    start = x + _noise(FBFConfig(), x, seed)
    with tf.GradientTape() as tape:
        tape.watch(start)
        mean = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.cast(model(start), tf.float32)))
    assert np.all(tape.gradient(mean, start).numpy() == 0)
    with tf.GradientTape() as tape:
        tape.watch(start)
        own = tf.nn.sparse_softmax_cross_entropy_with_logits(y, exact(start))
    direction = np.sign(tape.gradient(own, start).numpy())

    x_adv = fgsm_random_start(model, x, y, tf.constant(seed, tf.int64), FBFConfig()).numpy()
    stepped = x_adv - start.numpy()
    assert np.all(np.abs(stepped).max(1) > 0.2 * EPS)  # every image moved beyond its start
    moved = stepped != 0
    assert np.array_equal(np.sign(stepped[moved]), direction[moved])  # as the float32 gradient points
