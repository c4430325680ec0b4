"""The Carlini et al. checks (kafrob.attacks.sanity) on a model where the answer is known."""

from __future__ import annotations

import keras
import numpy as np

from kafrob.attacks.pgd import PGDConfig, Reduction
from kafrob.attacks.sanity import sanity_checks


def _confident_float16_classifier() -> keras.Model:
    """Two classes, logit margin 11 at x = 0.5 (64 features): an eps = 8/255 step against the gradient's sign closes
    12, so every image can be fooled, but each image's logit gradient (about e^-11) is under float16's smallest step
    once divided by a batch of 1,024."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2, dtype="mixed_float16")])
    model.layers[0].kernel.assign(np.stack([np.full(64, 3.0), np.full(64, -3.0)], 1).astype(np.float32))
    model.layers[0].bias.assign(np.array([0.0, 181.0], np.float32))  # z0 - z1 = 6 * 32 - 181 = 11
    return model


def test_pgd_weaker_than_fgsm_flags_a_batch_mean_that_underflows_in_float16():
    """FGSM takes each image's own gradient; PGD the given reduction. With the batch mean PGD does not move and the
    check "PGD at least as strong as FGSM" fails; with the summed loss PGD fools every image and it passes."""
    model = _confident_float16_classifier()
    x, y = np.full((1024, 64), 0.5, np.float32), np.zeros(1024, np.int64)
    for reduction, passes in ((Reduction.MEAN, False), (Reduction.SUM, True)):
        checks = {c.name: c for c in sanity_checks(model, x, y, base=PGDConfig(iterations=10, restarts=1,
                                                                               reduction=reduction), thorough=False)}
        check = checks["PGD at least as strong as FGSM"]
        assert check.passed is passes, check.detail
    assert check.detail == "PGD 0.0000, FGSM 0.0000"
