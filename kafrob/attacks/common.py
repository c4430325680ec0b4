"""What every L-inf attack shares: float32 logits, the losses and margins they climb, the signed step and the
projection back into the eps-ball and the image box, and per-image random streams.

All attack arithmetic is float32 whatever the model's dtype policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

LABEL_MODES = ("true", "predicted")  # what an attack attacks: the true label, or the model's clean prediction (ART's)


def check_label_mode(label_mode: str) -> None:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label_mode {label_mode!r}; known: {', '.join(LABEL_MODES)}")


@dataclass
class Outcome:
    """What an attack leaves, per example: its adversarial example; the first stage (restart, target or
    component) whose example changed the attacked label, -1 where none did; where the attack is gradient-based,
    whether the input gradient at its start was all zero or not finite (a gradient-masking sign)."""

    x_adv: np.ndarray
    first: np.ndarray
    bad_start_gradient: np.ndarray | None = None

    @property
    def fooled(self) -> np.ndarray:
        return self.first >= 0


def logits(model: keras.Model, x: tf.Tensor) -> tf.Tensor:
    return tf.cast(model(x, training=False), tf.float32)


def predict(model: keras.Model, x: tf.Tensor) -> tf.Tensor:
    return tf.argmax(logits(model, x), -1, output_type=tf.int32)


def attacked_labels(model: keras.Model, x: np.ndarray, y, label_mode: str) -> np.ndarray:
    """What an attack attacks: the true labels, or the model's clean predictions (label_mode "predicted")."""
    return predict(model, tf.constant(x)).numpy() if label_mode == "predicted" else np.asarray(y)


def cross_entropy_each(labels: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """Per-example softmax cross-entropy of float32 logits ``z``."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                          logits=tf.cast(z, tf.float32))


def cross_entropy(labels: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy over the batch: the training loss (PGD's: its config's Reduction; attack steps that
    differentiate it take the summed ``cross_entropy_each``, whose gradients stay in float16's range)."""
    return tf.reduce_mean(cross_entropy_each(labels, z))


def _sorted_desc(z: tf.Tensor) -> tf.Tensor:
    return tf.sort(z, axis=-1, direction="DESCENDING")


def _at(z: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    return tf.gather(z, tf.cast(labels, tf.int32), axis=1, batch_dims=1)


def margin(z: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``z_y - max_{i != y} z_i``: positive while the label is predicted (ties count as not predicted)."""
    other = tf.reduce_max(tf.where(tf.one_hot(labels, tf.shape(z)[-1]) > 0, -np.inf, z), -1)
    return _at(z, labels) - other


def dlr_loss(z: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Croce & Hein 2020's difference-of-logits ratio, per example: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``
    (pi: logits sorted descending). Invariant to shifting and scaling the logits."""
    s = _sorted_desc(z)
    return -margin(z, labels) / (s[:, 0] - s[:, 2] + 1e-12)


def dlr_targeted_loss(z: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """The targeted DLR loss: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``."""
    s = _sorted_desc(z)
    return -(_at(z, labels) - _at(z, targets)) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def project(x_adv: tf.Tensor, x: tf.Tensor, eps) -> tf.Tensor:
    """Back into the L-inf ball of radius eps around x, then into the image box [0, 1]."""
    return tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), 0.0, 1.0)


def signed_step(x_adv: tf.Tensor, grad: tf.Tensor, x: tf.Tensor, eps, step) -> tf.Tensor:
    """One L-inf steepest-ascent step (the sign of the gradient, scaled by ``step``, per example or
    scalar), projected: the building block of FGSM, PGD and APGD."""
    step = tf.convert_to_tensor(step, tf.float32)
    if step.shape.rank:
        step = tf.reshape(step, [-1] + [1] * (len(x.shape) - 1))
    return project(x_adv + step * tf.sign(grad), x, eps)


def random_starts(ids: np.ndarray, seed: int, restart: int, shape: tuple[int, ...], eps: float,
                  stream: int = 0) -> np.ndarray:
    """Uniform [-eps, eps] starting perturbations, one stream per (seed, restart, image id[, stream]): an image's
    start does not depend on which other images share its batch, so results do not depend on the batching.
    ``stream`` keeps different attacks' starts apart (0 is PGD's, kept as it was for the stored results)."""
    key = [seed, restart] if not stream else [seed, restart, stream]
    return np.stack([np.random.default_rng([*key[:2], int(i), *key[2:]]).uniform(-eps, eps, shape).astype(np.float32)
                     for i in ids]) if len(ids) else np.zeros((0, *shape), np.float32)


def hash_uniform(*keys: tf.Tensor) -> tf.Tensor:
    """Uniform [0, 1) floats from integer keys (broadcast), by a counter-based hash: the same keys give the same
    number in any batch. For attacks that draw per image and per query inside a compiled loop (Square)."""
    h = tf.constant(0x9E3779B9, tf.uint32)
    for k in keys:
        h = tf.bitwise.bitwise_xor(h, tf.cast(k, tf.uint32)) * tf.constant(0x85EBCA6B, tf.uint32)
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, tf.uint32)))
        h = h * tf.constant(0xC2B2AE35, tf.uint32)
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
    return tf.cast(tf.bitwise.right_shift(h, tf.constant(8, tf.uint32)), tf.float32) / float(1 << 24)


def input_gradients(model: keras.Model, x, labels) -> np.ndarray:
    """Per-example gradients of the cross-entropy with respect to the input."""
    x = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        losses = cross_entropy_each(labels, logits(model, x))
    return tape.gradient(losses, x).numpy()


def bad_gradients(grad) -> tf.Tensor:
    """Per example: the input gradient is all zero or not finite (a sign of gradient masking, Carlini et al. 2019)."""
    flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
    return tf.reduce_all(flat == 0, -1) | tf.reduce_any(~tf.math.is_finite(flat), -1)


def rises_with_eps(accuracy_by_eps) -> bool:
    """Robust accuracy goes up somewhere as eps grows ((eps, accuracy) pairs in any order): an attack that finds
    less in a larger ball is failing, not the model robust (Carlini et al. 2019)."""
    accs = [a for _, a in sorted(accuracy_by_eps)]
    return any(b > a + 1e-9 for a, b in zip(accs, accs[1:], strict=False))
