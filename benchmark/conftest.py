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


def pytest_report_header(config):
    tier = get_tier(config.getoption("--tier"), config.getoption("--source"))
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU" if gpus else "CPU"
    precision = "mixed_float16 training" if gpus and tier.name == "full" else "float32"
    data = os.environ.get(ENV_VAR) or "Keras cache / download"
    return [f"kafrob tier: {tier.name} (source: {tier.source}, reference: {tier.reference}, "
            f"tolerance: {tier.tolerance} points)", f"kafrob device: {device}, precision: {precision}, data: {data}"]


@pytest.fixture(scope="session")
def tier(request):
    return get_tier(request.config.getoption("--tier"), request.config.getoption("--source"))


@pytest.fixture(scope="session")
def cifar():
    return load_cifar10()
