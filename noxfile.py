"""Sessions: tests (unit), smoke (every thesis case on CPU in minutes), full-gpu, checkpoints, regenerate, lint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
SHARED_DATA = Path(__file__).parent.parent / "shared" / "data" / "cifar10-jpeg"


def _env() -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if not os.environ.get("KAFROB_DATA_DIR") and SHARED_DATA.is_dir():
        env["KAFROB_DATA_DIR"] = str(SHARED_DATA)
    return env


def _install(session: nox.Session, gpu: bool = False) -> None:
    session.install("-e", ".[test]")
    if gpu:
        session.install("tensorflow[and-cuda]>=2.18")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (tests/) without the slow ones (training and full attacks): CI's command."""
    _install(session)
    session.run("pytest", "tests", "-q", "-m", "not slow", "--durations=10", *session.posargs, env=_env())


@nox.session
def slow(session: nox.Session) -> None:
    """The slow tests: FBF vs clean training, resume, NaN guard, LR finder, ART cross-check, sanity, imports."""
    _install(session)
    session.run("pytest", "tests", "-q", "-m", "slow", "-s", "--durations=10", *session.posargs, env=_env())


@nox.session
def smoke(session: nox.Session) -> None:
    """Every thesis case at the smoke tier (CPU), then the results table.

    Two pytest-xdist workers: KAF cases spend about half their time building graphs in single-threaded
    Python, so two processes overlap that with each other's arithmetic (`-- -n 0` runs serially).
    """
    _install(session)
    session.run("pytest", "benchmark/test_thesis.py", "--tier", "smoke", "-q", "-n", "2", "-p", "no:benchmark",
                *session.posargs, env=_env())
    session.run("python", "-m", "kafrob.cli", "table", "--tier", "smoke", env=_env())


@nox.session(name="full-gpu")
def full_gpu(session: nox.Session) -> None:
    """The thesis protocol on GPU(s).

    Several GPUs: one case per GPU (pytest-xdist), or with `-- --data-parallel -k <case>` one case
    trained on all of them (tf.distribute.MirroredStrategy).
    """
    if shutil.which("nvidia-smi") is None:  # before downloading gigabytes of CUDA wheels
        session.error("full-gpu needs an NVIDIA GPU and driver (nvidia-smi not found); on CPU run "
                      "`nox -s smoke` or `nox -s checkpoints`")
    _install(session, gpu=True)
    gpus = session.run("python", "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))",
                       silent=True, env=_env()).strip().splitlines()[-1]
    if int(gpus) == 0:
        session.error("full-gpu needs a visible GPU (tf.config.list_physical_devices('GPU') is empty); "
                      "on CPU run `nox -s smoke` or `nox -s checkpoints`")
    args = ["benchmark/test_thesis.py", "--tier", "full", "-q"]
    if int(gpus) > 1 and "--data-parallel" not in session.posargs:
        session.install("pytest-xdist")
        args += ["-n", gpus, "-p", "kafrob.gpu_workers"]
    session.run("pytest", *args, *session.posargs, env=_env())
    session.run("python", "-m", "kafrob.cli", "table", "--tier", "full", env=_env())


@nox.session
def checkpoints(session: nox.Session) -> None:
    """The released thesis ResNet20 models against the thesis table."""
    _install(session)
    session.run("pytest", "benchmark/test_thesis.py", "--tier", "checkpoints", "-k", "resnet20", "-q",
                *session.posargs, env=_env())


@nox.session
def speed(session: nox.Session) -> None:
    """pytest-benchmark timings (saved, so --benchmark-compare works across commits)."""
    _install(session)
    session.run("pytest", "benchmark/test_speed.py", "--benchmark-autosave", *session.posargs, env=_env())


@nox.session
def regenerate(session: nox.Session) -> None:
    """Re-measure a tier (default smoke) and rewrite reference_results/ (nothing is written if a case fails)."""
    _install(session)
    session.run("python", "-m", "kafrob.cli", "regenerate", *(session.posargs or ["--tier", "smoke"]), env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "kafrob", "tests", "benchmark", "noxfile.py")
