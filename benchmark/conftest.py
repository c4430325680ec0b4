"""pytest harness of the benchmark: --tier, --source, a header saying what is being measured, and one GPU per
xdist worker (`nox -s full-gpu` on several GPUs)."""

from __future__ import annotations

import os

# Before TensorFlow initialises CUDA: xdist worker gw<i> sees only the i-th visible GPU.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and os.environ.get("KAFROB_GPU_PER_WORKER"):
    _ids = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if os.environ.get("CUDA_VISIBLE_DEVICES") else None
    os.environ["CUDA_VISIBLE_DEVICES"] = _ids[int(_worker[2:]) % len(_ids)] if _ids else _worker[2:]

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from kafrob.bench.tiers import TIERS, Source, get_tier  # noqa: E402
from kafrob.data import ENV_VAR, load_cifar10  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--tier", default=os.environ.get("KAFROB_TIER", "smoke"), choices=sorted(TIERS),
                     help="smoke (CPU, minutes), full (thesis protocol, GPU), checkpoints (released models)")
    parser.addoption("--source", default=None, choices=[s.value for s in Source],
                     help="where models come from (default: the tier's)")
    parser.addoption("--seed", type=int, default=0,
                     help="training and evaluation seed (the references use 0; others measure the spread)")
    parser.addoption("--data-parallel", action="store_true",
                     help="train each case on all visible GPUs with tf.distribute.MirroredStrategy")


def pytest_report_header(config):
    from kafrob import arithmetic
    from kafrob.bench.store import environment

    tier = get_tier(config.getoption("--tier"), config.getoption("--source"))
    env = environment()
    if tier.source is Source.THESIS_CHECKPOINT:
        precision = "as released (thesis float16 KAF arithmetic)"
    else:
        precision = "mixed_float16 training" if env["device"] != "CPU" and tier.name == "full" else "float32"
    data = os.environ.get(ENV_VAR) or "Keras cache / download"
    tolerance = ("the two samples' 95% half-width + the JPEG shift" if tier.source is Source.THESIS_CHECKPOINT
                 else f"{tier.tolerance} points + the 95% half-width" if tier.reference == "thesis"
                 else f"floors {tier.floor_margin} points under the kept models'" if tier.reference == "floors"
                 else "from the measured spread")
    return [f"kafrob tier: {tier.name} (source: {tier.source}, reference: {tier.reference}, tolerance: {tolerance})",
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
