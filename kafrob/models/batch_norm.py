"""Batch normalisation whose inverse standard deviation can be the same on every CPU (kafrob.arithmetic.rsqrt).

TensorFlow computes 1/sqrt(variance + eps) with the CPU's approximate RSQRTPS and one Newton step, both in
``tf.nn.batch_normalization`` (Keras 3's layer) and in its fused kernel (kafrob.thesis_arithmetic); the last bits
of RSQRTPS differ between CPU makers. Under ``KAFROB_EXACT_RSQRT=1`` these layers compute the same formulas with
1 / sqrt(.), both correctly rounded; otherwise they are TensorFlow's own. The switch is read when a model is
traced (or called eagerly).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kafrob import arithmetic


def inverse_std(variance: tf.Tensor, epsilon: float) -> tf.Tensor:
    """1 / sqrt(variance + epsilon): exact, or TensorFlow's Rsqrt (``kafrob.arithmetic.rsqrt``)."""
    shifted = variance + epsilon
    return 1.0 / tf.sqrt(shifted) if arithmetic.rsqrt() == "exact" else tf.math.rsqrt(shifted)


def normalize(x: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor, offset: tf.Tensor | None,
              scale: tf.Tensor | None, epsilon: float) -> tf.Tensor:
    """``tf.nn.batch_normalization``'s formula and rounding, x * inv + (offset - mean * inv), with ``inverse_std``."""
    inv = inverse_std(variance, epsilon)
    if scale is not None:
        inv = inv * scale
    return x * inv + (offset - mean * inv if offset is not None else -mean * inv)


@keras.saving.register_keras_serializable(package="kafrob")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras 3's batch normalisation (channels last, no renorm, no mask), with ``inverse_std`` when exact is asked."""

    def call(self, inputs, training=None, mask=None):
        if arithmetic.rsqrt() != "exact":
            return super().call(inputs, training=training, mask=mask)
        if mask is not None or self.renorm:
            raise ValueError(f"{self.name}: {arithmetic.RSQRT_ENV_VAR}=1 supports batch normalisation without masks "
                             f"or renorm; unset it for this model")
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = tf.cast(self.moving_mean, x.dtype), tf.cast(self.moving_variance, x.dtype)
        if training and self.trainable:
            batch_mean, batch_variance = self._moments(x, None)
            self.moving_mean.assign(mean * self.momentum + batch_mean * (1.0 - self.momentum))
            self.moving_variance.assign(variance * self.momentum + batch_variance * (1.0 - self.momentum))
            mean, variance = batch_mean, batch_variance
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        return tf.cast(normalize(x, mean, variance, beta, gamma, self.epsilon), self.compute_dtype)
