"""Sessions: tests (unit), smoke (every thesis case on CPU in minutes), full-gpu, checkpoints, regenerate, lint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
SHARED_DATA = Path(__file__).parent.parent / "shared" / "data" / "cifar10-jpeg"
# Every Python dependency pinned (refresh: `nox -s lock`); the results header records its sha256.
LOCK = Path(__file__).parent / "requirements.lock"


def _env() -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if not os.environ.get("KAFROB_DATA_DIR") and SHARED_DATA.is_dir():
        env["KAFROB_DATA_DIR"] = str(SHARED_DATA)
    return env


def _install(session: nox.Session, gpu: bool = False) -> None:
    session.install("-c", str(LOCK), "-e", ".[test]")
    if gpu:  # the CUDA wheels are not in the lock (it is made for CPU machines); TensorFlow itself stays pinned
        session.install("-c", str(LOCK), "tensorflow[and-cuda]")


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


# The smoke tier's spread (kafrob.bench.spread): seed 0 under every arithmetic path, and another seed.
SPREAD_RUNS = [(0, 1, "compiled"), (0, 0, "compiled"), (0, 1, "portable"), (0, 0, "portable"), (1, 1, "compiled")]


@nox.session
def spread(session: nox.Session) -> None:
    """Re-run the smoke tier under each arithmetic path and seed (runs/spread/), then write
    reference_results/smoke_spread.{json,md}: the measurement the smoke tolerances are set from (~30 min)."""
    _install(session)
    folders = []
    for seed, onednn, kernels in SPREAD_RUNS:
        folder = Path("runs") / "spread" / f"seed{seed}-onednn{onednn}-{kernels}"
        folders.append(str(folder))
        env = {**_env(), "KAFROB_RUNS_DIR": str(folder), "TF_ENABLE_ONEDNN_OPTS": str(onednn),
               "KAFROB_NATIVE": "1" if kernels == "compiled" else "0"}
        # the cases are judged against the current tolerances too; a failure here is a measurement, not an error
        session.run("pytest", "benchmark/test_thesis.py", "--tier", "smoke", "--seed", str(seed), "-q", "-n", "2",
                    "-p", "no:benchmark", env=env, success_codes=[0, 1])
    session.run("python", "-m", "kafrob.bench.spread", *folders, env=_env())


@nox.session(name="full-gpu")
def full_gpu(session: nox.Session) -> None:
    """The thesis protocol on GPU(s).

    Several GPUs: one case per GPU (pytest-xdist), or with `-- --data-parallel -k <case>` one case
    trained on all of them (tf.distribute.MirroredStrategy). On a cluster: `-- --executor slurm --partition gpu`
    submits every case as a Slurm job (kafrob submit; preempted jobs are requeued and resume).
    """
    if "--executor" in session.posargs:  # every case as a job of a job engine (kafrob submit), e.g. Slurm
        _install(session, gpu=True)  # the jobs run this environment's Python on the GPU nodes
        session.run("kafrob", "submit", "--tier", "full", *session.posargs, env=_env())
        session.run("python", "-m", "kafrob.cli", "table", "--tier", "full", env=_env())
        return
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
        args += ["-n", gpus]
    session.run("pytest", *args, *session.posargs, env={**_env(), "KAFROB_GPU_PER_WORKER": "1"})
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
    session.run("pytest", "speed", "--benchmark-autosave", *session.posargs, env=_env())


@nox.session
def regenerate(session: nox.Session) -> None:
    """Re-measure a tier (default smoke) and rewrite reference_results/ (nothing is written if a case fails)."""
    _install(session)
    session.run("python", "-m", "kafrob.cli", "regenerate", *(session.posargs or ["--tier", "smoke"]), env=_env())


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve every dependency (pyproject.toml, all extras) into requirements.lock (x86-64 Linux, Python 3.11)."""
    session.install("uv")
    session.run("uv", "pip", "compile", "pyproject.toml", "--all-extras", "--python-version", "3.11",
                "--python-platform", "x86_64-manylinux_2_28", "--no-header", "-o", str(LOCK))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-c", str(LOCK), "ruff")
    session.run("ruff", "check", "kafrob", "tests", "benchmark", "noxfile.py")
