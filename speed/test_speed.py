"""pytest-benchmark timings: KAF vs ReLU (layer and FBF step; a released model's PGD step and forward pass; the
compiled thesis KAF's kernels), FBF vs clean step, our PGD vs ART's PGD, and the cost per image of PGD-50x10, our
AutoAttack and ART's AutoAttack on a released model.

Run with `nox -s speed` (autosaved; compare commits with `--benchmark-compare`). The ratios the issues
set targets for (KAF/ReLU <= 1.5, FBF/clean <= 2.0, ART/kafrob PGD >= 2) and the attacks' cost ratios are printed at
the end of the run (see conftest.py); train steps also store their peak allocator memory in extra_info. These are
measurements, not timed assertions, in their own folder so that the tiers (`pytest benchmark`) never run them.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kafrob import native
from kafrob.activations import activation_layer
from kafrob.attacks.pgd import PGDConfig, pgd_attack
from kafrob.fbf import FBFConfig, make_train_step
from kafrob.models import build_model

BATCH = 128


def _activation(name: str, monkeypatch) -> str:
    """``kaf-portable``: the kaf layer on the portable TensorFlow kernels (what runs on a GPU, or without a
    C++ compiler) instead of the compiled CPU ones."""
    if name == "kaf-portable":
        monkeypatch.setattr(native, "library", lambda: None)
        return "kaf"
    if name == "kaf" and native.library() is None:
        pytest.skip("no compiled KAF kernels here: see the kaf-portable rows")
    return name


def _batch():
    rng = np.random.default_rng(0)
    return (tf.constant(rng.uniform(size=(BATCH, 32, 32, 3)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, BATCH).astype(np.int32)))


@pytest.mark.parametrize("activation", ["relu", "kaf", "kaf-portable", "kaf_free"])
def test_layer_forward_backward(benchmark, speed_record, monkeypatch, activation):
    layer = activation_layer(_activation(activation, monkeypatch))
    x = tf.random.normal((BATCH, 32, 32, 16))
    layer(x)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(y, [x, *layer.trainable_variables])

    benchmark.pedantic(lambda: [g.numpy() for g in step(x)], rounds=5, warmup_rounds=1)
    speed_record()


@pytest.mark.parametrize("model_name", ["resnet20", "vgg"])
@pytest.mark.parametrize("activation", ["relu", "kaf", "kaf-portable"])
@pytest.mark.parametrize("adversarial", [True, False], ids=["fbf", "clean"])
@pytest.mark.parametrize("jit", [True, False], ids=["xla", "graph"])  # graph: what a user's own tf.function gets
def test_train_step(benchmark, speed_record, monkeypatch, model_name, activation, adversarial, jit):
    model = build_model(model_name, _activation(activation, monkeypatch))
    step = make_train_step(model, keras.optimizers.SGD(0.01), FBFConfig(adversarial=adversarial), jit_compile=jit)
    x, y = _batch()
    seed = tf.constant([0, 0], tf.int64)
    step(x, y, seed)
    peak = _peak_step_memory(lambda: float(step(x, y, seed)["loss"]))
    benchmark.extra_info["peak_step_memory_mib"] = peak
    benchmark.pedantic(lambda: float(step(x, y, seed)["loss"]), rounds=3, warmup_rounds=1)
    speed_record(peak_mib=peak)


def _peak_step_memory(run) -> float:
    """Peak bytes held by TensorFlow's CPU allocator during one (already compiled) step, in MiB."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    run()
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - base) / 2**20


THESIS_PGD_IMAGES = 64


def _thesis_model(row: str, monkeypatch):
    """A released thesis model (float16 as released); ``-formula``: the KAF as TensorFlow's graph of the thesis
    formula instead of the compiled kernel (the same numbers, bit for bit)."""
    from kafrob.checkpoints import CheckpointError, load_thesis_model

    activation = row.removesuffix("-formula")
    if row.endswith("-formula"):
        monkeypatch.setattr(native, "library", lambda: None)
    elif activation.startswith("kaf") and native.library() is None:
        pytest.skip("no compiled KAF kernels here")
    try:
        return load_thesis_model(activation)
    except CheckpointError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("row", ["relu", "kaf_relu", "kaf_relu-formula", "kaf_free"])
def test_thesis_pgd_step(benchmark, speed_record, monkeypatch, row):
    """PGD-5 on a released thesis model under this process's arithmetic (oneDNN on or off): the cost per image and
    gradient step of the checkpoints tier's evaluation."""
    model = _thesis_model(row, monkeypatch)
    x, y = (v[:THESIS_PGD_IMAGES] for v in _batch())
    cfg = PGDConfig(iterations=5, restarts=1)
    pgd_attack(model, x, y, cfg)
    benchmark.pedantic(lambda: pgd_attack(model, x, y, cfg), rounds=3, warmup_rounds=0)
    if benchmark.stats is not None:
        steps = THESIS_PGD_IMAGES * cfg.iterations
        benchmark.extra_info["image_steps_per_second"] = steps / benchmark.stats.stats.median
    speed_record()


@pytest.mark.parametrize("row", ["relu", "kaf_relu", "kaf_free"])
def test_thesis_forward(benchmark, speed_record, monkeypatch, row):
    """One forward pass of a released thesis model: the cost of a query of the score-based attacks (Square: 5,000
    per image still robust), where no backward pass dilutes the KAF layers' share. Measured in the steady state of
    an attack: the warm-up calls let the compiled KAF build its value tables (kaf_thesis_half.cc, TableCache)."""
    model = _thesis_model(row, monkeypatch)
    x = _batch()[0][:THESIS_PGD_IMAGES]
    forward = tf.function(lambda x: model(x, training=False))
    forward(x)
    benchmark.pedantic(lambda: forward(x).numpy(), rounds=5, warmup_rounds=20)
    speed_record()


@pytest.mark.parametrize("kernel", ["value-computed", "value-gathered", "value-table", "input-gradient",
                                    "input-gradient-gathered", "relu"])
def test_thesis_kaf_kernel(benchmark, speed_record, kernel):
    """The compiled thesis KAF's kernels on 1M float16 activations (64 x 32 x 32 x 16, a released model's first
    layers): the value computed per element (fresh parameters each round, so no value table), looked up from the
    value table (the same parameters every call), the input gradient; ``-gathered``: with each exponential read
    from the exp table instead of computed (given a copy of TensorFlow's table with other NaN payloads, which the
    kernel's exp does not reproduce, so it reads that table); and a ReLU, for scale."""
    ops = native.library()
    if ops is None:
        pytest.skip("no compiled KAF kernels here")
    from kafrob.kaf import dictionary_points, thesis_exp_table

    rng = np.random.default_rng(0)
    half = np.float16
    x = tf.constant(rng.normal(0, 2, (64, 32, 32, 16)).astype(half))
    upstream = tf.constant(rng.normal(0, 1, x.shape).astype(half))
    points, neg_gamma = tf.constant(dictionary_points(20).astype(half)), tf.constant(half(-(19**2) / 216))
    exp_table = thesis_exp_table()
    if kernel.endswith("-gathered"):
        exp_table = np.where(np.isnan(exp_table), np.float32(np.nan), exp_table)
    table = tf.constant(exp_table)

    def coeffs():
        return tf.constant(rng.normal(0, 30, (16, 20)).astype(half))

    fixed = coeffs()
    run = {"value-computed": lambda a: ops.kafrob_thesis_kaf(x, a, points, neg_gamma, table),
           "value-table": lambda _: ops.kafrob_thesis_kaf(x, fixed, points, neg_gamma, table),
           "input-gradient": lambda _: ops.kafrob_thesis_kaf_input_gradient(x, upstream, fixed, points, neg_gamma,
                                                                           table),
           "relu": lambda _: tf.nn.relu(x)}
    run["value-gathered"], run["input-gradient-gathered"] = run["value-computed"], run["input-gradient"]
    run = run[kernel]
    for _ in range(4):  # the value-table case's table is built by now
        run(fixed)
    benchmark.pedantic(lambda a: run(a).numpy(), setup=lambda: ((coeffs(),), {}), rounds=10, warmup_rounds=0)
    speed_record()


@pytest.mark.parametrize("backend", ["kafrob", "art"])
def test_pgd10_resnet20(benchmark, speed_record, backend):
    model = build_model("resnet20", "relu")
    x, y = _batch()
    cfg = PGDConfig(iterations=10, restarts=1)
    if backend == "kafrob":
        pgd_attack(model, x, y, cfg)
        benchmark.pedantic(lambda: pgd_attack(model, x, y, cfg), rounds=3, warmup_rounds=0)
    else:
        from kafrob.attacks.art import art_pgd

        benchmark.pedantic(lambda: art_pgd(model, x.numpy(), y.numpy(), cfg, 0), rounds=2, warmup_rounds=0)
    speed_record()


EVALUATION_IMAGES = 8


@pytest.mark.parametrize("evaluation", ["pgd50x10", "autoattack", "art-autoattack"])
def test_robust_evaluation_cost(benchmark, speed_record, evaluation):
    """The cost per image of a robust-accuracy evaluation on the released ReLU model, the same real test images (the
    first of the stored evaluation order; true labels) for each: the thesis's PGD-50x10, our AutoAttack (the
    standard composition) and ART's ``AutoAttack`` with its default attacks (APGD-CE and APGD-DLR with 5 restarts
    each, DeepFool, Square; eps 8/255, its step 2/255). Each attack runs only on the images still robust, so the
    cost depends on the model and the images: compare the three from one run."""
    import os

    from kafrob.attacks import attack, named
    from kafrob.bench.shards import evaluation_order
    from kafrob.checkpoints import CheckpointError, load_thesis_model
    from kafrob.data import ENV_VAR, load_cifar10, to_float

    if not os.environ.get(ENV_VAR):
        pytest.skip(f"{ENV_VAR} is not set (real test images are needed: the costs depend on which stay robust)")
    try:
        model = load_thesis_model("relu")
    except CheckpointError as exc:
        pytest.skip(str(exc))
    data = load_cifar10()
    idx = evaluation_order(data.y_test)[:EVALUATION_IMAGES]
    x, y = to_float(data.x_test[idx]).numpy(), data.y_test[idx].astype(np.int32)
    if evaluation == "art-autoattack":
        from art.attacks.evasion import AutoAttack

        from kafrob.attacks.art import art_classifier

        def run():
            np.random.seed(0)
            return AutoAttack(art_classifier(model), eps=8 / 255, eps_step=2 / 255,
                              batch_size=EVALUATION_IMAGES).generate(x=x, y=y.astype(np.int64))
    else:
        config = named("pgd", iterations=50, restarts=10) if evaluation == "pgd50x10" else named(evaluation)
        attack(model, x[:1], y[:1], config, seed=0)  # compile outside the timing

        def run():
            return attack(model, x, y, config, seed=0)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    if benchmark.stats is not None:
        benchmark.extra_info["seconds_per_image"] = benchmark.stats.stats.median / EVALUATION_IMAGES
    speed_record()
