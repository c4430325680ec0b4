"""Clean and robust accuracy with intervals, timings and per-example results that can be compared."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kafrob import atomic
from kafrob.attacks import AttackConfig, attack
from kafrob.attacks.common import predict
from kafrob.attacks.pgd import PGDConfig
from kafrob.data import Cifar10, stratified_indices, to_float
from kafrob.stats import wilson_interval

# attack(model, x, y, config, seed) -> x_adv; the default runs the config's attack (kafrob.attacks),
# kafrob.attacks.art adds ART's.
PER_EXAMPLE = ("clean_indices", "clean_correct", "indices", "robust_correct")
Attack = Callable[[keras.Model, np.ndarray, np.ndarray, AttackConfig, int], np.ndarray]


@dataclass
class EvalResult:
    n: int
    clean_accuracy: float
    robust_accuracy: float
    clean_interval: tuple[float, float]
    robust_interval: tuple[float, float]
    seconds: float
    images_per_second: float
    attack: dict
    backend: str
    clean_indices: np.ndarray
    clean_correct: np.ndarray
    indices: np.ndarray
    robust_correct: np.ndarray

    def summary(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in PER_EXAMPLE}
        d["clean_interval"], d["robust_interval"] = list(self.clean_interval), list(self.robust_interval)
        return d

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """``stem.json`` (summary) and ``stem.npz`` (per-example), both written atomically."""
        stem = Path(stem)
        npz = atomic.write_npz(stem.with_suffix(".npz"), **{k: getattr(self, k) for k in PER_EXAMPLE})
        return atomic.write_json(stem.with_suffix(".json"), self.summary()), npz


def test_indices(data: Cifar10, n: int | None, seed: int = 0) -> np.ndarray:
    """All test images (n None or 10,000), else a seeded stratified subset of n (a multiple of 10)."""
    if n is None or n >= len(data.y_test):
        return np.arange(len(data.y_test))
    if n % 10:
        raise ValueError(f"a stratified subset needs a multiple of 10 images, got {n}")
    return stratified_indices(data.y_test, n // 10, seed)


def clean_correct(model: keras.Model, data: Cifar10, idx: np.ndarray | None = None, batch_size: int = 256):
    """Per test image (all, or ``idx``): is the model's clean prediction right?"""
    idx = np.arange(len(data.y_test)) if idx is None else idx
    return np.concatenate([predict(model, to_float(data.x_test[idx[i:i + batch_size]])).numpy()
                           == data.y_test[idx[i:i + batch_size]] for i in range(0, len(idx), batch_size)])


def our_attack(model, x, y, config: AttackConfig, seed: int, jit_compile: bool | None = None) -> np.ndarray:
    return attack(model, x, y, config, seed=seed, jit_compile=jit_compile).x_adv


def evaluate(model: keras.Model, data: Cifar10, *, n: int | None = None, attack: AttackConfig = PGDConfig(),
             batch_size: int = 256, seed: int = 0, backend: str = "kafrob", run_attack: Attack = our_attack,
             clean_n: int | None = None, progress: bool = True) -> EvalResult:
    """Clean accuracy on ``clean_n`` test images (default: the same as n) and robust accuracy under ``attack``
    (any kafrob.attacks configuration) on ``n``."""
    idx = test_indices(data, n, seed)
    clean_idx = idx if clean_n is None else test_indices(data, clean_n, seed)
    clean = clean_correct(model, data, clean_idx, batch_size)
    batches = range(0, len(idx), batch_size)
    bar = keras.utils.Progbar(len(idx), verbose=1 if progress else 0, unit_name="image")
    start = time.time()
    robust = []
    for i in batches:
        x = to_float(data.x_test[idx[i:i + batch_size]]).numpy()
        y = data.y_test[idx[i:i + batch_size]]
        x_adv = run_attack(model, x, y, attack, seed + i)
        robust.append(predict(model, x_adv).numpy() == y)
        bar.add(len(y), [("robust", float(np.mean(np.concatenate(robust))))])
    seconds = time.time() - start
    robust_correct = np.concatenate(robust)
    k_clean, k_rob = int(clean.sum()), int(robust_correct.sum())
    return EvalResult(
        n=len(idx), clean_accuracy=k_clean / len(clean_idx), robust_accuracy=k_rob / len(idx),
        clean_interval=wilson_interval(k_clean, len(clean_idx)), robust_interval=wilson_interval(k_rob, len(idx)),
        seconds=seconds, images_per_second=len(idx) / max(seconds, 1e-9), attack=dataclasses.asdict(attack),
        backend=backend, clean_indices=clean_idx, clean_correct=clean, indices=idx,
        robust_correct=robust_correct)


def agreement(a: EvalResult, b: EvalResult) -> float:
    """Fraction of the common test images on which two evaluations agree about robustness."""
    common, ia, ib = np.intersect1d(a.indices, b.indices, return_indices=True)
    if not len(common):
        raise ValueError("the two evaluations share no test image")
    return float(np.mean(a.robust_correct[ia] == b.robust_correct[ib]))
