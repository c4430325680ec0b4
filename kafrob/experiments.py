"""Every experiment of the thesis, as data, and the tiers at which the suite runs them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from kafrob.pgd import PGDConfig
from kafrob.train import TrainConfig

# Released-notebook bounds for ResNet20 kaf_relu; the thesis does not tabulate the other ResNet20 bounds,
# so every ResNet20 row uses them until an LR range test (`kafrob lr-find`) says otherwise.
RESNET20_LR = (0.01, 0.8)


@dataclass(frozen=True)
class Experiment:
    model: str
    activation: str
    epochs: int
    min_lr: float
    max_lr: float
    augment: bool
    thesis_accuracy: float  # percent, thesis tables
    thesis_robustness: float
    decay_epochs: int = 0

    @property
    def id(self) -> str:
        return f"{self.model}-{self.activation}"


def _vgg(act, lr, acc, rob):
    return Experiment("vgg", act, 60, lr[0], lr[1], False, acc, rob)


def _resnet(act, acc, rob):
    return Experiment("resnet20", act, 80, *RESNET20_LR, True, acc, rob, decay_epochs=20)


EXPERIMENTS: tuple[Experiment, ...] = (
    _vgg("relu", (0.0001, 0.08), 78.10, 45.41),
    _vgg("elu", (0.0001, 0.1), 73.99, 45.49),
    _vgg("kaf", (0.01, 1.0), 77.93, 46.80),
    _vgg("kaf_elu", (0.0001, 0.1), 74.93, 45.40),
    _vgg("swish", (0.0001, 0.3), 76.99, 47.73),
    _vgg("kaf_swish", (0.0001, 0.8), 78.85, 46.33),
    _vgg("kaf_free", (0.01, 2.0), 77.54, 46.20),
    _resnet("relu", 77.52, 50.17),
    _resnet("elu", 75.42, 51.69),
    _resnet("kaf", 78.08, 52.23),
    _resnet("kaf_relu", 79.65, 51.44),
    _resnet("kaf_elu", 78.69, 52.76),
    _resnet("swish", 78.68, 53.88),
    _resnet("kaf_swish", 79.21, 52.10),
    _resnet("kaf_free", 78.88, 52.07),
)
BY_ID = {e.id: e for e in EXPERIMENTS}


@dataclass(frozen=True)
class Tier:
    """How much of the protocol a run does. ``None`` means "as the thesis" (all data, all epochs)."""

    name: str
    source: str  # "train" or "thesis-checkpoint"
    train_per_class: int | None
    epochs: int | None
    test_images: int | None  # PGD subset (stratified); None = all 10,000
    clean_images: int | None  # clean accuracy subset; None = all 10,000
    attack: PGDConfig
    reference: str  # "suite": our own stored measurements; "thesis": the thesis tables
    tolerance: float  # percentage points, see README "Tolerances"
    batch_size: int = 128
    jit_compile: bool = True
    lr_bounds: tuple[float, float] | None = None  # None: each row's thesis bounds (found for full runs)

    def train_config(self, e: Experiment, seed: int = 0) -> TrainConfig:
        min_lr, max_lr = self.lr_bounds or (e.min_lr, e.max_lr)
        return TrainConfig(
            model=e.model, activation=e.activation, epochs=self.epochs or e.epochs, min_lr=min_lr,
            max_lr=max_lr, batch_size=self.batch_size, seed=seed, augment=e.augment,
            train_per_class=self.train_per_class, decay_epochs=0 if self.epochs else e.decay_epochs,
            jit_compile=self.jit_compile, monitor_images=0 if self.epochs else 256)


TIERS: dict[str, Tier] = {
    # Minutes on a laptop CPU: regression references are this suite's own deterministic measurements.
    # Batch 32 (not 128): 4x more updates for the same arithmetic, so most models leave chance level.
    "smoke": Tier("smoke", "train", train_per_class=50, epochs=1, test_images=100, clean_images=100,
                  attack=PGDConfig(iterations=3, restarts=1), reference="suite", tolerance=3.0,
                  batch_size=32, jit_compile=False, lr_bounds=(0.001, 0.05)),
    # The thesis protocol exactly; a GPU is needed.
    "full": Tier("full", "train", None, None, None, None, PGDConfig(iterations=50, restarts=10),
                 reference="thesis", tolerance=3.0),
    # The released ResNet20 models, judged from the stored evaluation (kafrob.released): clean on all 10,000,
    # PGD-50x10 in both label modes on the images the stored shards cover; a few re-computed per run.
    "checkpoints": Tier("checkpoints", "thesis-checkpoint", None, None, test_images=None, clean_images=None,
                        attack=PGDConfig(iterations=50, restarts=10, label_mode="predicted"),
                        reference="thesis", tolerance=0.0),
}


def get_tier(name: str, source: str | None = None) -> Tier:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; known: {', '.join(TIERS)}")
    tier = TIERS[name]
    return replace(tier, source=source) if source else tier
