"""Shards and cases as jobs of submitit's local executor: the same files as the serial path, requeue and resume
after a preemption, one clear failure for a bad configuration."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import submitit  # noqa: F401  (its import reconfigures logging, closing open handlers: do it at collection)

from kafrob.attacks.pgd import PGDConfig
from kafrob.bench import executor as ex
from kafrob.bench import shards
from kafrob.bench.run import load_named_model, run_shards
from kafrob.data import load_cifar10

CPU = ex.Resources(cpus=1, timeout_min=10)


def _plan(model_path, n_shards, iterations=5):
    specs = [shards.ShardSpec(str(model_path), PGDConfig(iterations=iterations, restarts=1, label_mode=m),
                              shard_images=10) for m in ("predicted", "true")]
    return specs, [(s, k) for k in range(n_shards) for s in specs]


def _serial(plan, root, data_dir):
    run_shards(plan, root, load_model=load_named_model, load_data=lambda: load_cifar10(data_dir),
               progress=lambda _: None)


def _same(specs, a, b):
    for spec in specs:
        ma, mb = shards.merge(spec, a), shards.merge(spec, b)
        assert ma.shards == mb.shards
        for field in shards.FIELDS:
            np.testing.assert_array_equal(ma.arrays[field], mb.arrays[field])


def test_local_jobs_end_in_the_same_files_as_the_serial_path(tiny, tmp_path):
    data_dir, model_path = tiny
    specs, plan = _plan(model_path, 4)
    _serial(plan, tmp_path / "serial", data_dir)
    jobs = ex.shard_jobs(plan, 2, tmp_path / "jobs-out", str(data_dir))
    assert len(jobs) == 2 and {k for _, k in jobs[0].plan} == {0, 2}  # each job: both label modes of its shards
    lines = []
    report = ex.wait(ex.submit(jobs, ex.Engine.LOCAL, tmp_path / "logs", CPU), poll_s=1, progress=lines.append)
    assert report.failures == [] and len(report.results) == 2
    assert lines[-1] == "kafrob: jobs 2 done, 0 running or queued, 0 failed of 2"
    _same(specs, tmp_path / "serial", tmp_path / "jobs-out")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_job_stopped_at_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    """The time limit's signal (SIGUSR2, as Slurm sends before the limit, or on preemption) makes submitit
    checkpoint the job and requeue it; the requeued job finds the finished shards and computes only the others.
    The signal is sent once the first shard is written (not at a wall-clock time: a slow or busy machine would
    otherwise be signalled before any shard is done)."""
    data_dir, model_path = tiny
    specs, plan = _plan(model_path, 6, iterations=1000)  # a second or more per shard: the signal falls mid-run
    root = tmp_path / "out"
    (job,) = ex.submit([ex.ShardJob(plan, root, str(data_dir))], ex.Engine.LOCAL, tmp_path / "logs",
                       ex.Resources(cpus=1, timeout_min=30, max_timeouts=3))
    deadline = time.time() + 900
    while not any(root.rglob("shard-*.npz")) and not job.done() and time.time() < deadline:
        time.sleep(0.2)
    (task,) = _children(job._process.pid)  # the controller's one task: the job's Python process
    os.kill(task, signal.SIGUSR2)
    report = ex.wait([job], poll_s=1, progress=lambda _: None)
    assert report.failures == []
    log = job.stdout() or ""
    starts = [int(line.split("kafrob: ")[1].split(" of ")[0]) for line in log.splitlines() if " shards done, " in line]
    assert len(starts) == 2 and starts[0] == 0 and 0 < starts[1] < 12, log  # requeued once, resumed mid-plan
    assert "Requeued job" in (job.stderr() or "") + log
    _serial(plan, tmp_path / "serial", data_dir)
    _same(specs, tmp_path / "serial", root)


def test_a_requeue_exit_cannot_be_intercepted_by_the_code_it_interrupts():
    """submitit's requeue raises SystemExit wherever the signal lands; code there (TensorFlow's C++ bindings, here an
    ``except BaseException``) must not turn it into another error: ``exit_at_once`` leaves with its exit code."""
    import subprocess
    import sys

    script = """
import os, signal, sys, time
from kafrob.bench.executor import exit_at_once
wrap = sys.argv[1] == "wrapped"
requeue = lambda signum, frame: sys.exit(144)  # submitit's local requeue exit code
signal.signal(signal.SIGUSR2, exit_at_once(requeue) if wrap else requeue)
try:
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(5)
except BaseException as exc:
    print("intercepted", type(exc).__name__)
"""
    runs = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True)
            for mode in ("plain", "wrapped")}
    assert (runs["plain"].returncode, runs["plain"].stdout.strip()) == (0, "intercepted SystemExit")
    assert (runs["wrapped"].returncode, runs["wrapped"].stdout) == (144, "")


def test_a_bad_configuration_fails_once_with_its_error(tiny, tmp_path):
    data_dir, _ = tiny
    _, plan = _plan(tmp_path / "missing.keras", 1)
    report = ex.wait(ex.submit([ex.ShardJob(plan, tmp_path / "out", str(data_dir))], ex.Engine.LOCAL,
                               tmp_path / "logs", CPU), poll_s=1, progress=lambda _: None)
    assert len(report.failures) == 1 and "no model at" in report.failures[0] and "missing.keras" in report.failures[0]


def test_cases_as_local_jobs_measure_what_the_serial_path_measures(smoke_sized_data, tmp_path, monkeypatch):
    """One smoke-tier case run in this process and as a submitit job: the same stored Measurement."""
    data_dir = str(smoke_sized_data)
    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path / "serial"))
    serial = ex.CaseJob("vgg-relu", "smoke", data_dir=data_dir, runs_dir=str(tmp_path / "serial"))()
    job = ex.CaseJob("vgg-relu", "smoke", data_dir=data_dir, runs_dir=str(tmp_path / "jobs"))
    report = ex.wait(ex.submit([job], ex.Engine.LOCAL, tmp_path / "logs", CPU), poll_s=1, progress=lambda _: None)
    assert report.failures == [] and len(report.results) == 1
    measured = report.results[0]["measurement"]
    for key in ("clean_accuracy", "robust_accuracy", "n_clean", "n_robust", "train_loss"):
        assert measured[key] == serial["measurement"][key], key
    assert (tmp_path / "jobs" / "measurements" / "smoke" / "vgg-relu.json").is_file()


def test_slurm_jobs_request_what_each_job_needs(tmp_path, monkeypatch):
    """The sbatch script submitit writes for a full-tier case (no Slurm here: a stand-in srun satisfies its check)."""
    import os

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    request = ex.Resources(**{**ex.FULL_CASE.__dict__, "partition": "gpu"})
    script = ex.executor(ex.Engine.SLURM, tmp_path / "logs", request)._executor._make_submission_file_text("cmd", "u")
    for line in ("--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=240", "--partition=gpu",
                 "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, script


def test_kafrob_submit_runs_a_tiers_cases_as_local_jobs(smoke_sized_data, tmp_path):
    """`kafrob submit` as the README shows it, in a child process, with the local executor."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "KAFROB_RUNS_DIR": str(tmp_path / "runs"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "kafrob.cli", "submit", "--tier", "smoke", "--cases", "vgg-relu",
                          "--executor", "local", "--jobs-dir", str(tmp_path / "logs"), "--data-dir",
                          str(smoke_sized_data)], env=env, capture_output=True, text=True)
    summary = json.loads(out.stdout)
    assert summary["cases"] == summary["finished"] == 1 and summary["job_failures"] == [], out.stderr[-2000:]
    assert (tmp_path / "runs" / "measurements" / "smoke" / "vgg-relu.json").is_file()
    assert "jobs 1 done, 0 running or queued, 0 failed of 1" in out.stderr
