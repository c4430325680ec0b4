"""Thesis checkpoints: unsafe and broken archives are refused; imported models equal the SavedModels."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kafrob import checkpoints as ck
from kafrob.cache import CACHE_ENV_VAR


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
    assert all(len(c.sha256) == 64 for c in ck.THESIS_CHECKPOINTS.values())  # every row pinned


def test_pinned_sums_match_the_released_files(shared_checkpoints):
    for c in ck.THESIS_CHECKPOINTS.values():
        assert ck.fetch(c.activation, shared_checkpoints / c.filename, download=False).is_file()


# The import runs the SavedModel's own TensorFlow kernels in the same float16 precision
# (kafrob.thesis_arithmetic), so under one arithmetic it is exact: both sides run in one child process with
# oneDNN off, whose kernels do not depend on the CPU. (With oneDNN on, an AVX512-FP16 CPU computes the
# SavedModel's graph and the eager model with different float16 kernels: README, "Arithmetic".)
_COMPARE = """
import json, os, sys
import numpy as np
from kafrob import checkpoints as ck
from kafrob.data import load_cifar10, to_float
x = to_float(load_cifar10().x_test[:512]).numpy()
out = {}
for activation in sys.argv[2:]:
    folder = ck.extract(ck.fetch(activation, os.path.join(sys.argv[1], ck.lookup(activation).filename)))
    out[activation] = ck.import_agreement(folder, activation, x)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def agreement_onednn_off(cifar, shared_checkpoints, tmp_path_factory):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", CACHE_ENV_VAR: str(tmp_path_factory.mktemp("cache"))}
    done = subprocess.run([sys.executable, "-c", _COMPARE, str(shared_checkpoints), *ck.THESIS_CHECKPOINTS],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("activation", list(ck.THESIS_CHECKPOINTS))
def test_import_equals_saved_model(activation, agreement_onednn_off):
    result = agreement_onednn_off[activation]
    print(f"{activation} (oneDNN off): argmax agreement {result['agreement']:.4f}, max |dp| {result['max_dp']:.5f}")
    assert result["agreement"] == 1.0 and result["max_dp"] <= 1e-6


# The compiled thesis KAF (native/kaf_thesis_half.cc) against TensorFlow's graph of the thesis formula, on the
# released models: logits and the input gradient of the cross-entropy (what PGD follows), bit for bit, at the
# first call (values computed) and after enough calls for every layer's value table (values looked up).
_COMPILED_VS_FORMULA = """
import json, os, sys
import numpy as np, tensorflow as tf
from kafrob import checkpoints as ck, native
from kafrob.data import load_cifar10, to_float
data = load_cifar10()
x, y = tf.constant(to_float(data.x_test[:64])), tf.constant(data.y_test[:64])
def logits_and_gradient(model, calls):
    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(model(x, training=False), tf.float32)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return logits, tape.gradient(loss, x)
    return [[v.numpy() for v in run(x)] for _ in range(calls)]
out = {}
for activation in sys.argv[2:]:
    model = ck.load_thesis_model(activation, os.path.join(sys.argv[1], ck.lookup(activation).filename))
    tables = native.library().kafrob_thesis_kaf_tables()[0].numpy()
    computed, *_, looked_up = logits_and_gradient(model, 17)  # 64-channel layers: 16 calls of 64 images
    tables = int(native.library().kafrob_thesis_kaf_tables()[0].numpy() - tables)
    library, native.library = native.library, lambda: None
    [formula] = logits_and_gradient(model, 1)
    native.library = library
    out[activation] = [tables] + [bool(np.array_equal(a, b)) for run in (computed, looked_up)
                                  for a, b in zip(run, formula)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_compiled_thesis_kaf_equals_the_formula_on_the_released_models(cifar, shared_checkpoints):
    import json
    import os
    import subprocess
    import sys

    rows = [a for a in ck.THESIS_CHECKPOINTS if a.startswith("kaf")]
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "KAFROB_NATIVE": "1"}
    done = subprocess.run([sys.executable, "-c", _COMPILED_VS_FORMULA, str(shared_checkpoints), *rows], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    resnet20_kafs = 19  # KAF layers of a ResNet20, each with its own parameters: one value table each
    assert result == {a: [resnet20_kafs, True, True, True, True] for a in rows}


def _extract_after(barrier, zip_path, dest, results):
    barrier.wait()
    try:
        results.put(str(ck.extract(zip_path, dest)))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put(f"error: {type(exc).__name__}: {exc}")


def test_two_processes_extract_the_same_zip(tmp_path):
    """xdist workers may extract one checkpoint at once: both get the folder, none fails, no half folder."""
    import multiprocessing

    rng = np.random.default_rng(0)
    big = {f"m/variables/shard{i}": rng.bytes(2**20) for i in range(8)}  # extraction long enough to overlap
    archive = _zip(tmp_path / "model.zip", {"m/saved_model.pb": b"x", "m/variables/variables.index": b"y", **big})
    context = multiprocessing.get_context("fork")
    for attempt in range(4):
        dest = tmp_path / f"out{attempt}"
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_extract_after, args=(barrier, archive, dest, results)) for _ in range(2)]
        for w in workers:
            w.start()
        got = [results.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(60)
        assert got == [str(dest / "model" / "m")] * 2, got
        assert sorted(p.name for p in dest.iterdir()) == ["model"]  # no temporary folder left
        assert (dest / "model" / "m" / "variables" / "shard7").read_bytes() == big["m/variables/shard7"]
