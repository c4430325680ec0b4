"""The tiers: how much of the thesis protocol a run does, where its models come from, what it is held to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from kafrob.attacks.pgd import PGDConfig
from kafrob.bench.cases import EXPERIMENTS, Experiment
from kafrob.train import TrainConfig


class Source(StrEnum):
    TRAIN = "train"  # trained by the suite (cached per config and code version)
    THESIS_CHECKPOINT = "thesis-checkpoint"  # the thesis's released ResNet20 models


class Reference(StrEnum):
    SUITE = "suite"  # this suite's own stored measurements (reference_results/<tier>.json)
    THESIS = "thesis"  # the thesis tables


@dataclass(frozen=True)
class Tier:
    """``None`` in a size means "as the thesis" (all data, all epochs)."""

    name: str
    source: Source
    reference: Reference
    attack: PGDConfig
    tolerance: float = 0.0  # points added to the sampling half-width (thesis references; README "Tolerances")
    train_per_class: int | None = None
    epochs: int | None = None  # None: each case's thesis epochs
    decay_epochs: int | None = None  # low-LR epochs after the one-cycle schedule; None: each case's (ResNet20: 20)
    decay_every: int | None = None  # epochs between halvings of the decay phase's LR; None: the thesis's 4
    overfitting_monitor_images: int = 256  # images the catastrophic-overfitting monitor attacks each epoch
    test_images: int | None = None  # PGD subset (stratified); None = all 10,000
    clean_images: int | None = None  # clean accuracy subset; None = all 10,000
    batch_size: int = 128
    precision: str = "float32"  # of training (kafrob.train.PRECISIONS); mixed_float16 needs a GPU
    train_xla: bool = True  # XLA-compile the training step
    attack_xla: bool | None = None  # XLA-compile the attack; None: where it pays (kafrob.attacks.pgd.default_jit)
    lr_bounds: tuple[float, float] | None = None  # None: each case's thesis bounds

    def cases(self, experiments: tuple[Experiment, ...] = EXPERIMENTS) -> tuple[Experiment, ...]:
        """The experiments this tier runs: the released checkpoints exist for ResNet20 only."""
        if self.source is Source.THESIS_CHECKPOINT:
            return tuple(e for e in experiments if e.model == "resnet20")
        return tuple(experiments)

    def train_config(self, e: Experiment, seed: int = 0) -> TrainConfig:
        min_lr, max_lr = self.lr_bounds or (e.min_lr, e.max_lr)
        return TrainConfig(
            model=e.model, activation=e.activation, epochs=self.epochs or e.epochs, min_lr=min_lr,
            max_lr=max_lr, batch_size=self.batch_size, seed=seed, augment=e.augment,
            train_per_class=self.train_per_class,
            decay_epochs=e.decay_epochs if self.decay_epochs is None else min(self.decay_epochs, e.decay_epochs),
            decay_every=self.decay_every or TrainConfig.decay_every,
            jit_compile=self.train_xla, monitor_images=self.overfitting_monitor_images, precision=self.precision)


TIERS: dict[str, Tier] = {
    # Minutes on a laptop CPU: regression references are this suite's own deterministic measurements.
    # Batch 32 (not 128): 4x more updates for the same arithmetic, so most models leave chance level.
    "smoke": Tier("smoke", Source.TRAIN, Reference.SUITE, PGDConfig(iterations=3, restarts=1), tolerance=3.0,
                  train_per_class=50, epochs=1, decay_epochs=0, overfitting_monitor_images=0, test_images=100,
                  clean_images=100, batch_size=32, train_xla=False, attack_xla=False, lr_bounds=(0.001, 0.05)),
    # The thesis protocol on all 50,000 training images compressed for 2 CPU cores: ResNet20's 80 + 20 epochs (one
    # cycle, then 0.01 halved every 4) scaled to 10 + 2 (halved after 1). A ResNet20-ReLU epoch took 725-837 s
    # with the cores shared with other jobs (Intel Xeon, 2026-11-26): about 2.5 hours per row, resumable per epoch.
    # References are this suite's stored models and measurements (reference_results/short/).
    "short": Tier("short", Source.TRAIN, Reference.SUITE, PGDConfig(iterations=50, restarts=10, label_mode="predicted"),
                  epochs=10, decay_epochs=2, decay_every=1, test_images=1000),
    # The thesis protocol exactly (mixed precision with loss scaling, PGD against the predicted labels as the
    # thesis's ART evaluation; the true-label attack reported beside it); a GPU is needed.
    "full": Tier("full", Source.TRAIN, Reference.THESIS, PGDConfig(iterations=50, restarts=10, label_mode="predicted"),
                 tolerance=3.0, precision="mixed_float16"),
    # The released ResNet20 models, judged from the stored evaluation (kafrob.bench.judge): clean on all 10,000,
    # PGD-50x10 in both label modes on the images the stored shards cover; a few re-computed per run.
    "checkpoints": Tier("checkpoints", Source.THESIS_CHECKPOINT, Reference.THESIS,
                        PGDConfig(iterations=50, restarts=10, label_mode="predicted")),
}


def get_tier(name: str, source: str | None = None) -> Tier:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; known: {', '.join(TIERS)}")
    tier = TIERS[name]
    return dataclasses.replace(tier, source=Source(source)) if source else tier
