"""CIFAR-10 loading: the shared copy, synthetic folders and archives, and every way they break."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import tensorflow as tf

from kafrob.data import DataError, augment_batch, load_cifar10, stratified_indices, train_dataset


def test_shared_copy(cifar):
    assert cifar.x_train.shape == (50_000, 32, 32, 3) and cifar.x_test.shape == (10_000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8
    assert np.bincount(cifar.y_test, minlength=10).tolist() == [1000] * 10
    assert cifar.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_synthetic_folder(synthetic_cifar):
    data = load_cifar10(synthetic_cifar)
    assert data.x_train.shape == (100, 32, 32, 3) and data.y_test.shape == (20,)


def test_archive(synthetic_cifar, tmp_path):
    archive = tmp_path / "arch" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synthetic_cifar / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    a, b = load_cifar10(archive.parent), load_cifar10(synthetic_cifar)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    truncated = tmp_path / "trunc" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_cifar10(truncated.parent)


def test_missing_batch(synthetic_cifar):
    (synthetic_cifar / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_cifar10(synthetic_cifar)


def test_truncated_batch(synthetic_cifar):
    path = synthetic_cifar / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_2 is corrupt or truncated"):
        load_cifar10(synthetic_cifar)


def test_bad_labels(synthetic_cifar):
    import pickle

    path = synthetic_cifar / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][0] = 12
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_cifar10(synthetic_cifar)


def test_missing_folder_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFROB_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="KAFROB_DATA_DIR"):
        load_cifar10()


def test_offline_and_absent_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("KAFROB_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(DataError, match="KAFROB_DATA_DIR"):
        load_cifar10(download=False)


def test_stratified_and_pipeline(synthetic_cifar):
    data = load_cifar10(synthetic_cifar)
    idx = stratified_indices(data.y_train, 3, seed=1)
    assert np.bincount(data.y_train[idx]).tolist() == [3] * 10
    a = [b[0].numpy() for b in train_dataset(data.x_train, data.y_train, batch_size=32, seed=0, epoch=1, augment=True)]
    b = [b[0].numpy() for b in train_dataset(data.x_train, data.y_train, batch_size=32, seed=0, epoch=1, augment=True)]
    assert [x.shape[0] for x in a] == [32, 32, 32, 4]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_augment_is_crop_and_flip():
    x = tf.random.uniform((16, 32, 32, 3))
    out = augment_batch(x, tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == (16, 32, 32, 3)
    padded = np.pad(x.numpy(), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(16):  # every output is some 32x32 window of the padded image, maybe mirrored
        windows = [padded[i, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1]) for w in windows)
