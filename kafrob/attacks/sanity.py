"""Automatable checks from Carlini et al. 2019, "On evaluating adversarial robustness".

A failed check is a warning sign of gradient masking or of a broken attack, not a proof of either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import keras
import numpy as np
from tabulate import tabulate

from kafrob.attacks.common import (
    bad_gradients,
    input_gradients,
    predict,
    rises_with_eps,
)
from kafrob.attacks.pgd import PGDConfig, fgsm, pgd_attack

EPS_GRID = tuple(e / 255.0 for e in (0, 2, 4, 8, 16, 32))


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _robust(model, x, y, config: PGDConfig, seed: int) -> float:
    return float(np.mean(~pgd_attack(model, x, y, config, seed=seed)[1]))


def sanity_checks(model: keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float = 8 / 255,
                  base: PGDConfig = PGDConfig(iterations=50, restarts=10), seed: int = 0,
                  tolerance: float = 0.01, large_eps: float = 128 / 255, thorough: bool = True) -> list[Check]:
    """Run the checks on a batch; ``thorough=False`` skips PGD-100 and 20 restarts (the slow ones). Every PGD run
    is ``base`` (its step, iterations, restarts and loss reduction) at the eps and sizes a check needs."""
    x, y = np.asarray(x, np.float32), np.asarray(y)
    base = PGDConfig(eps=eps, step=base.step, iterations=base.iterations, restarts=base.restarts,
                     reduction=base.reduction)
    pgd = partial(dataclasses.replace, base)
    clean = float(np.mean(predict(model, x).numpy() == y))
    checks: list[Check] = []

    at_zero = _robust(model, x, y, pgd(eps=0.0, restarts=1), seed)
    checks.append(Check("eps=0 gives clean accuracy", abs(at_zero - clean) < 1e-9,
                        f"clean {clean:.4f}, PGD(eps=0) {at_zero:.4f}"))

    curve = [_robust(model, x, y, pgd(eps=e, step=max(e / 4, 1e-8) if e else 0.0, restarts=1), seed)
             for e in EPS_GRID]
    curve[0] = clean
    checks.append(Check("robust accuracy non-increasing in eps", not rises_with_eps(zip(EPS_GRID, curve, strict=True)),
                        ", ".join(f"{round(e * 255)}/255: {a:.3f}" for e, a in zip(EPS_GRID, curve, strict=True))))

    large = _robust(model, x, y, pgd(eps=large_eps, step=large_eps / 10, restarts=1), seed)
    checks.append(Check("near-zero accuracy at large eps", large <= 0.05,
                        f"eps {round(large_eps * 255)}/255: {large:.4f} (expected <= 0.05)"))

    reference = _robust(model, x, y, base, seed)
    if thorough:
        longer = _robust(model, x, y, pgd(iterations=2 * base.iterations), seed + 1)
        checks.append(Check(f"PGD-{2 * base.iterations} vs PGD-{base.iterations} within 1 point",
                            abs(longer - reference) < tolerance, f"{longer:.4f} vs {reference:.4f}"))
        more = _robust(model, x, y, pgd(restarts=2 * base.restarts), seed + 2)
        checks.append(Check(f"{2 * base.restarts} vs {base.restarts} restarts within 1 point",
                            abs(more - reference) < tolerance, f"{more:.4f} vs {reference:.4f}"))

    fgsm_acc = float(np.mean(predict(model, fgsm(model, x, y, eps)).numpy() == y))
    checks.append(Check("PGD at least as strong as FGSM", reference <= fgsm_acc + 1e-9,
                        f"PGD {reference:.4f}, FGSM {fgsm_acc:.4f}"))

    rng = np.random.default_rng(seed)
    noisy = np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), 0, 1)
    noise_acc = float(np.mean(predict(model, noisy).numpy() == y))
    checks.append(Check("uniform noise hurts far less than PGD", clean - noise_acc < 0.5 * max(clean - reference, 1e-9),
                        f"noise {noise_acc:.4f}, PGD {reference:.4f}, clean {clean:.4f}"))

    bad = int(np.sum(bad_gradients(input_gradients(model, x, y))))
    checks.append(Check("no all-zero or non-finite input gradients", bad == 0, f"{bad} of {len(x)} examples"))

    x_adv, _ = pgd_attack(model, x, y, base, seed=seed)
    linf = float(np.max(np.abs(x_adv - x)))
    checks.append(Check("||x_adv - x||_inf <= eps and x_adv in [0, 1]",
                        linf <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1,
                        f"max |delta| {linf * 255:.4f}/255, range [{x_adv.min():.4f}, {x_adv.max():.4f}]"))
    return checks


def format_checks(checks: list[Check]) -> str:
    rows = [(c.name, "ok" if c.passed else "FAIL (possible gradient masking)", c.detail) for c in checks]
    return tabulate(rows, headers=("check", "result", "measured"), tablefmt="github")
