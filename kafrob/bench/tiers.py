"""The tiers: how much of the thesis protocol a run does, where its models come from, what it is held to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from kafrob.attacks.pgd import PGDConfig
from kafrob.bench.cases import CLEAN, EXPERIMENTS, Experiment
from kafrob.fbf import FBF_PREDICTED, FBFConfig
from kafrob.train import TrainConfig


class Source(StrEnum):
    TRAIN = "train"  # trained by the suite (cached per config and code version)
    THESIS_CHECKPOINT = "thesis-checkpoint"  # the thesis's released ResNet20 models


class Reference(StrEnum):
    SUITE = "suite"  # this suite's own stored measurements (reference_results/<tier>.json), within a measured spread
    THESIS = "thesis"  # the thesis tables
    FLOORS = "floors"  # this suite's stored measurements less ``Tier.floor_margin``: a re-trained model must reach them


@dataclass(frozen=True)
class Tier:
    """``None`` in a size means "as the thesis" (all data, all epochs)."""

    name: str
    source: Source
    reference: Reference
    attack: PGDConfig
    tolerance: float = 0.0  # points added to the sampling half-width (thesis references; README "Tolerances")
    floor_margin: float = 5.0  # points under the stored measurement a re-trained model may land (floor references)
    case_ids: tuple[str, ...] | None = None  # the cases it runs; None: every case its source has
    clean_baselines: tuple[str, ...] = ()  # cases also trained without adversarial examples: FBF must beat them
    train_per_class: int | None = None
    epochs: int | None = None  # None: each case's thesis epochs
    decay_epochs: int | None = None  # low-LR epochs after the one-cycle schedule; None: each case's (ResNet20: 20)
    decay_every: int | None = None  # epochs between halvings of the decay phase's LR; None: the thesis's 4
    overfitting_monitor_images: int = 256  # images the catastrophic-overfitting monitor attacks each epoch
    early_stop: bool = False  # on catastrophic overfitting keep the epoch before it and stop (the FBF paper's remedy)
    test_images: int | None = None  # PGD subset (stratified); None = all 10,000
    clean_images: int | None = None  # clean accuracy subset; None = all 10,000
    batch_size: int = 128
    precision: str = "float32"  # of training (kafrob.train.PRECISIONS); mixed_float16 needs a GPU
    train_xla: bool = True  # XLA-compile the training step
    attack_xla: bool | None = None  # XLA-compile the attack; None: where it pays (kafrob.attacks.pgd.default_jit)
    lr_bounds: tuple[float, float] | None = None  # None: each case's thesis bounds
    momentum: float = 0.0  # SGD momentum (the thesis: none)
    fbf: FBFConfig = FBFConfig()  # the single-step adversary (the thesis: FBF, a step of 1.25 eps)

    def cases(self, experiments: tuple[Experiment, ...] = EXPERIMENTS) -> tuple[Experiment, ...]:
        """The experiments this tier runs: the released checkpoints exist for ResNet20 only."""
        if self.case_ids is not None:
            return tuple(e for e in experiments if e.id in self.case_ids)
        if self.source is Source.THESIS_CHECKPOINT:
            return tuple(e for e in experiments if e.model == "resnet20")
        return tuple(experiments)

    def row_ids(self) -> tuple[str, ...]:
        """Its table's rows: the cases, then the clean-training baselines (``<case>-clean``)."""
        return tuple(e.id for e in self.cases()) + tuple(c + CLEAN for c in self.clean_baselines)

    def train_config(self, e: Experiment, seed: int = 0, adversarial: bool = True) -> TrainConfig:
        """``adversarial=False``: the same budget without adversarial examples (a clean-training baseline)."""
        min_lr, max_lr = self.lr_bounds or (e.min_lr, e.max_lr)
        return TrainConfig(
            model=e.model, activation=e.activation, epochs=self.epochs or e.epochs, min_lr=min_lr,
            max_lr=max_lr, batch_size=self.batch_size, seed=seed, augment=e.augment,
            train_per_class=self.train_per_class,
            decay_epochs=e.decay_epochs if self.decay_epochs is None else min(self.decay_epochs, e.decay_epochs),
            decay_every=self.decay_every or TrainConfig.decay_every,
            jit_compile=self.train_xla, monitor_images=self.overfitting_monitor_images, early_stop=self.early_stop,
            precision=self.precision, momentum=self.momentum,
            fbf=self.fbf if adversarial else dataclasses.replace(self.fbf, adversarial=False))


THESIS_PGD = PGDConfig(iterations=50, restarts=10, label_mode="predicted")  # the thesis's evaluation (ART's PGD)

TIERS: dict[str, Tier] = {
    # Minutes on a laptop CPU: regression references are this suite's own deterministic measurements.
    # Batch 32 (not 128): 4x more updates for the same arithmetic, so most models leave chance level.
    "smoke": Tier("smoke", Source.TRAIN, Reference.SUITE, PGDConfig(iterations=3, restarts=1), tolerance=3.0,
                  train_per_class=50, epochs=1, decay_epochs=0, overfitting_monitor_images=0, test_images=100,
                  clean_images=100, batch_size=32, train_xla=False, attack_xla=False, lr_bounds=(0.001, 0.05)),
    # The thesis protocol on all 50,000 training images compressed for 2 CPU cores: ResNet20's 80 + 20 epochs (one
    # cycle, then 0.01 halved every 4) scaled to 10 + 2 (halved after 1). Compressed, FBF overfitted ResNet20-ReLU
    # catastrophically by epoch 2-3 in three runs (the thesis's optimizer with peaks 0.8 and 0.2, the FBF paper's
    # momentum 0.9 and peak 0.2), and N-FGSM too; the overfitted models read the label from the FGSM step (label
    # leaking, docs/short_tier.md). The short tier therefore takes FBF's step against the model's own prediction
    # (FBF_PREDICTED, Kurakin et al.'s remedy) with the FBF paper's optimizer; the monitor keeps the epoch before
    # any overfitting.
    # Rows: the thesis's main comparison, and ReLU trained clean at the same budget, which FBF must beat by the
    # kept models' measured margin less 5 points. References: the models this suite trained and kept
    # (reference_results/short/, kafrob.bench.trained) as floors: a re-trained model may land up to 5 points under
    # them (the CPU's arithmetic changes the trajectory).
    "short": Tier("short", Source.TRAIN, Reference.FLOORS, THESIS_PGD, epochs=10, decay_epochs=2, decay_every=1,
                  test_images=1000, lr_bounds=(0.01, 0.2), momentum=0.9, fbf=FBF_PREDICTED, early_stop=True,
                  case_ids=("resnet20-relu", "resnet20-kaf", "resnet20-swish"), clean_baselines=("resnet20-relu",)),
    # The thesis protocol exactly (mixed precision with loss scaling, PGD against the predicted labels as the
    # thesis's ART evaluation; the true-label attack reported beside it); a GPU is needed.
    "full": Tier("full", Source.TRAIN, Reference.THESIS, THESIS_PGD, tolerance=3.0, precision="mixed_float16"),
    # The released ResNet20 models, judged from the stored evaluation (kafrob.bench.judge): clean on all 10,000,
    # PGD-50x10 in both label modes on the images the stored shards cover; a few re-computed per run.
    "checkpoints": Tier("checkpoints", Source.THESIS_CHECKPOINT, Reference.THESIS, THESIS_PGD),
}


def get_tier(name: str, source: str | None = None) -> Tier:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; known: {', '.join(TIERS)}")
    tier = TIERS[name]
    return dataclasses.replace(tier, source=Source(source)) if source else tier
