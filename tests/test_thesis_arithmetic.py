"""tf.keras 2.3 arithmetic for the released models: same function as Keras 3, the thesis kernels' rounding."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kafrob.kaf import KAF
from kafrob.models import resnet20
from kafrob.thesis_arithmetic import FusedBatchNormalization, InputDtypeGlobalAveragePooling2D, with_thesis_arithmetic


def _batch_norm(cls, dtype):
    layer = cls(dtype=dtype)
    layer.build((None, 4, 4, 3))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)])
    return layer


def test_fused_batch_norm_is_the_tensorflow_kernel_at_inference():
    x = tf.constant(np.random.default_rng(1).normal(0, 3, (2, 4, 4, 3)), tf.float16)
    ours = _batch_norm(FusedBatchNormalization, "mixed_float16")
    expected, _, _ = tf.compat.v1.nn.fused_batch_norm(x, *[tf.constant(w) for w in ours.get_weights()[:2]],
                                                      mean=ours.get_weights()[2], variance=ours.get_weights()[3],
                                                      epsilon=ours.epsilon, is_training=False)
    got = ours(x, training=False)
    assert got.dtype == tf.float16
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    # Same function as Keras 3's batch norm (float32), only the rounding differs.
    keras3 = _batch_norm(keras.layers.BatchNormalization, "float32")
    np.testing.assert_allclose(_batch_norm(FusedBatchNormalization, "float32")(tf.cast(x, tf.float32)).numpy(),
                               keras3(tf.cast(x, tf.float32)).numpy(), rtol=1e-5, atol=1e-5)


def test_fused_batch_norm_trains_like_keras():
    x = tf.constant(np.random.default_rng(2).normal(1, 2, (8, 4, 4, 3)), tf.float32)
    ours = _batch_norm(FusedBatchNormalization, "float32")
    base = _batch_norm(keras.layers.BatchNormalization, "float32")
    np.testing.assert_array_equal(ours(x, training=True).numpy(), base(x, training=True).numpy())
    np.testing.assert_array_equal(ours.moving_mean.numpy(), base.moving_mean.numpy())


def test_pooling_averages_in_the_input_dtype():
    x = tf.constant(np.random.default_rng(3).uniform(0, 4, (2, 8, 8, 5)), tf.float16)
    got = InputDtypeGlobalAveragePooling2D(dtype="mixed_float16")(x)
    assert got.dtype == tf.float16
    np.testing.assert_array_equal(got.numpy(), tf.reduce_mean(x, axis=[1, 2]).numpy())


def test_with_thesis_arithmetic_keeps_the_model():
    keras.utils.set_random_seed(0)
    model = resnet20("relu")
    clone = with_thesis_arithmetic(model)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    kinds = {type(layer) for layer in clone.layers}
    assert FusedBatchNormalization in kinds and InputDtypeGlobalAveragePooling2D in kinds
    assert keras.layers.BatchNormalization not in kinds
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(4).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    # Same function, float32 rounding of another batch-norm formula through 19 layers, so relative to the logits (up to
    # ~80 with random weights: max |difference| 1.5e-4 over seeds 0-4 on an Intel Xeon, oneDNN on), as the layer test.
    np.testing.assert_allclose(clone(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5,
                               atol=1e-4)
    for cls in (FusedBatchNormalization, InputDtypeGlobalAveragePooling2D):
        layer = next(la for la in clone.layers if type(la) is cls)
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_with_thesis_arithmetic_switches_kafs_to_the_thesis_formula():
    clone = with_thesis_arithmetic(resnet20("kaf"))
    kafs = [layer for layer in clone.layers if isinstance(layer, KAF)]
    assert len(kafs) == 19 and all(layer.thesis_float16 for layer in kafs)
