"""Our APGD and Square against ART's with matched parameters on released thesis models (slow).

Robust accuracy on the same images and labels, and the per-example agreement; tolerances in
docs/attacks.md ("Cross-checks"), set from the measured differences."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.attacks import attack, named
from kafrob.attacks.art import art_counterpart
from kafrob.attacks.common import predict

CASES = [("relu", "apgd-ce", 100), ("relu", "apgd-dlr", 100), ("relu", "square", 20), ("kaf_relu", "apgd-ce", 100)]



@pytest.mark.slow
@pytest.mark.parametrize(("activation", "name", "n"), CASES, ids=[f"{a}-{m}" for a, m, _ in CASES])
def test_our_attack_matches_arts(shared_checkpoints, first_images, activation, name, n):
    from kafrob.checkpoints import load_thesis_model

    model = load_thesis_model(activation)
    x, y = first_images(n)
    config = named(name)
    ours = ~attack(model, x, y, config, seed=0).fooled
    theirs = predict(model, art_counterpart(model, x, y, config, seed=0)).numpy() == y
    agree = float(np.mean(ours == theirs))
    print(f"\n{activation} {name} n={n}: ours {ours.mean():.3f}, ART {theirs.mean():.3f}, agreement {agree:.3f}")
    assert abs(ours.mean() - theirs.mean()) <= 0.01 + 1e-9
    assert agree >= 0.97
