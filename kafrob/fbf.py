"""'Fast is better than free' adversarial training (Wong, Rice & Kolter, ICLR 2020).

One FGSM step from a uniform random start, step 1.25 * eps, then one SGD step on the adversarial
batch. The whole step is one compiled function (XLA on by default: it fuses the KAF kernels).

The same step with a start of +-2 eps, a step of eps and no projection back into the eps-ball is N-FGSM (de Jorge
et al., NeurIPS 2022: no catastrophic overfitting at eps 8/255 on CIFAR-10; on the offline JPEG-rebuilt training set
it overfitted ResNet20 as FBF does, docs/short_tier.md) (``N_FGSM``). ``FBF_PREDICTED`` takes FBF's step against the
model's prediction instead of the label, which stopped the overfitting there.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from kafrob.attacks.common import check_label_mode, cross_entropy, cross_entropy_each

EPS = 8.0 / 255.0


@dataclass(frozen=True)
class FBFConfig:
    eps: float = EPS
    alpha_ratio: float = 1.25
    clip_start: bool = False  # the thesis takes the first gradient at x + delta, unclipped
    adversarial: bool = True  # False gives plain (clean) training with the same step function
    noise_ratio: float = 1.0  # the random start is uniform in +-noise_ratio * eps
    project: bool = True  # clip the perturbation back into the eps-ball after the step (FBF); N-FGSM does not
    label_mode: str = "true"  # "predicted": the step attacks the model's prediction at the start, not the label

    def __post_init__(self) -> None:
        check_label_mode(self.label_mode)

    @property
    def alpha(self) -> float:
        return self.alpha_ratio * self.eps


N_FGSM = FBFConfig(alpha_ratio=1.0, noise_ratio=2.0, project=False)

# Against label leaking (Kurakin et al. 2017): a step computed from the true label carries it, and a model can learn
# to read it instead of resisting the attack; a step from the model's own prediction carries nothing it did not know.
FBF_PREDICTED = FBFConfig(label_mode="predicted")


def fgsm_random_start(model: keras.Model, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor, config: FBFConfig):
    """The FBF example: uniform start in the eps-ball, one signed step of alpha, back into the ball and [0, 1]
    (N-FGSM: a start in +-2 eps, a step of eps, not projected).

    The step is the sign of each image's own gradient (the summed loss): the batch mean's 1/batch factor changes no
    sign in exact arithmetic, but under mixed precision it pushes the float16 backward pass under float16's range
    (docs/attacks.md, "Gradient underflow")."""
    noise = config.noise_ratio * config.eps
    delta = tf.random.stateless_uniform(tf.shape(x), seed, -noise, noise, dtype=x.dtype)
    start = x + delta
    if config.clip_start:
        start = tf.clip_by_value(start, 0.0, 1.0)
    with tf.GradientTape() as tape:
        tape.watch(start)
        z = model(start, training=True)
        target = y if config.label_mode == "true" else tf.stop_gradient(tf.argmax(z, -1, output_type=tf.int32))
        loss = tf.reduce_sum(cross_entropy_each(target, z))
    grad = tape.gradient(loss, start)
    delta = delta + config.alpha * tf.sign(grad)
    if config.project:
        delta = tf.clip_by_value(delta, -config.eps, config.eps)
    return tf.stop_gradient(tf.clip_by_value(x + delta, 0.0, 1.0))


def make_train_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, config: FBFConfig = FBFConfig(), *,
    jit_compile: bool = True, strategy: tf.distribute.Strategy | None = None,
):
    """A compiled ``step(x, y, seed) -> {loss, accuracy, finite}``.

    Non-finite losses or gradients are not applied (the weights stay as they were) and reported through
    ``finite``, so the caller can stop with an error that names the step. With a LossScaleOptimizer
    (mixed precision) non-finite gradients are the optimizer's business and only the loss is checked.

    With a multi-replica ``strategy`` (data parallel, e.g. MirroredStrategy over several GPUs) ``x`` and
    ``y`` are distributed batches: each replica attacks and differentiates its share, the optimizer
    sums the gradients across replicas (so each replica's loss is divided by their number) and each
    replica draws its own random start. Model and optimizer must have been built in ``strategy.scope()``.

    The batch dimension is traced as unknown, so a smaller last batch does not trace the step again.
    """
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1

    def gradients(x, y, seed):
        """Everything but the update: the part XLA compiles, also inside each replica."""
        x_train = fgsm_random_start(model, x, y, seed, config) if config.adversarial else x
        with tf.GradientTape() as tape:
            logits = model(x_train, training=True)
            data_loss = cross_entropy(y, logits)
            loss = data_loss + tf.add_n([tf.cast(r, tf.float32) for r in model.losses]) if model.losses else data_loss
            target = loss / replicas
            target = optimizer.scale_loss(target) if scaled else target
        grads = tape.gradient(target, model.trainable_variables)
        finite = tf.math.is_finite(loss)
        if not scaled:
            for g in grads:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(y, tf.int32))
        return grads, data_loss, tf.reduce_mean(tf.cast(correct, tf.float32)), finite

    if replicas == 1:
        def step(x, y, seed):
            grads, loss, accuracy, finite = gradients(x, y, seed)
            optimizer.apply(grads, model.trainable_variables)
            return {"loss": loss, "accuracy": accuracy, "finite": finite}

        return _traced_once(step, jit_compile)

    # The gradient all-reduce is a synchronisation point, which may not sit inside a nested
    # tf.function: each replica runs the compiled gradients, the update happens outside them.
    compiled_gradients = tf.function(gradients, jit_compile=jit_compile)

    def replica_step(x, y, seed):
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        grads, loss, accuracy, finite = compiled_gradients(x, y, seed + tf.stack([replica * 1_000_003,
                                                                                   tf.constant(0, tf.int64)]))
        optimizer.apply(grads, model.trainable_variables)
        return loss, accuracy, tf.cast(tf.logical_not(finite), tf.int32)

    @tf.function
    def distributed(x, y, seed):
        loss, accuracy, broken = strategy.run(replica_step, args=(x, y, seed))
        mean = lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)  # noqa: E731
        broken = strategy.reduce(tf.distribute.ReduceOp.SUM, broken, axis=None)  # replicas with a bad step
        return {"loss": mean(loss), "accuracy": mean(accuracy), "finite": broken == 0}

    return distributed


def _traced_once(step, jit_compile: bool):
    """``tf.function(step)`` whose signature, fixed at the first call, leaves the batch size open."""
    compiled = None

    def call(x, y, seed):
        nonlocal compiled
        if compiled is None:
            specs = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None], y.dtype),
                     tf.TensorSpec([2], tf.int64)]
            compiled = tf.function(step, jit_compile=jit_compile, input_signature=specs)
        return compiled(x, y, seed)

    return call
