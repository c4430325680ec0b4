"""Batch normalisation with an exact inverse standard deviation: TensorFlow's formulas, only the inverse changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kafrob.arithmetic import RSQRT_ENV_VAR, env_for, label, machine
from kafrob.attacks.common import cross_entropy_each, logits
from kafrob.models import build_model
from kafrob.models.batch_norm import BatchNormalization, inverse_std, normalize
from kafrob.thesis_arithmetic import FusedBatchNormalization, with_thesis_arithmetic

CHANNELS = 64

# TensorFlow ops whose CPU kernels take the approximate RSQRTPS or RCPPS (Eigen's prsqrt, preciprocal).
APPROXIMATE_OPS = {"Rsqrt", "Reciprocal", "Inv", "Softmax", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
                   "BatchNormWithGlobalNormalization"}


@pytest.fixture
def exact(monkeypatch):
    monkeypatch.setenv(RSQRT_ENV_VAR, "1")


@pytest.fixture
def hardware(monkeypatch):
    monkeypatch.delenv(RSQRT_ENV_VAR, raising=False)


def _statistics(seed: int = 0) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    values = dict(mean=rng.normal(size=CHANNELS), variance=rng.uniform(0.01, 4, CHANNELS),
                  offset=rng.normal(size=CHANNELS), scale=rng.uniform(0.5, 2, CHANNELS))
    return {k: tf.constant(v, tf.float32) for k, v in values.items()}


def _inputs(dtype=tf.float32, seed: int = 1) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(0, 3, (8, 4, 4, CHANNELS)), dtype)


def _layer(cls, dtype: str = "float32"):
    layer = cls(dtype=dtype)
    layer.build((None, 4, 4, CHANNELS))
    s = _statistics()
    layer.set_weights([s["scale"], s["offset"], s["mean"], s["variance"]])
    return layer


def test_hardware_formula_is_tensorflows_own(hardware):
    s, x = _statistics(), _inputs()
    expected = tf.nn.batch_normalization(x, s["mean"], s["variance"], s["offset"], s["scale"], 1e-3)
    np.testing.assert_array_equal(normalize(x, s["mean"], s["variance"], s["offset"], s["scale"], 1e-3), expected)


# TensorFlow's fused kernel itself (oneDNN replaces it by its own where on, so the child runs with oneDNN off).
_FUSED_VS_FORMULA = """
import numpy as np, tensorflow as tf
from kafrob.thesis_arithmetic import fused_formula
rng = np.random.default_rng(0)
mean, offset = (tf.constant(rng.normal(size=64), tf.float32) for _ in range(2))
variance, scale = tf.constant(rng.uniform(0.01, 4, 64), tf.float32), tf.constant(rng.uniform(0.5, 2, 64), tf.float32)
for dtype in (tf.float16, tf.float32):
    x = tf.constant(rng.normal(0, 3, (8, 4, 4, 64)), dtype)
    kernel, _, _ = tf.compat.v1.nn.fused_batch_norm(x, scale, offset, mean=mean, variance=variance, epsilon=1e-3,
                                                    is_training=False)
    composed = tf.cast(fused_formula(x, mean, variance, offset, scale, 1e-3), dtype)
    assert np.array_equal(composed.numpy(), kernel.numpy()), dtype
"""


def test_fused_formula_is_the_kernels_own():
    env = {**os.environ, **env_for({"onednn": False, "contractions": "eigen", "rsqrt": "hardware"})}
    done = subprocess.run([sys.executable, "-c", _FUSED_VS_FORMULA], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_exact_inverse_is_ieee_and_not_tensorflows(exact):
    variance = np.random.default_rng(2).uniform(1e-4, 10, 1 << 16).astype(np.float32)
    got = inverse_std(tf.constant(variance), 1e-3).numpy()
    shifted = variance + np.float32(1e-3)
    np.testing.assert_array_equal(got, np.float32(1) / np.sqrt(shifted))  # NumPy's sqrt and division: IEEE 754
    assert np.mean(got != tf.math.rsqrt(shifted).numpy()) > 0.05  # TensorFlow's Rsqrt: RSQRTPS and a Newton step


def test_exact_layers_change_only_the_inverse(exact):
    s = _statistics()
    inv = tf.constant(np.float32(1) / np.sqrt(s["variance"].numpy() + np.float32(1e-3))) * s["scale"]
    x = _inputs()
    np.testing.assert_array_equal(_layer(BatchNormalization)(x, training=False).numpy(),
                                  (x * inv + (s["offset"] - s["mean"] * inv)).numpy())
    x16 = _inputs(tf.float16)
    fused = _layer(FusedBatchNormalization, "mixed_float16")(x16, training=False)
    assert fused.dtype == tf.float16
    np.testing.assert_array_equal(fused.numpy(),
                                  tf.cast((tf.cast(x16, tf.float32) - s["mean"]) * inv + s["offset"], tf.float16))


def test_exact_layer_trains_like_keras(exact):
    x = _inputs(seed=3)
    ours, base = _layer(BatchNormalization), _layer(keras.layers.BatchNormalization)
    np.testing.assert_allclose(ours(x, training=True).numpy(), base(x, training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), base.moving_mean.numpy())
    np.testing.assert_array_equal(ours.moving_variance.numpy(), base.moving_variance.numpy())


def test_exact_layer_refuses_what_it_does_not_cover(exact):
    layer = BatchNormalization(renorm=True)
    with pytest.raises(ValueError, match=f"{RSQRT_ENV_VAR}=1 supports"):
        layer(_inputs(), training=False)


def _op_types(model: keras.Model) -> set[str]:
    """Op types of the forward pass and the input gradient of the cross-entropy (what the attacks run)."""

    def loss_gradient(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(cross_entropy_each(y, logits(model, x)))
        return tape.gradient(loss, x)

    graph = tf.function(loss_gradient).get_concrete_function(tf.TensorSpec((None, 32, 32, 3)),
                                                             tf.TensorSpec((None,), tf.int32)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("activation", ["relu", "kaf_relu"])
def test_exact_graphs_hold_no_approximate_op(activation, monkeypatch):
    keras.utils.set_random_seed(0)
    model = build_model("resnet20", activation)
    for variant in (model, with_thesis_arithmetic(model)):
        monkeypatch.delenv(RSQRT_ENV_VAR, raising=False)
        assert _op_types(variant) & APPROXIMATE_OPS  # TensorFlow's own: Rsqrt or the fused kernel
        monkeypatch.setenv(RSQRT_ENV_VAR, "1")
        assert not _op_types(variant) & APPROXIMATE_OPS


EXACT_LOGITS = Path(__file__).parents[1] / "reference_results" / "checkpoints" / "exact_rsqrt_logits.npz"


def test_exact_rsqrt_gives_the_stored_logits_on_every_cpu(cifar, shared_checkpoints, tmp_path):
    """The released models' logits of the first test images under the reference arithmetic with the exact rsqrt,
    bit for bit as stored (tests/scripts/exact_rsqrt_logits.py): on another CPU, the evidence that no result of this
    arithmetic depends on the machine (with the hardware rsqrt, an Intel Xeon and an AMD EPYC differ)."""
    out = tmp_path / "logits.npz"
    env = {**os.environ, **env_for({"onednn": False, "contractions": "eigen", "rsqrt": "exact"})}
    script = Path(__file__).parent / "scripts" / "exact_rsqrt_logits.py"
    done = subprocess.run([sys.executable, str(script), str(out), str(shared_checkpoints)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    stored, here = np.load(EXACT_LOGITS), np.load(out)
    there, now = (json.loads(str(f["header"])) for f in (stored, here))
    differ = {row: int(np.sum(here[row] != stored[row])) for row in stored.files if row != "header"}
    assert not any(differ.values()), (f"logits that differ from those stored on {machine(there)} ({label(there)}), "
                                      f"here on {machine(now)} ({label(now)}): {differ}")
