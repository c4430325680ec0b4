"""Run in a fresh process by test_distribute.py: the CPU must be split into 2 logical devices before
TensorFlow starts, which a pytest process that already used TensorFlow cannot do."""

from __future__ import annotations

import json
import sys
import tempfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kafrob.data import load_cifar10  # noqa: E402
from kafrob.fbf import FBFConfig, make_train_step  # noqa: E402
from kafrob.train import TrainConfig, train  # noqa: E402


def small_model() -> keras.Model:
    """No BatchNorm or dropout: one data-parallel step must equal one single-device step."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def one_step(strategy) -> list[np.ndarray]:
    with (strategy or tf.distribute.get_strategy()).scope():
        model = small_model()
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, FBFConfig(adversarial=False), jit_compile=False, strategy=strategy)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    if strategy is not None:
        ds = strategy.experimental_distribute_dataset(ds)
    for xb, yb in ds:
        out = step(xb, yb, tf.constant([0, 0], tf.int64))
    assert bool(out["finite"])
    return [v.numpy() for v in model.trainable_variables]


def main() -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, mirrored = one_step(None), one_step(strategy)
    step_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored, strict=True))
    # XLA inside each replica, as on GPUs; 120 images in 2 global batches of 60 (one compiled shape).
    config = TrainConfig("vgg", "kaf", epochs=1, min_lr=0.01, max_lr=0.1, batch_size=60, train_per_class=12,
                         monitor_images=0, jit_compile=True)
    result = train(config, load_cifar10(sys.argv[1] if len(sys.argv) > 1 else None), tempfile.mkdtemp(),
                   progress=False, strategy=strategy)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "step_max_abs_diff": step_diff,
                      "history": result.history}))


if __name__ == "__main__":
    main()
