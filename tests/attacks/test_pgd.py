"""Our PGD against ART's on a released thesis model, the label modes, and the Carlini et al. checks."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.attacks.art import art_pgd
from kafrob.attacks.pgd import PGDConfig, pgd_attack, predict
from kafrob.attacks.sanity import format_checks, sanity_checks
from kafrob.data import to_float
from kafrob.evaluate import agreement, evaluate


@pytest.fixture(scope="module")
def robust_model(shared_checkpoints, tmp_path_factory):
    """An FBF-trained ResNet20 (the thesis's released ReLU model), exact float32."""
    from kafrob.checkpoints import extract, fetch, import_resnet20, lookup

    zip_path = fetch("relu", shared_checkpoints / lookup("relu").filename)
    return import_resnet20(extract(zip_path, tmp_path_factory.mktemp("relu")), "relu", thesis_precision=False)


def test_pgd_bounds_and_label_modes(robust_model, cifar):
    x = to_float(cifar.x_test[:64]).numpy()
    y = cifar.y_test[:64]
    cfg = PGDConfig(iterations=5, restarts=2)
    x_adv, fooled = pgd_attack(robust_model, x, y, cfg, seed=0)
    assert np.max(np.abs(x_adv - x)) <= cfg.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert np.array_equal(fooled, predict(robust_model, x_adv).numpy() != y)
    _, fooled_pred = pgd_attack(robust_model, x, y, PGDConfig(iterations=5, restarts=2, label_mode="predicted"))
    assert fooled_pred.dtype == bool
    with pytest.raises(ValueError, match="label_mode"):
        PGDConfig(label_mode="target")


@pytest.mark.slow
def test_our_pgd_matches_art(robust_model, cifar):
    cfg = PGDConfig(iterations=10, restarts=1)
    ours = evaluate(robust_model, cifar, n=100, attack=cfg, batch_size=100, progress=False)
    art = evaluate(robust_model, cifar, n=100, attack=cfg, batch_size=100, run_attack=art_pgd, backend="art",
                   progress=False)
    agree = agreement(ours, art)
    print(f"ours {ours.robust_accuracy:.3f} ({ours.seconds:.1f}s), ART {art.robust_accuracy:.3f} "
          f"({art.seconds:.1f}s), agreement {agree:.3f}")
    assert ours.robust_accuracy <= art.robust_accuracy + 0.01
    assert agree >= 0.95


@pytest.mark.slow
def test_sanity_checks_pass_on_fbf_model(robust_model, cifar):
    x = to_float(cifar.x_test[:100]).numpy()
    checks = sanity_checks(robust_model, x, cifar.y_test[:100], base=PGDConfig(iterations=10, restarts=1),
                           thorough=False)
    print("\n" + format_checks(checks))
    by_name = {c.name: c for c in checks}
    for name in ("eps=0 gives clean accuracy", "robust accuracy non-increasing in eps",
                 "||x_adv - x||_inf <= eps and x_adv in [0, 1]"):
        assert by_name[name].passed, by_name[name].detail
    assert all(c.passed for c in checks), format_checks(checks)


def confident_float16_classifier():
    """A float16 linear classifier on 8 features, class 0 ahead by 13.4 logits at x = 0.9: float16 holds its
    per-example logit gradients (about 3e-6), not a 1,024-image batch mean of them."""
    import keras

    kernel = np.zeros((8, 10), np.float32)
    kernel[:, 0], kernel[0, 1:] = 2.2, 0.3 * np.arange(1, 10)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10, dtype="mixed_float16", use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    return model


def test_the_summed_loss_keeps_the_gradients_a_float16_network_rounds_away_under_the_mean():
    """A confident float16 classifier: the batch-mean loss scales each image's logit gradient (about 3e-6) by 1/1024,
    under float16's smallest step, so PGD does not move; the summed loss moves every image, exactly as it moves the
    image alone (each image's own gradient, whatever the batch)."""
    import tensorflow as tf

    from kafrob.attacks.pgd import Reduction, pgd_run

    model = confident_float16_classifier()
    x = np.ones((1024, 8), np.float32) * 0.9
    y = np.zeros(1024, np.int32)

    def moved(reduction: Reduction, batch: int) -> np.ndarray:
        x_adv = pgd_run(model, tf.constant(x[:batch]), tf.constant(y[:batch]), tf.zeros((batch, 8)), eps=8 / 255,
                        step=2 / 255, iterations=1, reduction=reduction).numpy()
        return np.abs(x_adv - x[:batch]).max(1)

    assert np.all(moved(Reduction.MEAN, 1024) == 0)  # every gradient rounded to zero
    assert np.all(moved(Reduction.MEAN, 1) > 0)  # the same image alone is attacked: the batch decides
    assert np.allclose(moved(Reduction.SUM, 1024), 2 / 255) and np.allclose(moved(Reduction.SUM, 1), 2 / 255)
    assert PGDConfig(reduction="sum").reduction is Reduction.SUM


def test_art_gets_each_images_own_gradient_for_the_cross_checks():
    """ART's losses are batch means: on a confident float16 classifier its gradients round to zero, unless the
    classifier undoes the mean at the float32 logits (``per_example_gradients``): then they are the summed loss's."""
    import keras
    import tensorflow as tf

    from kafrob.attacks.art import art_classifier
    from kafrob.attacks.common import cross_entropy_each, logits

    kernel = np.zeros((32 * 32 * 3, 10), np.float32)
    kernel[:, 0], kernel[0, 1:] = 15.84 / (32 * 32 * 3 * 0.9), 0.3 * np.arange(1, 10)  # class 0 ahead by 13.4
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(10, dtype="mixed_float16", use_bias=False)])
    model.layers[-1].kernel.assign(kernel)
    x = np.full((512, 32, 32, 3), 0.9, np.float32)
    y = np.zeros(512, np.int64)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        summed = tf.reduce_sum(cross_entropy_each(y, logits(model, xt)))
    own = tape.gradient(summed, xt).numpy()
    one_hot = np.eye(10, dtype=np.float32)[y]  # as ART's attacks pass labels
    assert np.all(art_classifier(model).loss_gradient(x, one_hot) == 0)
    per_example = art_classifier(model, per_example_gradients=True).loss_gradient(x, one_hot)
    assert np.any(own != 0) and np.allclose(per_example, own)


def test_fgsm_is_pgds_one_step_from_the_clean_image_with_each_images_own_gradient(linear):
    """The compiled FGSM equals the eager formula (the sign of each image's summed-loss gradient, step eps,
    projected) bit for bit, and on a confident float16 classifier moves every image of a large batch by eps."""
    import tensorflow as tf

    from kafrob.attacks.common import cross_entropy_each, logits, signed_step
    from kafrob.attacks.pgd import fgsm

    x, eps = tf.constant(linear.x), 8 / 255
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(cross_entropy_each(linear.y, logits(linear.model, x)))
    expected = signed_step(x, tape.gradient(loss, x), x, eps, eps).numpy()
    assert np.array_equal(fgsm(linear.model, linear.x, linear.y, eps), expected)
    assert np.mean(predict(linear.model, expected).numpy() != linear.y) > 0  # a real attack, not a no-op

    x = np.full((1024, 8), 0.9, np.float32)
    assert np.allclose(np.abs(fgsm(confident_float16_classifier(), x, np.zeros(1024), eps) - x), eps)
