"""Every experiment of the thesis, as data: the cases a tier runs (``<model>-<activation>``)."""

from __future__ import annotations

from dataclasses import dataclass

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

# The suffix of a case trained without adversarial examples (``kafrob train --clean``): the baseline FBF must beat
# at the same budget (``resnet20-relu-clean``).
CLEAN = "-clean"


def case_id(e: Experiment, clean: bool = False) -> str:
    """A row's id: the experiment's, or its clean-training baseline's (``resnet20-relu-clean``)."""
    return e.id + (CLEAN if clean else "")


def experiment_of(case: str) -> Experiment:
    """The experiment a case id names, with or without the clean-training suffix."""
    return BY_ID[case.removesuffix(CLEAN)]


def row_label(case: str) -> str:
    """The activation column of a table row: ``relu``, or ``relu (clean training)``."""
    return experiment_of(case).activation + (" (clean training)" if case.endswith(CLEAN) else "")

