"""The gap between two attacks on the same images, per example: how much robustness a weaker attack (the thesis's
PGD-50x10) overstates against a stronger one (AutoAttack), from their merged shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from kafrob.attacks import AttackConfig, name_of
from kafrob.attacks.pgd import PGDConfig, Reduction
from kafrob.bench.shards import SHARD_IMAGES, Merged, ShardError, ShardSpec, merge
from kafrob.stats import mcnemar_exact, wilson_interval


@dataclass(frozen=True)
class Gap:
    model: str
    label_mode: str
    n: int  # images both attacks cover
    weaker_robust: float  # accuracy under the weaker attack, against the true labels
    stronger_robust: float
    only_stronger_fooled: int  # robust under the weaker attack, not under the stronger one
    only_weaker_fooled: int  # the other way round (a sign that the stronger attack is not stronger here)
    masking: tuple[str, ...] | None  # the stronger attack's gradient-masking flags that fired (None: not computed)

    @property
    def points(self) -> float:
        """Percentage points the weaker attack overstates robust accuracy by."""
        return 100 * (self.weaker_robust - self.stronger_robust)

    @property
    def mcnemar_p(self) -> float:
        """Exact McNemar p of the two attacks' per-example results: is one of them stronger on these images?"""
        return mcnemar_exact(self.only_stronger_fooled, self.only_weaker_fooled)


def attack_gap(weaker: Merged, stronger: Merged) -> Gap:
    """Compare on the images both cover (their shards need not be the same ones)."""
    if weaker.spec["model"] != stronger.spec["model"]:
        raise ValueError(f"different models: {weaker.spec['model']} vs {stronger.spec['model']}")
    common, iw, is_ = np.intersect1d(weaker.arrays["index"], stronger.arrays["index"], return_indices=True)
    if not len(common):
        raise ValueError(f"{weaker.spec['model']}: the two evaluations share no image")
    robust_w = weaker.robust_correct[iw]
    robust_s = stronger.robust_correct[is_]
    batches = stronger.header.get("masking") or None  # only AutoAttack computes the flags
    masking = None if batches is None else tuple(line for batch in batches for line in batch.get("raised", []))
    return Gap(weaker.spec["model"], stronger.spec["attack"]["label_mode"], len(common), float(robust_w.mean()),
               float(robust_s.mean()), int(np.sum(robust_w & ~robust_s)), int(np.sum(~robust_w & robust_s)), masking)


def store_gaps(models: Iterable[str], weaker: AttackConfig, stronger: AttackConfig, root: Path,
               label_modes: Iterable[str], *, seed: int = 0,
               shard_images: int = SHARD_IMAGES) -> tuple[list[Gap], list[str]]:
    """``attack_gap`` per model and label mode from the stores under ``root``, and a line per one left out (a model
    whose evaluation by either attack has not begun)."""
    gaps, left_out = [], []
    for model in models:
        for mode in label_modes:
            pair = [ShardSpec(model, dataclasses.replace(a, label_mode=mode), seed, shard_images)
                    for a in (weaker, stronger)]
            try:
                gaps.append(attack_gap(*(merge(spec, root) for spec in pair)))
            except ShardError as exc:
                left_out.append(str(exc))
    return gaps, left_out


def attack_name(config: AttackConfig) -> str:
    """How a gap table names an attack: ``PGD-50x10, batch-mean loss`` (or ``summed loss``), else its registry name."""
    if isinstance(config, PGDConfig):
        loss = "summed" if config.reduction is Reduction.SUM else "batch-mean"
        return f"PGD-{config.iterations}x{config.restarts}, {loss} loss"
    return name_of(config)


def gap_table(gaps: list[Gap], weaker: str, stronger: str) -> str:
    def ci(accuracy: float, n: int) -> str:
        return "[{:.1f}, {:.1f}]".format(*(100 * v for v in wilson_interval(round(accuracy * n), n)))

    rows = []
    for g in gaps:
        flags = "not computed" if g.masking is None else "; ".join(g.masking) or "none"
        rows.append([g.model, g.label_mode, g.n, f"{100 * g.weaker_robust:.2f} {ci(g.weaker_robust, g.n)}",
                     f"{100 * g.stronger_robust:.2f} {ci(g.stronger_robust, g.n)}", f"{g.points:+.2f}",
                     g.only_stronger_fooled, g.only_weaker_fooled, f"{g.mcnemar_p:.2g}", flags])
    headers = ["model", "labels", "n", f"{weaker} robust % [95% CI]", f"{stronger} robust % [95% CI]",
               "gap (points)", f"fooled by {stronger} only", f"fooled by {weaker} only", "McNemar p", "masking flags"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
