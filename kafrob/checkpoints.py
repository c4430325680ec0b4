"""The thesis's released ResNet20 models: fetch, verify, safely extract, and import into kafrob's ResNet20.

The zips are TF 2.3 SavedModels that Keras 3 cannot load. We read their variables with
``tf.train.load_checkpoint`` and copy them, in the thesis's layer order (``layer_with_weights-N``),
into ``kafrob.models.resnet20``: the result is an ordinary Keras 3 model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import keras
import numpy as np
import tensorflow as tf

from kafrob.cache import cache_root
from kafrob.kaf import KAF
from kafrob.models import resnet20
from kafrob.models.resnet20 import layer_names
from kafrob.thesis_arithmetic import with_thesis_arithmetic

ENV_VAR = "KAFROB_CHECKPOINT_DIR"
REPOSITORY = "arbiter1elegantiae/Robustness-of-deep-neural-networks-with-trainable-activation-functions"
BASE_URL = f"https://github.com/{REPOSITORY}/raw/HEAD/resnet20_models/"
MAX_ARCHIVE_BYTES = 64 * 2**20  # the real ones are ~1.3 MB
MAX_EXTRACTED_BYTES = 256 * 2**20
MAX_ENTRIES = 256


class CheckpointError(RuntimeError):
    """A thesis checkpoint is missing, unsafe or corrupt; the message says what to do."""


@dataclass(frozen=True)
class ThesisCheckpoint:
    activation: str
    filename: str
    sha256: str  # of the released zip: every file is verified before it is used

    @property
    def url(self) -> str:
        return BASE_URL + self.filename


THESIS_CHECKPOINTS: dict[str, ThesisCheckpoint] = {c.activation: c for c in (
    ThesisCheckpoint("relu", "resnet20_relu_ocrob_lrf.zip",
                     "d88bc7a17e24b307bc9bc5b3ccda08587f08e887ac1247e605d757103b8de259"),
    ThesisCheckpoint("elu", "resnet20_elu_ocrob_lrf.zip",
                     "7779d3d5b78f41227a3fc7eab099526b103cef78350279bece0eeb7404a3e51b"),
    ThesisCheckpoint("swish", "resnet20_swish_ocrob_lrf.zip",
                     "bfa06287f9641a1dbd56488eb687cfa833d6f5eb1edea5584631937cecf7240e"),
    ThesisCheckpoint("kaf", "resnet20_kaf_ocrob_lrfinder.zip",
                     "098ea5f7a0a4036a49e97c445d2c48e1a58a29932944b895ac1fc346a3615b27"),
    # The table's kaf_relu row is the run with the 20-epoch decay phase ("_last"), see the README.
    ThesisCheckpoint("kaf_relu", "resnet20_kafrelu_ocrob_lrfinder_last.zip",
                     "195db3780d374d5ac8bb98263684c0cede41e0a3df54239ab5798cadb7402864"),
    ThesisCheckpoint("kaf_elu", "resnet20_kafelu_ocrob_lrf.zip",
                     "507a5e5b7b8ffbe1636b29f3dce6c7649636c242dd00841095eec9af963e62c0"),
    ThesisCheckpoint("kaf_swish", "resnet20_kafswish_ocrob_lrfinder.zip",
                     "fa15f2b1f3bcb869f2de8e1388df67b1b6af9c23805b286c54229b0d35af1ae5"),
    ThesisCheckpoint("kaf_free", "resnet20_kafs_freedictkb_ocrob_lrfinder.zip",
                     "e68a123157a8199b35658db50e36dbd014ff9297784733e11d72d4ccb43dfec3"),
)}


def lookup(activation: str) -> ThesisCheckpoint:
    if activation not in THESIS_CHECKPOINTS:
        raise ValueError(f"no thesis ResNet20 checkpoint for {activation!r}; known: {', '.join(THESIS_CHECKPOINTS)}")
    return THESIS_CHECKPOINTS[activation]


def cache_dir() -> Path:
    return cache_root() / "checkpoints"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, expected: str) -> Path:
    if sha256(path) != expected:
        raise CheckpointError(f"{path} fails its sha256 check (expected {expected}); delete it and fetch it again")
    return path


def _download(entry: ThesisCheckpoint, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        _verify(Path(tmp), entry.sha256)
        os.replace(tmp, dest)
    except CheckpointError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot download {entry.url} ({type(exc).__name__}: {exc}); put {entry.filename} "
                              f"in a folder and set {ENV_VAR} to it") from exc
    return dest


def fetch(activation: str, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The verified zip of a thesis checkpoint: explicit path, $KAFROB_CHECKPOINT_DIR, cache, download."""
    entry = lookup(activation)
    if path is not None:
        return _verify(Path(path), entry.sha256)
    env = os.environ.get(ENV_VAR)
    candidate = Path(env) / entry.filename if env else None
    if candidate is not None and candidate.is_file():
        return _verify(candidate, entry.sha256)
    # A checkpoint folder may hold only some of the zips: the others come from the cache or the download,
    # and the error says where it looked.
    cached = cache_dir() / entry.filename
    if cached.is_file():
        return _verify(cached, entry.sha256)
    looked = f"not in {candidate.parent} ({ENV_VAR}) nor the cache" if candidate else "not cached"
    if not download:
        raise CheckpointError(f"{entry.filename} is {looked}; put it in {ENV_VAR} or allow the download")
    try:
        return _download(entry, cached)
    except CheckpointError as exc:
        raise CheckpointError(f"{entry.filename} is {looked}, and {exc}") from exc


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_ENTRIES:
        raise CheckpointError(f"archive has {len(members)} entries (limit {MAX_ENTRIES}); refusing it")
    total = 0
    for m in members:
        name = PurePosixPath(m.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in m.filename or ":" in m.filename:
            raise CheckpointError(f"archive entry {m.filename!r} escapes the extraction folder; refusing it")
        total += m.file_size
        if total > MAX_EXTRACTED_BYTES:
            raise CheckpointError(f"archive expands beyond {MAX_EXTRACTED_BYTES} bytes; refusing it")
    return members


def extract(zip_path: str | os.PathLike, dest_root: str | os.PathLike | None = None) -> Path:
    """Extract a released zip into ``dest_root/<zip stem>/`` (all or nothing); returns the SavedModel folder."""
    zip_path = Path(zip_path)
    dest_root = Path(dest_root) if dest_root is not None else cache_dir() / "extracted"
    final = dest_root / zip_path.stem
    if not final.exists():
        if zip_path.stat().st_size > MAX_ARCHIVE_BYTES:
            raise CheckpointError(f"{zip_path} is larger than {MAX_ARCHIVE_BYTES} bytes; refusing it")
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest_root, prefix=f".{zip_path.stem}."))
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = _safe_members(archive)
                bad = archive.testzip()
                if bad is not None:
                    raise CheckpointError(f"{zip_path}: entry {bad} is corrupt; delete the file and fetch it again")
                archive.extractall(tmp, members)
            _saved_model_dir(tmp, zip_path)
            _publish(tmp, final)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"{zip_path} is not a valid zip ({exc}); delete it and fetch it again") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _saved_model_dir(final, zip_path)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the extracted ``tmp`` folder to ``final``; if another process (an xdist worker) got there first,
    keep its folder, which is complete too (renaming a folder is atomic), and drop ours."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _saved_model_dir(root: Path, origin: Path) -> Path:
    found = [p.parent for p in root.rglob("saved_model.pb") if (p.parent / "variables" / "variables.index").is_file()]
    if len(found) != 1:
        raise CheckpointError(f"{origin} does not hold exactly one SavedModel with variables (found {len(found)})")
    return found[0]


def _thesis_weights(layer: keras.layers.Layer, reader, prefix: str) -> list[np.ndarray]:
    def get(name: str) -> np.ndarray:
        key = f"{prefix}/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if not reader.has_tensor(key):
            raise CheckpointError(f"checkpoint lacks {key} for layer {layer.name}; is it the right activation?")
        return reader.get_tensor(key)

    if isinstance(layer, KAF):
        channels, size = layer.coeffs.shape
        coeffs = get("mix_coeffs").reshape(channels, size)
        if layer.trainable_dictionary:
            return [coeffs, get("d").reshape(channels, size), get("k_bandw").reshape(channels)]
        points = get("d").reshape(size)
        if not np.allclose(points, layer.points.numpy(), atol=1e-6):
            raise CheckpointError(f"layer {layer.name}: the checkpoint's dictionary is not linspace(-3, 3, 20)")
        return [coeffs, points]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [get(n) for n in ("gamma", "beta", "moving_mean", "moving_variance")]
    return [get("kernel"), get("bias")]


def import_resnet20(saved_model_dir: str | os.PathLike, activation: str, *,
                    thesis_precision: bool = True) -> keras.Model:
    """Build kafrob's ResNet20 for ``activation`` and load the thesis SavedModel's weights into it.

    ``thesis_precision`` (default) computes as the released models do: mixed_float16 layers, the
    thesis's float16 KAF formula, and tf.keras 2.3's batch-norm and pooling kernels
    (``kafrob.thesis_arithmetic``). That matters for ridge-initialised KAFs (kaf_relu), whose large
    alternating coefficients amplify float16 rounding; with False the model is exact float32.
    """
    reader = tf.train.load_checkpoint(str(Path(saved_model_dir) / "variables" / "variables"))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if thesis_precision else "float32")
    try:
        model = resnet20(activation)
    finally:
        keras.config.set_dtype_policy(previous)
    if thesis_precision:
        model = with_thesis_arithmetic(model)
    layers = [model.get_layer(n) for n in layer_names()]
    layers = [layer for layer in layers if layer.weights]
    available = {k.split("/")[0] for k in reader.get_variable_to_shape_map() if k.startswith("layer_with_weights-")}
    if len(available) != len(layers):
        raise CheckpointError(f"checkpoint has {len(available)} layers with weights, kafrob's resnet20({activation!r}) "
                              f"has {len(layers)}: wrong activation for this file?")
    for i, layer in enumerate(layers):
        values = _thesis_weights(layer, reader, f"layer_with_weights-{i}")
        for var, value in zip(layer.weights, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise CheckpointError(f"layer {layer.name}: shape {value.shape} in the checkpoint, {var.shape} here")
            var.assign(value)
    return model


def load_thesis_model(activation: str, path: str | os.PathLike | None = None, *,
                      thesis_precision: bool = True) -> keras.Model:
    """The released thesis ResNet20 for ``activation`` as a kafrob Keras 3 model."""
    return import_resnet20(extract(fetch(activation, path)), activation, thesis_precision=thesis_precision)


def saved_model_probabilities(saved_model_dir: str | os.PathLike, x) -> np.ndarray:
    """The original SavedModel's ``serving_default`` output (softmax probabilities), for cross-checks."""
    signature = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    (out,) = signature(**{name: tf.convert_to_tensor(x, tf.float32)}).values()
    return out.numpy()


def import_agreement(saved_model_dir: str | os.PathLike, activation: str, x: np.ndarray) -> dict[str, float]:
    """How exactly the import computes the SavedModel: argmax agreement and max |dp| of the softmax outputs on
    ``x``. Both sides run in this process, so with this process's arithmetic (oneDNN on or off, see
    kafrob.arithmetic); compare them under one arithmetic only."""
    reference = saved_model_probabilities(saved_model_dir, x)
    model = import_resnet20(saved_model_dir, activation)
    ours = np.asarray(tf.nn.softmax(tf.cast(model(x, training=False), tf.float32)))
    return {"agreement": float(np.mean(ours.argmax(1) == reference.argmax(1))),
            "max_dp": float(np.max(np.abs(ours - reference)))}
