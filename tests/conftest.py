"""Shared fixtures: the real CIFAR-10 copy (from KAFROB_DATA_DIR) and small synthetic datasets."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from kafrob.checkpoints import ENV_VAR as CHECKPOINT_ENV_VAR
from kafrob.data import ENV_VAR, Cifar10, load_cifar10

# Where a checkout's sibling folder shared/ keeps the released checkpoints when nothing else is set.
SHARED_CHECKPOINTS = Path(__file__).resolve().parents[2] / "shared" / "thesis" / "checkpoints"


def write_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(i % 10) for i in range(n)], b"batch_label": b"synthetic",
             b"filenames": [f"{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=4))


@pytest.fixture
def synthetic_cifar(tmp_path) -> Path:
    """A folder in CIFAR-10's python layout with 20 images per batch."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", 20, i)
    write_batch(folder / "test_batch", 20, 0)
    return tmp_path


@pytest.fixture
def smoke_sized_data(tmp_path) -> Path:
    """A data folder with 600 training images (60 per class: the smoke tier takes 50) and 100 test images."""
    folder = tmp_path / "smoke-data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", 120, i)
    write_batch(folder / "test_batch", 100, 0)
    return folder.parent


@pytest.fixture
def tiny(tmp_path):
    """A 100-image CIFAR-like test set (10 per class) and a small trained-enough Keras model file."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", 20, i)
    write_batch(folder / "test_batch", 100, 0)
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    path = tmp_path / "tiny.keras"
    model.save(path)
    return tmp_path / "data", path


@pytest.fixture(scope="session")
def cifar() -> Cifar10:
    """The real data. Without KAFROB_DATA_DIR the test is skipped (a laptop without the data); with it
    set, missing or broken data is an error (CI sets it, so CI never skips these silently)."""
    if not os.environ.get(ENV_VAR):
        pytest.skip(f"{ENV_VAR} is not set")
    return load_cifar10()


@pytest.fixture(scope="session")
def shared_checkpoints() -> Path:
    """The folder of the released thesis zips: $KAFROB_CHECKPOINT_DIR, else ../shared; skipped where neither is."""
    folder = Path(os.environ.get(CHECKPOINT_ENV_VAR) or SHARED_CHECKPOINTS)
    if not folder.is_dir():
        pytest.skip(f"no released checkpoints ({CHECKPOINT_ENV_VAR} unset, {SHARED_CHECKPOINTS} absent)")
    return folder
