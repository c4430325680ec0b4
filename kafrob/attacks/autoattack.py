"""AutoAttack's standard L-inf evaluation (Croce & Hein, ICML 2020) in TensorFlow, with gradient-masking flags.

The components run in order, each only on the images every earlier one left robust: APGD-CE (100 iterations,
1 restart), APGD-T (targeted DLR against the 9 runner-up classes, 100 iterations each), FAB-T (9 targets,
100 iterations) and Square (5,000 queries). An image is robust if no component changed its label within eps
(the per-example worst case). Seeds are the caller's and recorded with the result.

Gradient-masking flags (Carlini et al. 2019), computed on every run and reported, not hidden:
* Square, which uses no gradients, fools images the three gradient-based components could not;
* input gradients all zero or not finite at APGD-CE's starting points;
* robust accuracy not decreasing with eps (APGD-CE with a quarter of the iterations at eps/2 and 2 eps, beside
  the full evaluation at eps);
* a forward pass that is not deterministic (the same batch predicted twice gives different logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from kafrob.attacks.apgd import APGDConfig, Loss, apgd_attack
from kafrob.attacks.common import Outcome, check_label_mode, logits, predict, rises_with_eps
from kafrob.attacks.fab import FABConfig, fab_attack
from kafrob.attacks.square import SquareConfig, square_attack

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass(frozen=True)
class AutoAttackConfig:
    eps: float = 8.0 / 255.0
    iterations: int = 100  # of APGD-CE, each APGD-T target and each FAB-T target
    targets: int = 9
    queries: int = 5000  # Square
    label_mode: str = "true"

    def __post_init__(self) -> None:
        check_label_mode(self.label_mode)

    def components(self) -> tuple:
        common = dict(eps=self.eps, label_mode=self.label_mode)
        return (APGDConfig(Loss.CE, iterations=self.iterations, **common),
                APGDConfig(Loss.DLR_TARGETED, iterations=self.iterations, targets=self.targets, **common),
                FABConfig(iterations=self.iterations, targets=self.targets, **common),
                SquareConfig(queries=self.queries, **common))


@dataclass(frozen=True)
class MaskingFlags:
    square_only: int  # images only the black-box component fooled
    bad_start_gradients: int  # images with an all-zero or non-finite input gradient at APGD-CE's start
    accuracy_by_eps: tuple[tuple[float, float], ...]  # (eps, robust accuracy): eps/2 and 2 eps by APGD-CE/4
    nondeterministic: bool

    @property
    def raised(self) -> list[str]:
        """One line per flag that fired."""
        out = []
        if self.square_only:
            out.append(f"Square fooled {self.square_only} image(s) the gradient attacks could not")
        if self.bad_start_gradients:
            out.append(f"{self.bad_start_gradients} image(s) have zero or non-finite input gradients")
        if rises_with_eps(self.accuracy_by_eps):
            out.append("robust accuracy does not decrease with eps: "
                       + ", ".join(f"{e * 255:g}/255: {a:.4f}" for e, a in sorted(self.accuracy_by_eps)))
        if self.nondeterministic:
            out.append("the forward pass is random: the same batch gave different logits")
        return out


@dataclass
class AutoAttackOutcome(Outcome):
    flags: MaskingFlags | None = field(default=None)


RUNNERS = (apgd_attack, apgd_attack, fab_attack, square_attack)  # one per COMPONENTS entry


def autoattack(model: keras.Model, x, y_attack, config: AutoAttackConfig = AutoAttackConfig(), *, seed: int = 0,
               ids: np.ndarray | None = None, jit_compile: bool | None = None) -> AutoAttackOutcome:
    """The standard composition on ``y_attack``; ``first`` is the component (index into COMPONENTS) that fooled
    an image, -1 where none did."""
    x = np.asarray(x, np.float32)
    y_attack = np.asarray(y_attack, np.int32)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    best, first = x.copy(), np.full(len(x), -1, np.int32)
    first[predict(model, tf.constant(x)).numpy() != y_attack] = 0  # wrong already: no attack needed
    bad_start = np.zeros(len(x), bool)
    for stage, (attack, sub) in enumerate(zip(RUNNERS, config.components(), strict=True)):
        todo = np.flatnonzero(first < 0)
        if not len(todo):
            break
        out = attack(model, x[todo], y_attack[todo], sub, seed=seed, ids=ids[todo], jit_compile=jit_compile)
        best[todo[out.fooled]] = out.x_adv[out.fooled]
        first[todo[out.fooled]] = stage
        if stage == 0:
            bad_start[todo] = out.bad_start_gradient
    linf = np.max(np.abs(best - x).reshape(len(x), -1), 1)
    if np.any(linf > config.eps + 1e-6) or best.min() < 0 or best.max() > 1:
        raise RuntimeError(f"AutoAttack left the eps-ball or the image box (max |delta| {linf.max() * 255:.4f}/255)")
    return AutoAttackOutcome(best, first, bad_start, flags=_flags(model, x, y_attack, config, first, bad_start,
                                                                   seed=seed, ids=ids, jit_compile=jit_compile))


def _flags(model, x, y_attack, config: AutoAttackConfig, first, bad_start, *, seed, ids, jit_compile) -> MaskingFlags:
    by_eps = [(config.eps, float(np.mean(first < 0)))]
    for eps in (config.eps / 2, 2 * config.eps):
        quick = APGDConfig(Loss.CE, eps=eps, iterations=max(config.iterations // 4, 1))
        by_eps.append((eps, float(np.mean(~apgd_attack(model, x, y_attack, quick, seed=seed, ids=ids,
                                                       jit_compile=jit_compile).fooled))))
    batch = tf.constant(x[: min(len(x), 64)])
    nondeterministic = not np.array_equal(logits(model, batch).numpy(), logits(model, batch).numpy())
    return MaskingFlags(square_only=int(np.sum(first == COMPONENTS.index("square"))),
                        bad_start_gradients=int(np.sum(bad_start)), accuracy_by_eps=tuple(by_eps),
                        nondeterministic=nondeterministic)
