"""AutoAttack's composition and its gradient-masking flags: silent on a linear model, loud on one that masks."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.attacks import NAMED, attack, named
from kafrob.attacks.autoattack import COMPONENTS


def test_autoattack_is_exact_and_silent_on_a_linear_model(linear):
    r = linear.radius()
    eps = float(np.median(r))
    out = attack(linear.model, linear.x, linear.y, named("autoattack", eps=eps, queries=500))
    keep = np.abs(r - eps) > 0.02 * eps
    np.testing.assert_array_equal(out.fooled[keep], (r < eps)[keep])
    assert out.flags.raised == []
    assert set(out.first[out.fooled]) == {COMPONENTS.index("apgd-ce")}  # the first component finds them all


def test_masking_flags_fire_on_a_quantised_input(linear, quantised):
    model = quantised
    y = model.predict(linear.x, verbose=0).argmax(1)
    out = attack(model, linear.x, y, named("autoattack", eps=float(np.median(linear.radius())), queries=500))
    raised = " | ".join(out.flags.raised)
    assert out.flags.square_only > 0 and "Square fooled" in raised
    assert out.flags.bad_start_gradients == len(y) and "zero or non-finite" in raised


@pytest.mark.parametrize("name", list(NAMED))
def test_every_attack_runs_on_a_single_image(linear, name):
    """A batch of one (in AutoAttack, often the one image still robust when a component starts), traced with its
    size known: FAB's loop once failed on it ("shape (1, ...) before the loop, but shape (None, ...) after")."""
    sizes = {"queries": 500} if name in ("square", "autoattack") else {}
    out = attack(linear.model, linear.x[:1], linear.y[:1], named(name, eps=float(linear.radius()[0]) * 1.5, **sizes))
    assert out.fooled.tolist() == [True]  # 1.5 times its robust radius: every attack finds it
