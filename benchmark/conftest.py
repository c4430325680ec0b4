"""pytest harness of the benchmark: --tier, --source, and a header saying what is being measured."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from kafrob.data import ENV_VAR, load_cifar10
from kafrob.experiments import TIERS, get_tier


def pytest_addoption(parser):
    parser.addoption("--tier", default=os.environ.get("KAFROB_TIER", "smoke"), choices=sorted(TIERS),
                     help="smoke (CPU, minutes), full (thesis protocol, GPU), checkpoints (released models)")
    parser.addoption("--source", default=None, choices=("train", "thesis-checkpoint"),
                     help="where models come from (default: the tier's)")
    parser.addoption("--seed", type=int, default=0,
                     help="training and evaluation seed (the references use 0; others measure the spread)")
    parser.addoption("--data-parallel", action="store_true",
                     help="train each case on all visible GPUs with tf.distribute.MirroredStrategy")


def pytest_report_header(config):
    from kafrob import arithmetic
    from kafrob.bench import environment

    tier = get_tier(config.getoption("--tier"), config.getoption("--source"))
    env = environment()
    if tier.source == "thesis-checkpoint":
        precision = "as released (thesis float16 KAF arithmetic)"
    else:
        precision = "mixed_float16 training" if env["device"] != "CPU" and tier.name == "full" else "float32"
    data = os.environ.get(ENV_VAR) or "Keras cache / download"
    return [f"kafrob tier: {tier.name} (source: {tier.source}, reference: {tier.reference}, "
            f"tolerance: {tier.tolerance} points)",
            f"kafrob device: {env['device']}, precision: {precision}, data: {data}",
            f"kafrob arithmetic: {arithmetic.label(env)}; CPU {env['cpu']}; TF {env['tensorflow']}, "
            f"lock {env['lock']}"]


@pytest.fixture(scope="session")
def tier(request):
    return get_tier(request.config.getoption("--tier"), request.config.getoption("--source"))


@pytest.fixture(scope="session")
def seed(request):
    return request.config.getoption("--seed")


@pytest.fixture(scope="session")
def cifar():
    return load_cifar10()


@pytest.fixture(scope="session")
def strategy(request):
    if not request.config.getoption("--data-parallel"):
        return None
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        pytest.exit(f"--data-parallel needs at least 2 visible GPUs, found {len(gpus)}", returncode=4)
    return tf.distribute.MirroredStrategy()


# (label, numerator test id, denominator test id) of the speed targets in the issues.
RATIOS = [
    *[(f"layer fwd+bwd {a}/relu", f"test_layer_forward_backward[{a}]", "test_layer_forward_backward[relu]")
      for a in ("kaf", "kaf-portable", "kaf_free")],
    *[(f"{m} {mode} {j} step {a}/relu", f"test_train_step[{j}-{mode}-{a}-{m}]", f"test_train_step[{j}-{mode}-relu-{m}]")
      for j in ("xla", "graph") for m in ("resnet20", "vgg") for mode in ("fbf", "clean")
      for a in ("kaf", "kaf-portable")],
    *[(f"{m} {a} {j} step fbf/clean", f"test_train_step[{j}-fbf-{a}-{m}]", f"test_train_step[{j}-clean-{a}-{m}]")
      for j in ("xla", "graph") for m in ("resnet20", "vgg") for a in ("relu", "kaf", "kaf-portable")],
    ("PGD-10 art/kafrob", "test_pgd10_resnet20[art]", "test_pgd10_resnet20[kafrob]"),
    *[(f"thesis PGD step {a}/relu", f"test_thesis_pgd_step[{a}]", "test_thesis_pgd_step[relu]")
      for a in ("kaf_relu", "kaf_relu-formula", "kaf_free")],
]


def pytest_terminal_summary(terminalreporter):
    import sys

    speed = sys.modules.get("test_speed") or sys.modules.get("benchmark.test_speed")
    medians, peaks = getattr(speed, "MEDIANS", {}), getattr(speed, "PEAK_MIB", {})
    rows = [(label, medians[a] / medians[b]) for label, a, b in RATIOS if a in medians and b in medians]
    rows += [(f"{label.replace('step', 'peak memory')}", peaks[a] / peaks[b]) for label, a, b in RATIOS
             if "/relu" in label and "step" in label and a in peaks and b in peaks and peaks[b] > 0]
    if rows:
        terminalreporter.section("kafrob speed ratios (medians)")
        for label, ratio in rows:
            terminalreporter.write_line(f"{label:44s} {ratio:6.2f}")
