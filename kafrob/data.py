"""CIFAR-10: locating, validating and loading the original python-format batches, and tf.data pipelines.

Search order: an explicit ``data_dir``, ``$KAFROB_DATA_DIR``, the Keras cache (~/.keras/datasets), then
Keras' own download. A folder given explicitly (argument or variable) must hold the data: we never fall
back to another copy behind the user's back. Each location may hold ``cifar-10-batches-py/`` (or be that
folder) or the original ``cifar-10-python.tar.gz``.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

ENV_VAR = "KAFROB_DATA_DIR"
BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(RuntimeError):
    """CIFAR-10 is missing or broken; the message says what to do."""


@dataclass(frozen=True)
class Cifar10:
    """Images as uint8 (N, 32, 32, 3) (scaled to [0, 1] in the pipelines), labels int32 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def _decode_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except Exception as exc:  # truncated pickles raise several different exception types
        raise DataError(f"CIFAR-10 batch {name} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                        f"delete it and download CIFAR-10 again") from exc
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-10 batch {name}: expected uint8 data of shape (N, 3072), got {data.dtype} "
                        f"{data.shape}; the file is not CIFAR-10's python format")
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 batch {name}: {data.shape[0]} images but {labels.shape} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"CIFAR-10 batch {name}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _read_batches(read, names) -> tuple[np.ndarray, np.ndarray]:
    parts = [_decode_batch(read(n), n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_folder(folder: Path) -> Cifar10:
    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 batch file {path} is missing; point {ENV_VAR} at a complete "
                            f"{BATCHES_DIR}/ folder")
        return path.read_bytes()

    return Cifar10(*_read_batches(read, TRAIN_FILES), *_read_batches(read, (TEST_FILE,)), source=str(folder))


def _load_archive(archive: Path) -> Cifar10:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            def read(name: str) -> bytes:
                try:
                    member = tar.extractfile(f"{BATCHES_DIR}/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{archive} has no {BATCHES_DIR}/{name}; it is not CIFAR-10's python archive")
                return member.read()

            return Cifar10(*_read_batches(read, TRAIN_FILES), *_read_batches(read, (TEST_FILE,)),
                           source=str(archive))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive} is corrupt or truncated ({exc}); delete it and download again") from exc


def _find(location: Path) -> Path | None:
    for candidate in (location / BATCHES_DIR, location, location / ARCHIVE):
        if candidate.is_dir() and (candidate / TEST_FILE).exists():
            return candidate
        if candidate.is_file() and candidate.name == ARCHIVE:
            return candidate
    return None


def _load_location(location: Path) -> Cifar10:
    found = _find(location)
    if found is None:
        raise DataError(f"no CIFAR-10 under {location} (expected {BATCHES_DIR}/ or {ARCHIVE}); "
                        f"fix {ENV_VAR} or the data_dir argument")
    return _load_archive(found) if found.is_file() else _load_folder(found)


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _download() -> Cifar10:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:
        raise DataError(f"CIFAR-10 not found locally and the download failed ({type(exc).__name__}); "
                        f"set {ENV_VAR} to a folder holding {BATCHES_DIR}/ or {ARCHIVE}") from exc
    return Cifar10(x_train, y_train.ravel().astype(np.int32), x_test, y_test.ravel().astype(np.int32),
                   source="keras download")


def load_cifar10(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Cifar10:
    """Load and validate CIFAR-10 (see the module docstring for the search order)."""
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        return _load_location(Path(explicit))
    cache = keras_cache_dir()
    if _find(cache) is not None:
        return _load_location(cache)
    if not download:
        raise DataError(f"CIFAR-10 not found; set {ENV_VAR} to a folder holding {BATCHES_DIR}/ or {ARCHIVE}")
    return _download()


def stratified_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement with ``seed``, in ascending order."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {per_class} asked for")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def to_float(images) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 255.0


def augment_batch(images: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """Pad-4 random crop and horizontal flip of a whole batch, stateless (so a seed replays it exactly)."""
    n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = tf.random.stateless_uniform([n, 1], seeds[0], 0, 2 * pad + 1, dtype=tf.int32) + tf.range(h)
    cols = tf.random.stateless_uniform([n, 1], seeds[1], 0, 2 * pad + 1, dtype=tf.int32) + tf.range(w)
    cropped = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([n, 1, 1, 1], seeds[2]) < 0.5
    return tf.where(flip, tf.reverse(cropped, axis=[2]), cropped)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int, epoch: int,
                  augment: bool) -> tf.data.Dataset:
    """One epoch of shuffled (optionally augmented) float batches; the last partial batch is kept."""
    order = epoch_order(len(x), seed, epoch)
    ds = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch_size).enumerate()

    def prepare(i, batch):
        images, labels = batch
        images = to_float(images)
        if augment:
            images = augment_batch(images, tf.stack([tf.cast(seed, tf.int64) * 1000 + epoch, i]))
        return images, labels

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
