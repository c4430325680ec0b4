"""Thesis checkpoints: unsafe and broken archives are refused; imported models equal the SavedModels."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kafrob import checkpoints as ck
from kafrob.cache import CACHE_ENV_VAR
from kafrob.data import to_float

SHARED = Path(__file__).resolve().parents[2] / "shared" / "thesis" / "checkpoints"


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_zip_slip_refused(tmp_path):
    bad = _zip(tmp_path / "evil.zip", {"m/saved_model.pb": b"x", "../../escape.txt": b"owned"})
    with pytest.raises(ck.CheckpointError, match="escapes the extraction folder"):
        ck.extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not any((tmp_path / "out").iterdir())


def test_absolute_path_refused(tmp_path):
    bad = _zip(tmp_path / "abs.zip", {"/etc/passwd": b"x"})
    with pytest.raises(ck.CheckpointError, match="escapes"):
        ck.extract(bad, tmp_path / "out")


def test_archive_without_saved_model_refused(tmp_path):
    bad = _zip(tmp_path / "empty.zip", {"readme.txt": b"hello"})
    with pytest.raises(ck.CheckpointError, match="SavedModel"):
        ck.extract(bad, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())  # no half-extracted folder left behind


def test_corrupt_and_truncated_refused(tmp_path):
    good = _zip(tmp_path / "good.zip", {"m/saved_model.pb": b"x" * 1000, "m/variables/variables.index": b"y"})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-60])
    corrupt = tmp_path / "corrupt.zip"
    data = bytearray(good.read_bytes())
    data[40:60] = b"\0" * 20
    corrupt.write_bytes(bytes(data))
    for path in (truncated, corrupt):
        with pytest.raises(ck.CheckpointError, match="corrupt|not a valid zip"):
            ck.extract(path, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_oversized_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "MAX_EXTRACTED_BYTES", 100)
    big = _zip(tmp_path / "big.zip", {"m/saved_model.pb": b"x" * 1000})
    with pytest.raises(ck.CheckpointError, match="expands beyond"):
        ck.extract(big, tmp_path / "out")


def test_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path))
    (tmp_path / ck.lookup("relu").filename).write_bytes(b"not the thesis model")
    with pytest.raises(ck.CheckpointError, match="sha256"):
        ck.fetch("relu")


def test_missing_offline_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path))
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    with pytest.raises(ck.CheckpointError, match=f"not in {tmp_path}.*{ck.ENV_VAR}"):
        ck.fetch("elu", download=False)

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ck.urllib.request, "urlopen", offline)
    with pytest.raises(ck.CheckpointError, match=f"cannot download .*{ck.ENV_VAR}"):
        ck.fetch("elu")
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file()], "a failed download leaves no file"
    monkeypatch.delenv(ck.ENV_VAR)
    with pytest.raises(ck.CheckpointError, match=ck.ENV_VAR):
        ck.fetch("elu", download=False)


def test_registry_covers_the_resnet20_table():
    assert set(ck.THESIS_CHECKPOINTS) == {"relu", "elu", "swish", "kaf", "kaf_relu", "kaf_elu", "kaf_swish",
                                          "kaf_free"}
    assert all(c.url.startswith("https://github.com/") for c in ck.THESIS_CHECKPOINTS.values())


# Measured on 512 shared test images: every row argmax agreement 1.0000, max |dp| 0.00000 (the import
# computes with the same TensorFlow kernels in the same float16 precision, see kafrob.thesis_arithmetic).
AVAILABLE = ["relu", "swish", "kaf", "kaf_free", "kaf_relu"]


@pytest.mark.slow
@pytest.mark.parametrize("activation", AVAILABLE)
def test_import_equals_saved_model(activation, cifar, tmp_path):
    path = SHARED / ck.lookup(activation).filename
    if not path.exists():
        pytest.skip(f"{path} not available")
    folder = ck.extract(ck.fetch(activation, path), tmp_path)
    x = to_float(cifar.x_test[:512]).numpy()
    reference = ck.saved_model_probabilities(folder, x)
    model = ck.import_resnet20(folder, activation)
    ours = np.asarray(tf.nn.softmax(model(x, training=False)))
    agree = float(np.mean(ours.argmax(1) == reference.argmax(1)))
    max_diff = float(np.max(np.abs(ours - reference)))
    print(f"{activation}: argmax agreement {agree:.4f}, max |dp| {max_diff:.5f}")
    assert agree == 1.0 and max_diff <= 1e-6
