"""The stronger attacks on released thesis models (slow): APGD at least as strong as PGD at equal iterations, and
AutoAttack's gradient-masking flags silent where no masking is expected."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.attacks import attack, named


@pytest.mark.slow
def test_apgd_is_at_least_as_strong_as_pgd_at_equal_iterations(shared_checkpoints, first_images):
    from kafrob.checkpoints import load_thesis_model

    model = load_thesis_model("relu")
    x, y = first_images(100)
    pgd = ~attack(model, x, y, named("pgd", iterations=100, restarts=1), seed=0).fooled
    apgd = ~attack(model, x, y, named("apgd-ce", iterations=100), seed=0).fooled
    print(f"\nrelu n=100, 100 iterations: PGD robust {pgd.mean():.3f}, APGD-CE robust {apgd.mean():.3f}, "
          f"fooled by PGD only {int(np.sum(apgd & ~pgd))}, by APGD only {int(np.sum(pgd & ~apgd))}")
    assert apgd.mean() <= pgd.mean()


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "kaf_relu"])
def test_masking_flags_stay_silent_on_released_models(shared_checkpoints, first_images, activation):
    from kafrob.checkpoints import load_thesis_model

    x, y = first_images(20)
    out = attack(load_thesis_model(activation), x, y, named("autoattack", label_mode="predicted"), seed=0)
    print(f"\n{activation} n=20: AutoAttack robust {np.mean(~out.fooled):.2f}; flags {out.flags}")
    assert out.flags.raised == []
