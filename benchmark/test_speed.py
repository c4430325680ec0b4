"""pytest-benchmark timings: KAF vs ReLU (layer and FBF step), FBF vs clean step, our PGD vs ART's PGD.

Run with `nox -s speed` (autosaved; compare commits with `--benchmark-compare`). Ratios are printed
and stored in the benchmark's extra_info; they are measurements, the assertions only guard against
a broken setup (a benchmark is not a timed unit test).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kafrob.activations import activation_layer
from kafrob.fbf import FBFConfig, make_train_step
from kafrob.models import build_model
from kafrob.pgd import PGDConfig, pgd_attack

BATCH = 128


def _batch():
    rng = np.random.default_rng(0)
    return (tf.constant(rng.uniform(size=(BATCH, 32, 32, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, BATCH).astype(np.int32)))


@pytest.mark.parametrize("activation", ["relu", "kaf", "kaf_free"])
def test_layer_forward_backward(benchmark, activation):
    layer = activation_layer(activation)
    x = tf.random.normal((BATCH, 32, 32, 16))
    layer(x)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(y, [x, *layer.trainable_variables])

    benchmark.pedantic(lambda: [g.numpy() for g in step(x)], rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("model_name", ["resnet20", "vgg"])
@pytest.mark.parametrize("activation", ["relu", "kaf"])
@pytest.mark.parametrize("adversarial", [True, False], ids=["fbf", "clean"])
def test_train_step(benchmark, model_name, activation, adversarial):
    model = build_model(model_name, activation)
    step = make_train_step(model, keras.optimizers.SGD(0.01), FBFConfig(adversarial=adversarial))
    x, y = _batch()
    seed = tf.constant([0, 0], tf.int64)
    step(x, y, seed)
    benchmark.pedantic(lambda: float(step(x, y, seed)["loss"]), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["kafrob", "art"])
def test_pgd10_resnet20(benchmark, backend):
    model = build_model("resnet20", "relu")
    x, y = _batch()
    cfg = PGDConfig(iterations=10, restarts=1)
    if backend == "kafrob":
        pgd_attack(model, x, y, cfg)
        benchmark.pedantic(lambda: pgd_attack(model, x, y, cfg), rounds=3, warmup_rounds=0)
    else:
        from kafrob.art_backend import art_pgd

        benchmark.pedantic(lambda: art_pgd(model, x.numpy(), y.numpy(), cfg, 0), rounds=2, warmup_rounds=0)
