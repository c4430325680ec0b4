"""LR range test (Smith 2017) under FBF training, to choose the one-cycle bounds per model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kafrob.data import Cifar10, stratified_indices, train_dataset
from kafrob.fbf import make_train_step
from kafrob.train import TrainConfig, build_for, make_optimizer


@dataclass
class RangeTest:
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    min_lr: float
    max_lr: float
    diverged: bool


def suggest_bounds(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """max_lr: where the smoothed loss is lowest; min_lr: where it has made 10% of its way down.

    Both are sweep points, so they lie inside the sweep range, and min_lr < max_lr unless the loss
    never went down (then the sweep's first two points are returned).
    """
    best = int(np.argmin(smoothed))
    if best == 0:
        return float(lrs[0]), float(lrs[min(1, len(lrs) - 1)])
    target = smoothed[0] - 0.1 * (smoothed[0] - smoothed[best])
    first = int(np.argmax(smoothed[: best + 1] <= target))
    return float(lrs[min(first, best - 1)]), float(lrs[best])


def range_test(config: TrainConfig, data: Cifar10, *, start_lr: float = 1e-5, end_lr: float = 10.0,
               steps: int = 100, beta: float = 0.98, diverge_factor: float = 4.0,
               plot: str | Path | None = None) -> RangeTest:
    """Exponential sweep from start_lr to end_lr over ``steps`` FBF steps on a fresh model."""
    if not 0 < start_lr < end_lr:
        raise ValueError("need 0 < start_lr < end_lr")
    keras.utils.set_random_seed(config.seed)
    model = build_for(config)
    lr_var = tf.Variable(start_lr, dtype=tf.float32, trainable=False)
    optimizer = make_optimizer(config, lambda: lr_var)
    step_fn = make_train_step(model, optimizer, config.fbf, jit_compile=config.jit_compile)
    idx = (stratified_indices(data.y_train, config.train_per_class, config.seed)
           if config.train_per_class else np.arange(len(data.y_train)))
    factor = (end_lr / start_lr) ** (1.0 / max(steps - 1, 1))
    lrs, losses, smoothed = [], [], []
    avg, diverged, epoch = 0.0, False, 0
    while len(lrs) < steps and not diverged:
        ds = train_dataset(data.x_train[idx], data.y_train[idx], batch_size=config.batch_size,
                           seed=config.seed, epoch=epoch, augment=config.augment)
        for xb, yb in ds:
            i = len(lrs)
            lr = start_lr * factor**i
            lr_var.assign(lr)
            loss = float(step_fn(xb, yb, tf.constant([config.seed, i], tf.int64))["loss"])
            avg = beta * avg + (1 - beta) * (loss if math.isfinite(loss) else 1e30)
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(avg / (1 - beta ** (i + 1)))
            if not math.isfinite(loss) or smoothed[-1] > diverge_factor * min(smoothed):
                diverged = True
                break
            if len(lrs) >= steps:
                break
        epoch += 1
    lrs_a, sm_a = np.array(lrs), np.array(smoothed)
    lo, hi = suggest_bounds(lrs_a, sm_a)
    result = RangeTest(lrs_a, np.array(losses), sm_a, lo, hi, diverged)
    if plot is not None:
        save_plot(result, plot, title=f"{config.model}-{config.activation} LR range test (FBF)")
    return result


def save_plot(result: RangeTest, path: str | Path, title: str = "LR range test") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kafrob import atomic

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    for lr, name in ((result.min_lr, "min_lr"), (result.max_lr, "max_lr")):
        ax.axvline(lr, ls="--", color="k", lw=0.8)
        ax.annotate(f"{name}={lr:.2g}", (lr, ax.get_ylim()[1]), rotation=90, va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
