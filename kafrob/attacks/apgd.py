"""Auto-PGD (Croce & Hein, ICML 2020, Algorithm 1), L-inf, compiled: PGD with momentum whose step size halves
where progress stalls, restarting from the best point.

The step starts at 2*eps. At the checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) an example's step halves, and it continues from its best
point, if fewer than rho = 75% of the steps since the last checkpoint raised its loss, or if its step was not
halved at the last checkpoint and its best loss has not improved since. Losses: cross-entropy, the DLR loss,
and the targeted DLR loss against the 2nd..(targets+1)-th highest clean logits (APGD-T).

One detail differs from the reference code: the first window compares the first step's loss with the loss at
the starting point (the reference compares it with an unset zero).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from enum import StrEnum

import keras
import numpy as np
import tensorflow as tf

from kafrob.attacks.common import (
    Outcome,
    bad_gradients,
    check_label_mode,
    cross_entropy_each,
    dlr_loss,
    dlr_targeted_loss,
    logits,
    predict,
    project,
    random_starts,
    signed_step,
)

STREAM = 1  # random_starts stream of APGD's starting points (PGD's is 0)


class Loss(StrEnum):
    CE = "ce"
    DLR = "dlr"
    DLR_TARGETED = "dlr-t"


@dataclass(frozen=True)
class APGDConfig:
    loss: Loss = Loss.CE
    eps: float = 8.0 / 255.0
    iterations: int = 100
    restarts: int = 1  # per target with the targeted loss
    targets: int = 9  # targeted loss only: the classes of the 2nd..(targets+1)-th highest clean logits
    rho: float = 0.75
    momentum: float = 0.75
    label_mode: str = "true"

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", Loss(self.loss))
        check_label_mode(self.label_mode)
        if self.eps < 0 or self.iterations < 1 or self.restarts < 1 or not 1 <= self.targets <= 9:
            raise ValueError(f"invalid APGD settings {self}")


def checkpoints(iterations: int) -> list[int]:
    """The 0-based iterations after which the step size is checked (w_j - 1)."""
    window, decrease, smallest = max(int(0.22 * iterations), 1), max(int(0.03 * iterations), 1), \
        max(int(0.06 * iterations), 1)
    out, i = [], window - 1
    while i < iterations:
        out.append(i)
        window = max(window - decrease, smallest)
        i += window
    return out


def _per_example_loss(loss: Loss):
    if loss is Loss.CE:
        return lambda z, y, t: cross_entropy_each(y, z)
    if loss is Loss.DLR:
        return lambda z, y, t: dlr_loss(z, y)
    return dlr_targeted_loss


def apgd_run(model: keras.Model, x, y, targets, start, *, eps, loss: Loss, iterations: int, rho: float = 0.75,
             momentum: float = 0.75):
    """One APGD run from ``x + start`` (``start``: uniform in [-1, 1], scaled so its largest entry is eps).

    Returns (x_adv, fooled, bad_start): per example the last iterate that changed the label (else the last
    iterate), whether any did, and whether the input gradient at the start was all zero or not finite."""
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    per_example = _per_example_loss(loss)
    checks = np.zeros(iterations, bool)
    checks[checkpoints(iterations)] = True
    windows = np.diff([-1, *checkpoints(iterations)])
    window_at = np.zeros(iterations, np.float32)
    window_at[checkpoints(iterations)] = windows
    checks, window_at = tf.constant(checks), tf.constant(window_at)

    def loss_and_grad(x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            z = logits(model, x_adv)
            each = per_example(z, y, targets)
            total = tf.reduce_sum(each)  # examples are independent: its gradient is each one's
        return each, tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO), z

    scale = tf.reduce_max(tf.abs(start), axis=[1, 2, 3], keepdims=True)
    x_adv = tf.clip_by_value(x + eps * start / tf.maximum(scale, 1e-12), 0.0, 1.0)
    loss_now, grad, z = loss_and_grad(x_adv)
    bad_start = bad_gradients(grad)
    fooled = tf.argmax(z, -1, output_type=tf.int32) != y
    x_out, x_best, grad_best, loss_best = x_adv, x_adv, grad, loss_now
    step = tf.fill(tf.shape(loss_now), 2.0 * eps)
    x_prev, loss_prev = x_adv, loss_now
    increases = tf.zeros_like(loss_now)
    loss_best_at_check, reduced_at_check = loss_best, tf.ones_like(fooled)
    for i in tf.range(iterations):
        a = tf.where(i > 0, momentum, 1.0)
        z1 = signed_step(x_adv, grad, x, eps, step)
        x_new = project(x_adv + a * (z1 - x_adv) + (1.0 - a) * (x_adv - x_prev), x, eps)
        x_prev, x_adv = x_adv, x_new
        loss_now, grad, z = loss_and_grad(x_adv)
        wrong = tf.argmax(z, -1, output_type=tf.int32) != y
        x_out = tf.where(wrong[:, None, None, None], x_adv, x_out)
        fooled |= wrong
        increases += tf.cast(loss_now > loss_prev, tf.float32)
        loss_prev = loss_now
        better = loss_now > loss_best
        x_best = tf.where(better[:, None, None, None], x_adv, x_best)
        grad_best = tf.where(better[:, None, None, None], grad, grad_best)
        loss_best = tf.where(better, loss_now, loss_best)
        check = checks[i]
        halve = check & ((increases <= window_at[i] * rho) | (~reduced_at_check & (loss_best_at_check >= loss_best)))
        reduced_at_check = tf.where(check, halve, reduced_at_check)
        loss_best_at_check = tf.where(check, loss_best, loss_best_at_check)
        step = tf.where(halve, step / 2.0, step)
        x_adv = tf.where(halve[:, None, None, None], x_best, x_adv)
        grad = tf.where(halve[:, None, None, None], grad_best, grad)
        increases = tf.where(check, tf.zeros_like(increases), increases)
    x_out = tf.where(fooled[:, None, None, None], x_out, x_adv)
    return x_out, fooled, bad_start


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_run(model: keras.Model, config: APGDConfig, jit_compile: bool):
    key = (config.loss, config.iterations, config.rho, config.momentum, jit_compile)
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        def run(x, y, targets, start, eps):
            return apgd_run(model, x, y, targets, start, eps=eps, loss=config.loss, iterations=config.iterations,
                            rho=config.rho, momentum=config.momentum)

        per_model[key] = tf.function(run, jit_compile=jit_compile, reduce_retracing=True)
    return per_model[key]


def ranked_targets(model: keras.Model, x: np.ndarray, y_attack: np.ndarray, count: int) -> np.ndarray:
    """[count, n]: the classes of the 2nd..(count+1)-th highest clean logits, skipping the attacked label."""
    z = logits(model, tf.constant(x)).numpy()
    order = np.argsort(-z, axis=1, kind="stable")
    others = np.array([row[row != label] for row, label in zip(order, y_attack, strict=True)])
    return others[:, :count].T


def apgd_attack(model: keras.Model, x, y_attack, config: APGDConfig = APGDConfig(), *, seed: int = 0,
                ids: np.ndarray | None = None, jit_compile: bool | None = None) -> Outcome:
    """APGD on ``y_attack``: every stage (restart, or target x restart) attacks only the images no earlier stage
    fooled. ``first``: the first stage that changed the label."""
    from kafrob.attacks.pgd import default_jit

    run = _compiled_run(model, config, default_jit() if jit_compile is None else jit_compile)
    x = np.asarray(x, np.float32)
    y_attack = np.asarray(y_attack, np.int32)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    best, first = x.copy(), np.full(len(x), -1, np.int32)
    bad_start = np.zeros(len(x), bool)
    targets = (ranked_targets(model, x, y_attack, config.targets) if config.loss is Loss.DLR_TARGETED
               else np.repeat(y_attack[None], 1, 0))
    stage = 0
    for target in targets:
        for _ in range(config.restarts):
            todo = np.flatnonzero(first < 0)
            if not len(todo):
                break
            start = random_starts(ids[todo], seed, stage, x.shape[1:], 1.0, stream=STREAM)
            x_adv, _, bad = run(tf.constant(x[todo]), tf.constant(y_attack[todo]), tf.constant(target[todo]),
                                tf.constant(start), tf.constant(config.eps, tf.float32))
            x_adv = x_adv.numpy()
            wrong = predict(model, x_adv).numpy() != y_attack[todo]
            best[todo] = x_adv
            first[todo[wrong]] = stage
            bad_start[todo] |= bad.numpy()
            stage += 1
    return Outcome(best, first, bad_start)
