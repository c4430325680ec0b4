"""The same attacks through the adversarial-robustness-toolbox, the library the thesis evaluated with."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kafrob.attacks.pgd import PGDConfig
from kafrob.data import IMAGE_SHAPE, NUM_CLASSES

ART_ATTACKS = ("pgd", "apgd")


class Compiled:
    """The model as ART calls it (``model(x, training=...)``), traced into one graph: ART calls the model eagerly,
    where the thesis KAF's custom gradient runs op by op (the KAF rows' ART attacks took ~10x ours).

    ``per_example_gradients``: float32 logits whose backward pass multiplies the incoming gradient by the batch size,
    so that ART's batch-mean losses give each image its own gradient (the summed loss, as our APGD's) before the
    float16 network sees it; the values are unchanged. Without it, the released float16 models round many of the
    mean's gradients away (kafrob.attacks.pgd.Reduction)."""

    def __init__(self, model: keras.Model, per_example_gradients: bool = False):
        self.model = model
        self.layers = model.layers

        @tf.custom_gradient
        def undo_mean(z):
            return tf.identity(z), lambda g: g * tf.cast(tf.shape(z)[0], g.dtype)

        def call(x, training):
            z = model(x, training=training)
            return undo_mean(tf.cast(z, tf.float32)) if per_example_gradients else z

        self._call = tf.function(call, reduce_retracing=True)

    def __call__(self, x, training: bool = False):
        return self._call(x, training=bool(training))


def art_classifier(model: keras.Model, per_example_gradients: bool = False):
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=Compiled(model, per_example_gradients), nb_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
        clip_values=(0.0, 1.0), loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def art_attack(model: keras.Model, x: np.ndarray, y: np.ndarray, config: PGDConfig, seed: int,
               kind: str = "pgd") -> np.ndarray:
    """ART's PGD (or Auto-PGD) with our settings; label_mode 'predicted' calls generate() without labels."""
    if kind not in ART_ATTACKS:
        raise ValueError(f"unknown ART attack {kind!r}; known: {', '.join(ART_ATTACKS)}")
    from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescent

    classifier = art_classifier(model)
    common = dict(norm=np.inf, eps=config.eps, eps_step=config.step, max_iter=config.iterations,
                  batch_size=len(x), verbose=False)
    if kind == "pgd":
        attack = ProjectedGradientDescent(classifier, num_random_init=config.restarts if config.random_start else 0,
                                          **common)
    else:
        attack = AutoProjectedGradientDescent(classifier, nb_random_init=config.restarts, **common)
    np.random.seed(seed % 2**32)  # ART draws its random starts from NumPy's global generator
    tf.random.set_seed(seed)
    labels = None if config.label_mode == "predicted" else np.asarray(y, np.int64)
    return attack.generate(x=np.asarray(x, np.float32), y=labels).astype(np.float32)


def art_pgd(model, x, y, config: PGDConfig, seed: int) -> np.ndarray:
    return art_attack(model, x, y, config, seed, "pgd")


def art_apgd(model, x, y, config: PGDConfig, seed: int) -> np.ndarray:
    return art_attack(model, x, y, config, seed, "apgd")


def art_counterpart(model: keras.Model, x: np.ndarray, y: np.ndarray, config, seed: int) -> np.ndarray:
    """ART's attack matching one of ours, with matched parameters, for the cross-checks: APGD (cross-entropy or
    DLR; first step 2*eps as ours and the paper's, ART's default being eps_step) and Square. ART gets each image's
    own gradient, as ours do (``Compiled``'s ``per_example_gradients``), so that the algorithms are compared, not
    the float16 rounding of a batch mean. Returns x_adv."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    from kafrob.attacks.apgd import APGDConfig, Loss
    from kafrob.attacks.square import SquareConfig

    classifier = art_classifier(model, per_example_gradients=True)
    if isinstance(config, APGDConfig) and config.loss in (Loss.CE, Loss.DLR):
        loss = "cross_entropy" if config.loss is Loss.CE else "difference_logits_ratio"
        attack = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=config.eps, eps_step=2 * config.eps,
                                              max_iter=config.iterations, nb_random_init=config.restarts,
                                              loss_type=loss, batch_size=len(x), verbose=False)
    elif isinstance(config, SquareConfig):
        attack = SquareAttack(classifier, norm=np.inf, eps=config.eps, max_iter=config.queries, p_init=config.p_init,
                              nb_restarts=1, batch_size=len(x), verbose=False)
    else:
        raise ValueError(f"ART has no counterpart of {config}")
    np.random.seed(seed % 2**32)
    tf.random.set_seed(seed)
    labels = None if config.label_mode == "predicted" else np.asarray(y, np.int64)
    return attack.generate(x=np.asarray(x, np.float32), y=labels).astype(np.float32)
