"""L-inf evasion attacks with one calling convention (foolbox's): ``attack(model, x, y, config, seed=, ids=)``.

The config's type says which attack runs and its ``label_mode`` what it attacks (the true labels, or the model's
clean predictions as the thesis's ART evaluation did); every attack returns an ``Outcome`` (per example: the
adversarial example and the first stage that changed the label). ``NAMED`` maps the names the CLI and the tiers
use to default configurations.

Modules: ``common`` (losses, margins, the signed step, the projection, random streams), one per attack
(``pgd``, ``apgd``, ``fab``, ``square``), ``autoattack`` (the standard composition and the gradient-masking
flags), ``art`` (the same attacks through ART, for cross-checks) and ``sanity`` (Carlini et al.'s checks).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kafrob.attacks.apgd import APGDConfig, Loss, apgd_attack
from kafrob.attacks.autoattack import AutoAttackConfig, autoattack
from kafrob.attacks.common import Outcome, attacked_labels
from kafrob.attacks.fab import FABConfig, fab_attack
from kafrob.attacks.pgd import PGDConfig, Reduction, pgd_restarts
from kafrob.attacks.square import SquareConfig, square_attack

AttackConfig = PGDConfig | APGDConfig | FABConfig | SquareConfig | AutoAttackConfig


def _pgd(model, x, y_attack, config: PGDConfig, *, seed, ids, jit_compile) -> Outcome:
    return Outcome(*pgd_restarts(model, x, y_attack, config, seed=seed, ids=ids, jit_compile=jit_compile))


RUNNERS = {PGDConfig: _pgd, APGDConfig: apgd_attack, FABConfig: fab_attack, SquareConfig: square_attack,
           AutoAttackConfig: autoattack}

NAMED: dict[str, AttackConfig] = {
    "pgd": PGDConfig(),
    "apgd-ce": APGDConfig(Loss.CE),
    "apgd-dlr": APGDConfig(Loss.DLR),
    "apgd-t": APGDConfig(Loss.DLR_TARGETED),
    "fab-t": FABConfig(),
    "square": SquareConfig(),
    "autoattack": AutoAttackConfig(),
}


def named(name: str, **changes) -> AttackConfig:
    """The default configuration of a named attack with ``changes`` (e.g. ``label_mode="predicted"``)."""
    if name not in NAMED:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(NAMED)}")
    return dataclasses.replace(NAMED[name], **changes)


def name_of(config: AttackConfig) -> str:
    """The registry name of a configuration's attack (``apgd-ce`` for APGD with the cross-entropy loss)."""
    for name, default in NAMED.items():
        if type(default) is type(config) and getattr(default, "loss", None) == getattr(config, "loss", None):
            return name
    raise ValueError(f"no registered attack for {config}")


def tag(config: AttackConfig) -> str:
    """A short name of the attack and its sizes for folder names: ``pgd50x10-eps8-step2``, ``pgd50x10-sum-eps8-step2``
    (the summed loss, kafrob.attacks.pgd.Reduction), ``autoattack-eps8``."""
    eps = f"eps{config.eps * 255:g}"
    if isinstance(config, PGDConfig):
        summed = "-sum" if config.reduction is Reduction.SUM else ""
        return f"pgd{config.iterations}x{config.restarts}{summed}-{eps}-step{config.step * 255:g}"
    name = name_of(config)
    default = NAMED[name]
    sizes = {k: v for k, v in dataclasses.asdict(config).items()
             if k not in ("eps", "label_mode") and v != getattr(default, k)}
    return "-".join([name, *(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sizes.items()), eps])


def attack(model: keras.Model, x, y, config: AttackConfig, *, seed: int = 0, ids: np.ndarray | None = None,
           jit_compile: bool | None = None) -> Outcome:
    """Run ``config``'s attack on a batch with true labels ``y``; ``fooled`` is relative to the attacked labels."""
    if type(config) not in RUNNERS:
        raise TypeError(f"not an attack configuration: {config!r}; known: {', '.join(NAMED)}")
    x = np.asarray(x, np.float32)
    return RUNNERS[type(config)](model, x, attacked_labels(model, x, y, config.label_mode), config, seed=seed,
                                 ids=ids, jit_compile=jit_compile)
