"""Whole FBF training runs from a config: progress, atomic per-epoch checkpoints, resume, guards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kafrob import arithmetic, atomic
from kafrob.activations import check_activation
from kafrob.attacks.common import predict
from kafrob.attacks.pgd import PGDConfig, fgsm, pgd_attack
from kafrob.data import Cifar10, stratified_indices, to_float, train_dataset
from kafrob.fbf import FBFConfig, make_train_step
from kafrob.models import MODELS, build_model
from kafrob.schedules import OneCycle

PRECISIONS = ("float32", "mixed_float16")
CHECKPOINT = "checkpoint.npz"


class NonFiniteError(FloatingPointError):
    """Loss or gradients stopped being finite; the weights of the last finished epoch are on disk."""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    activation: str
    epochs: int
    min_lr: float
    max_lr: float
    batch_size: int = 128
    seed: int = 0
    augment: bool = False
    precision: str = "float32"
    train_per_class: int | None = None  # stratified subset for small runs; None = all 50,000
    decay_epochs: int = 0  # the thesis's optional decay phase after the cycle
    decay_lr: float = 0.01
    decay_every: int = 4
    momentum: float = 0.0  # SGD momentum; the thesis uses none
    fbf: FBFConfig = field(default_factory=FBFConfig)
    monitor_images: int = 256  # catastrophic-overfitting monitor: PGD-5 on a fixed training batch
    monitor_drop: float = 0.20  # flag: PGD accuracy this far below its best epoch so far
    monitor_gap: float = 0.25  # flag: PGD accuracy this far below the accuracy under one FGSM step
    early_stop: bool = False
    jit_compile: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        check_activation(self.activation)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["fbf"] = FBFConfig(**d.get("fbf", {}))
        return cls(**d)

    def digest(self) -> str:
        """Identifies the trained model: two configs with the same digest train the same weights."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    model: keras.Model
    history: list[dict]
    overfitting_epochs: list[int]
    stopped_early: bool


def _check_precision(precision: str, dry_run: bool = False) -> None:
    if precision == "mixed_float16" and not dry_run and not tf.config.list_physical_devices("GPU"):
        raise ValueError("precision='mixed_float16' needs a GPU (none is visible); use precision='float32'")


def build_for(config: TrainConfig, precision: str | None = None) -> keras.Model:
    """The untrained model of a config, under the config's (or the given) dtype policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision or config.precision)
    try:
        return build_model(config.model, config.activation)
    finally:
        keras.config.set_dtype_policy(previous)


def _schedule(config: TrainConfig, steps_per_epoch: int) -> OneCycle:
    return OneCycle(config.min_lr, config.max_lr, config.epochs * steps_per_epoch,
                    decay_lr=config.decay_lr if config.decay_epochs else None,
                    decay_every=config.decay_every * steps_per_epoch)


def make_optimizer(config: TrainConfig, learning_rate) -> keras.optimizers.Optimizer:
    """SGD with the config's momentum; under mixed precision wrapped in dynamic loss scaling, so float16 gradients
    neither underflow nor overflow (training and the LR range test alike)."""
    sgd = keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum)
    return keras.optimizers.LossScaleOptimizer(sgd) if config.precision == "mixed_float16" else sgd


def _save_checkpoint(path: Path, model, optimizer, meta: dict) -> None:
    arrays = {f"model_{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    atomic.write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def _load_checkpoint(path: Path, model, optimizer, digest: str) -> dict:
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            if meta["digest"] != digest:
                raise ValueError(f"{path} belongs to another config ({meta['digest']} != {digest}); "
                                 f"use a new run directory or resume=False")
            for prefix, variables in (("model", model.variables), ("optimizer", optimizer.variables)):
                for i, v in enumerate(variables):
                    v.assign(f[f"{prefix}_{i}"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    return meta


def _monitor_batch(data: Cifar10, train_idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = train_idx[:n]
    return to_float(data.x_train[idx]).numpy(), data.y_train[idx]


def overfitting(history: list[dict], record: dict, drop: float, gap: float) -> str | None:
    """Why the epoch ``record`` looks like catastrophic overfitting (Wong et al. 2020), or None.

    On the monitor batch, the PGD accuracy fell more than ``drop`` below its best earlier epoch (the FBF paper's
    rule), or it lies more than ``gap`` below the accuracy under one FGSM step of the same eps: the model resists the
    single step, not the eps-ball (a run that overfits before its PGD accuracy ever rose trips only this one).
    """
    pgd, one_step = record["monitor_pgd_accuracy"], record["monitor_fgsm_accuracy"]
    best = max((h["monitor_pgd_accuracy"] for h in history if "monitor_pgd_accuracy" in h), default=pgd)
    if best - pgd > drop:
        return f"PGD-5 accuracy on the monitor batch fell from {100 * best:.1f}% to {100 * pgd:.1f}%"
    if one_step - pgd > gap:
        return (f"PGD-5 accuracy on the monitor batch {100 * pgd:.1f}% is {100 * (one_step - pgd):.1f} points under "
                f"its accuracy under one FGSM step ({100 * one_step:.1f}%)")
    return None


def train(config: TrainConfig, data: Cifar10, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, on_step: Callable[[int, int], None] | None = None,
          strategy: tf.distribute.Strategy | None = None, max_steps: int | None = None) -> TrainResult:
    """Train ``config`` in ``run_dir``; with ``resume=True`` continue after the last finished epoch.

    A checkpoint is written atomically after every epoch, so a killed run loses at most one epoch.
    ``on_step(epoch, step)`` is called after every step (tests use it to interrupt a run).
    ``strategy`` (e.g. ``tf.distribute.MirroredStrategy()``) trains data-parallel: each global batch
    of ``batch_size`` is split across the replicas. It is not part of the config's digest, but the
    weights differ slightly from a single-device run (per-replica random starts and BatchNorm statistics).
    ``max_steps``: a dry run that stops after that many steps in all and changes nothing else (the schedule
    stays the config's); it may run mixed precision on a CPU (emulated float16), to prove the GPU code path.
    """
    _check_precision(config.precision, dry_run=max_steps is not None)
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True or use another directory")

    idx = (stratified_indices(data.y_train, config.train_per_class, config.seed)
           if config.train_per_class else np.arange(len(data.y_train)))
    x_train, y_train = data.x_train[idx], data.y_train[idx]
    steps_per_epoch = math.ceil(len(idx) / config.batch_size)
    if config.epochs * steps_per_epoch < 2:
        raise ValueError(f"{len(idx)} images x {config.epochs} epoch(s) at batch {config.batch_size} is "
                         f"{config.epochs * steps_per_epoch} step; the one-cycle schedule needs >= 2: use more "
                         f"epochs or images, or a smaller batch")
    total_epochs = config.epochs + config.decay_epochs

    keras.utils.set_random_seed(config.seed)
    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_for(config)
        optimizer = make_optimizer(config, _schedule(config, steps_per_epoch))
        optimizer.build(model.trainable_variables)
    step_fn = make_train_step(model, optimizer, config.fbf, jit_compile=config.jit_compile,
                              strategy=strategy if distributed else None)

    meta = {"digest": config.digest(), "config": config.to_dict(), "epoch": 0, "history": [],
            "overfitting_epochs": [], "stopped_early": False}
    if resume and ckpt.exists():
        meta = _load_checkpoint(ckpt, model, optimizer, config.digest())
    here = {**arithmetic.describe(), "cpu": arithmetic.cpu_model()}
    sittings = meta.setdefault("arithmetic", [])  # every sitting's arithmetic and its first epoch
    if not sittings or {k: v for k, v in sittings[-1].items() if k != "from_epoch"} != here:
        sittings.append({**here, "from_epoch": meta["epoch"] + 1})
    monitor_x, monitor_y = _monitor_batch(data, idx, config.monitor_images)
    monitor_cfg = PGDConfig(eps=config.fbf.eps, step=2.0 / 255.0, iterations=5, restarts=1)
    previous_weights = [v.numpy() for v in model.variables]

    for epoch in range(meta["epoch"], total_epochs):
        if meta["stopped_early"]:
            break
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "acc", "lr"],
                                  verbose=1 if progress else 0)
        if progress:
            print(f"{config.model}-{config.activation} epoch {epoch + 1}/{total_epochs}")
        start, losses, accs = time.time(), [], []
        ds = train_dataset(x_train, y_train, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                           augment=config.augment)
        if distributed:
            ds = strategy.experimental_distribute_dataset(ds)
        for step, (xb, yb) in enumerate(ds):
            global_step = epoch * steps_per_epoch + step
            out = step_fn(xb, yb, tf.constant([config.seed, global_step], tf.int64))
            if not bool(out["finite"]):
                raise NonFiniteError(
                    f"{config.model}-{config.activation}: loss or gradients became non-finite at epoch "
                    f"{epoch + 1}, step {step + 1} (loss={float(out['loss'])}); lower max_lr "
                    f"(now {config.max_lr}) or run the LR range test")
            losses.append(float(out["loss"]))
            accs.append(float(out["accuracy"]))
            lr = float(optimizer.learning_rate)
            bar.update(step + 1, [("loss", np.mean(losses)), ("acc", np.mean(accs)), ("lr", lr)])
            if on_step is not None:
                on_step(epoch, step)
            if max_steps is not None and global_step + 1 >= max_steps:
                meta["stopped_early"] = True  # the dry run ends with this epoch
                break
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                  "lr": float(optimizer.learning_rate), "seconds": time.time() - start}
        if config.monitor_images:
            jit = None if config.jit_compile else False
            _, fooled = pgd_attack(model, monitor_x, monitor_y, monitor_cfg, seed=config.seed, jit_compile=jit)
            record["monitor_pgd_accuracy"] = float(np.mean(~fooled))
            one_step = fgsm(model, monitor_x, monitor_y, config.fbf.eps, jit_compile=jit)
            record["monitor_fgsm_accuracy"] = float(np.mean(predict(model, one_step).numpy() == monitor_y))
            # catastrophic overfitting is adversarial training's failure: clean training is only monitored
            reason = (overfitting(meta["history"], record, config.monitor_drop, config.monitor_gap)
                      if config.fbf.adversarial else None)
            if reason:
                meta["overfitting_epochs"].append(epoch + 1)
                record["overfitting"] = reason
                print(f"WARNING: catastrophic overfitting at epoch {epoch + 1}: {reason}")
                if config.early_stop:
                    for v, w in zip(model.variables, previous_weights, strict=True):
                        v.assign(w)
                    meta["stopped_early"] = True
                    record["restored_previous_epoch"] = True
        meta["history"].append(record)
        meta["epoch"] = epoch + 1
        _save_checkpoint(ckpt, model, optimizer, meta)
        previous_weights = [v.numpy() for v in model.variables]
    atomic.write_json(run_dir / "history.json", meta)
    return TrainResult(model, meta["history"], meta["overfitting_epochs"], meta["stopped_early"])
