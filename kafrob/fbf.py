"""'Fast is better than free' adversarial training (Wong, Rice & Kolter, ICLR 2020).

One FGSM step from a uniform random start, step 1.25 * eps, then one SGD step on the adversarial
batch. The whole step is one compiled function (XLA on by default: it fuses the KAF kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

EPS = 8.0 / 255.0


@dataclass(frozen=True)
class FBFConfig:
    eps: float = EPS
    alpha_ratio: float = 1.25
    clip_start: bool = False  # the thesis takes the first gradient at x + delta, unclipped
    adversarial: bool = True  # False gives plain (clean) training with the same step function

    @property
    def alpha(self) -> float:
        return self.alpha_ratio * self.eps


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                       logits=tf.cast(logits, tf.float32))
    )


def fgsm_random_start(model: keras.Model, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor, config: FBFConfig):
    """The FBF example: uniform start in the eps-ball, one signed step of alpha, back into the ball and [0, 1]."""
    delta = tf.random.stateless_uniform(tf.shape(x), seed, -config.eps, config.eps, dtype=x.dtype)
    start = x + delta
    if config.clip_start:
        start = tf.clip_by_value(start, 0.0, 1.0)
    with tf.GradientTape() as tape:
        tape.watch(start)
        loss = cross_entropy(y, model(start, training=True))
    grad = tape.gradient(loss, start)
    delta = tf.clip_by_value(delta + config.alpha * tf.sign(grad), -config.eps, config.eps)
    return tf.stop_gradient(tf.clip_by_value(x + delta, 0.0, 1.0))


def make_train_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, config: FBFConfig = FBFConfig(), *,
    jit_compile: bool = True,
):
    """A compiled ``step(x, y, seed) -> {loss, accuracy, finite}``.

    Non-finite losses or gradients are not applied (the weights stay as they were) and reported through
    ``finite``, so the caller can stop with an error that names the step. With a LossScaleOptimizer
    (mixed precision) non-finite gradients are the optimizer's business and only the loss is checked.
    """
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def step(x, y, seed):
        x_train = fgsm_random_start(model, x, y, seed, config) if config.adversarial else x
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits = model(x_train, training=True)
            data_loss = cross_entropy(y, logits)
            loss = data_loss + tf.add_n([tf.cast(r, tf.float32) for r in model.losses]) if model.losses else data_loss
            target = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(target, variables)
        finite = tf.math.is_finite(loss)
        if not scaled:
            for g in grads:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        optimizer.apply(grads, variables)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(y, tf.int32))
        return {"loss": data_loss, "accuracy": tf.reduce_mean(tf.cast(correct, tf.float32)), "finite": finite}

    return tf.function(step, jit_compile=jit_compile, reduce_retracing=True)
