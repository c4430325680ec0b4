"""Learning-rate schedules of the thesis, as serialisable Keras schedules (tensorflow-addons is gone)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kafrob")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular one cycle, per step: min_lr at step 0, max_lr at cycle_steps/2, min_lr at cycle_steps.

    After the cycle an optional decay phase (the thesis's ResNet20 notebook: 20 epochs starting at
    0.01, halved every 4 epochs): ``decay_lr * decay_factor ** ((step - cycle_steps) // decay_every)``.
    Without a decay phase the rate stays at min_lr after the cycle.
    """

    def __init__(self, min_lr: float, max_lr: float, cycle_steps: int, decay_lr: float | None = None,
                 decay_every: int = 1, decay_factor: float = 0.5) -> None:
        if not 0 < min_lr <= max_lr:
            raise ValueError(f"need 0 < min_lr <= max_lr, got ({min_lr}, {max_lr})")
        if cycle_steps < 2:
            raise ValueError(f"cycle_steps must be >= 2, got {cycle_steps}")
        if decay_every < 1:
            raise ValueError(f"decay_every must be >= 1, got {decay_every}")
        self.min_lr, self.max_lr, self.cycle_steps = float(min_lr), float(max_lr), int(cycle_steps)
        self.decay_lr = None if decay_lr is None else float(decay_lr)
        self.decay_every, self.decay_factor = int(decay_every), float(decay_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        half = self.cycle_steps / 2.0
        triangle = 1.0 - ops.abs(ops.minimum(step, float(self.cycle_steps)) / half - 1.0)
        lr = self.min_lr + (self.max_lr - self.min_lr) * triangle
        if self.decay_lr is None:
            return lr
        drops = ops.floor(ops.maximum(step - self.cycle_steps, 0.0) / self.decay_every)
        decayed = self.decay_lr * ops.power(self.decay_factor, drops)
        return ops.where(step >= self.cycle_steps, decayed, lr)

    def get_config(self) -> dict:
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "cycle_steps": self.cycle_steps,
                "decay_lr": self.decay_lr, "decay_every": self.decay_every, "decay_factor": self.decay_factor}
