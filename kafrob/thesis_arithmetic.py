"""The released thesis models' float16 arithmetic (tf.keras 2.3 under mixed_float16), to import them exactly.

Keras 3 and tf.keras 2.3 round differently in two layers of the thesis's ResNet20: batch normalisation
(Keras 3: x * inv + (beta - mean * inv) in float32; tf.keras: TensorFlow's fused kernel) and global
average pooling (Keras 3 averages float16 inputs in float32; tf.keras: a float16 ``reduce_mean``).
Measured layer by layer against the kaf_relu SavedModel on 256 test images: every convolution, addition
and KAF output is bit-identical, but ~0.04% of batch-norm outputs and ~48% of pooled features differ in
the last float16 bit, which flips 0.8% of that model's predictions (its ridge-initialised KAF
coefficients, |a| ~ 70 with alternating signs, amplify rounding). These layers call the same TensorFlow
kernels as the thesis models did, at inference; training behaves as the Keras 3 base classes. KAF
layers switch to the thesis's float16 formula (``KAF(thesis_float16=True)``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kafrob import arithmetic
from kafrob.kaf import KAF
from kafrob.models.batch_norm import BatchNormalization, inverse_std


def fused_formula(x: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor, offset: tf.Tensor, scale: tf.Tensor,
                  epsilon: float) -> tf.Tensor:
    """The fused kernel's inference formula and rounding in float32, (x - mean) * (inv * scale) + offset, with
    ``inverse_std`` (tests/test_batch_norm.py: TensorFlow's Rsqrt here gives the kernel's output bit for bit)."""
    return (tf.cast(x, tf.float32) - mean) * (inverse_std(variance, epsilon) * scale) + offset


@keras.saving.register_keras_serializable(package="kafrob")
class FusedBatchNormalization(BatchNormalization):
    """Inference through TensorFlow's fused batch-norm kernel, as tf.keras 2.x computed it (its formula with the
    exact inverse standard deviation under ``KAFROB_EXACT_RSQRT=1``, kafrob.models.batch_norm)."""

    def call(self, inputs, training=None, mask=None):
        channel_axis = self.axis if self.axis >= 0 else len(inputs.shape) + self.axis
        if training or mask is not None or len(inputs.shape) != 4 or channel_axis != 3:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma.value, tf.float32) if self.scale else tf.ones(channels)
        offset = tf.cast(self.beta.value, tf.float32) if self.center else tf.zeros(channels)
        mean, variance = tf.cast(self.moving_mean.value, tf.float32), tf.cast(self.moving_variance.value, tf.float32)
        if arithmetic.rsqrt() == "exact":
            return tf.cast(fused_formula(inputs, mean, variance, offset, scale, self.epsilon), self.compute_dtype)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, mean=mean, variance=variance,
                                                   epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="kafrob")
class InputDtypeGlobalAveragePooling2D(keras.layers.GlobalAveragePooling2D):
    """Averages in the input's dtype (float16 under mixed precision), as tf.keras 2.x did."""

    def call(self, inputs):
        axis = [1, 2] if self.data_format == "channels_last" else [2, 3]
        return tf.reduce_mean(inputs, axis=axis, keepdims=self.keepdims)


_REPLACEMENTS = {
    keras.layers.BatchNormalization: FusedBatchNormalization,
    BatchNormalization: FusedBatchNormalization,
    keras.layers.GlobalAveragePooling2D: InputDtypeGlobalAveragePooling2D,
}


def with_thesis_arithmetic(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same layer names, fresh weights) that computes like the released thesis models."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, KAF):
            config["thesis_float16"] = True
        return _REPLACEMENTS.get(type(layer), type(layer)).from_config(config)

    return keras.models.clone_model(model, clone_function=clone)
