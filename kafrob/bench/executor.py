"""The benchmark's units of work as jobs of an existing job engine, submitit: Slurm (job arrays) on a cluster,
local processes elsewhere, or this process (serial).

Two kinds of job, both resumable by construction, so a preempted or timed-out job is requeued by submitit (its
``checkpoint`` hook: ``submitit.helpers.Checkpointable``) and continues where the files on disk say:

* ``ShardJob``: evaluation shards (kafrob.bench.shards). Finished shards are files; a requeued job computes only
  the missing ones, so its merged result equals an uninterrupted run's.
* ``CaseJob``: one tier case (train or load, evaluate, store the Measurement, judge). Training resumes from its
  last per-epoch checkpoint (kafrob.train); the evaluation after it is short and is redone.

A job that fails with an exception (a bad configuration, missing data) is not requeued: submitit requeues on
signals only, so it fails once and ``wait`` reports its error. Results land in the same files the local path
writes; ``kafrob merge``, ``verdict``, ``table`` and ``regenerate`` read them unchanged.

submitit is imported only when jobs are submitted: its import reconfigures Python's logging (dictConfig), which
closes the handlers already installed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Engine(StrEnum):
    SERIAL = "serial"  # in this process, no engine (the CLI's default path)
    LOCAL = "local"  # submitit's local executor: one process per job on this machine
    SLURM = "slurm"  # submitit's Slurm executor: one job array per submission


@dataclass(frozen=True)
class Resources:
    """What each job asks the engine for; ``None`` leaves the engine's default."""

    gpus: int = 0
    cpus: int = 2
    mem_gb: int | None = None
    timeout_min: int = 240
    partition: str | None = None
    max_timeouts: int = 3  # requeues after hitting the time limit (each resumes), then the job fails
    signal_delay_s: int = 90  # the checkpoint signal comes this long before the time limit

    def parameters(self, engine: Engine) -> dict:
        """The executor's parameters: submitit.AutoExecutor's names for Slurm, LocalExecutor's for local."""
        if engine is Engine.LOCAL:  # a process on this machine: no CPU or memory reservation to make
            return {"timeout_min": self.timeout_min, "gpus_per_node": self.gpus, "tasks_per_node": 1,
                    "signal_delay_s": self.signal_delay_s}
        params = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus, "tasks_per_node": 1, "nodes": 1,
                  "gpus_per_node": self.gpus, "slurm_signal_delay_s": self.signal_delay_s}
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


# Per-case requests of the full tier: a GPU-hour of training per case (thesis: about 1 h on one GPU) with room.
FULL_CASE = Resources(gpus=1, cpus=8, mem_gb=32, timeout_min=240)
CPU_SHARD = Resources(gpus=0, cpus=2, mem_gb=8, timeout_min=120)


def exit_at_once(handler: Callable) -> Callable:
    """A signal handler that runs ``handler`` and ends the process at once where it asks to exit.

    submitit's preemption handler checkpoints, requeues and then raises SystemExit wherever the signal interrupts the
    main thread. Inside TensorFlow's C++ code that exception can be replaced (a job requeued while a function was
    being traced failed with pybind11's "MISMATCH of original and normalized active exception types ... REPLACED BY
    SystemExit"), so the job ended as failed instead of requeued. Finished work is on disk (atomic files), so
    nothing is lost by leaving without unwinding."""

    def on_signal(signum, frame):
        try:
            handler(signum, frame)
        except SystemExit as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)

    return on_signal


class _Resumable:
    """submitit calls ``checkpoint`` on preemption or at the time limit and requeues what it returns: the same
    job, which resumes from what is on disk (submitit.helpers.Checkpointable, without importing submitit here).
    Subclasses implement ``run``."""

    def __call__(self):
        handler = signal.getsignal(signal.SIGUSR2)  # submitit's, in a job; the default in this process (serial)
        if callable(handler):
            signal.signal(signal.SIGUSR2, exit_at_once(handler))
        return self.run()

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class ShardJob(_Resumable):
    """Run the (spec, shard) pairs of ``plan`` that have no file under ``root`` yet (all of them with
    ``recompute``); one model in memory at a time. Progress lines go to standard output (a job's log)."""

    def __init__(self, plan: Sequence, root: str | Path, data_dir: str | None = None, recompute: bool = False):
        self.plan, self.root, self.data_dir, self.recompute = list(plan), str(root), data_dir, recompute

    def run(self) -> list[str]:
        from kafrob.bench import run
        from kafrob.data import load_cifar10

        models: dict = {}

        def load(name):
            if name not in models:
                models.clear()
                models[name] = run.load_named_model(name)
            return models[name]

        paths = run.run_shards(self.plan, Path(self.root), load_model=load,
                               load_data=lambda: load_cifar10(self.data_dir), recompute=self.recompute,
                               progress=lambda line: print(line, flush=True))
        return [str(p) for p in paths]


class CaseJob(_Resumable):
    """One tier case or clean-training baseline (``<case>-clean``): ``kafrob.bench.run.benchmark`` (its Measurement
    goes to runs/measurements)."""

    def __init__(self, case: str, tier: str, seed: int = 0, data_dir: str | None = None,
                 runs_dir: str | None = None):
        self.case, self.tier, self.seed, self.data_dir, self.runs_dir = case, tier, seed, data_dir, runs_dir

    def run(self) -> dict:
        if self.runs_dir:
            os.environ["KAFROB_RUNS_DIR"] = self.runs_dir
        from kafrob.bench.cases import CLEAN, experiment_of
        from kafrob.bench.run import benchmark
        from kafrob.bench.tiers import Source, get_tier
        from kafrob.data import load_cifar10

        tier = get_tier(self.tier)
        data = None if tier.source is Source.THESIS_CHECKPOINT else load_cifar10(self.data_dir)
        measurement, failures = benchmark(experiment_of(self.case), tier, data, seed=self.seed, progress=False,
                                          clean=self.case.endswith(CLEAN))
        return {"case": self.case, "measurement": measurement.to_dict(), "failures": failures}


def executor(engine: Engine, folder: str | Path, resources: Resources):
    """submitit's executor for ``engine`` with ``resources`` (logs and pickles under ``folder``)."""
    import submitit

    if engine is Engine.SERIAL:
        raise ValueError("the serial engine runs in this process; call the job instead of submitting it")
    if engine is Engine.LOCAL:
        ex = submitit.LocalExecutor(folder, max_num_timeout=resources.max_timeouts)
    else:
        ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=resources.max_timeouts)
    ex.update_parameters(**resources.parameters(engine))
    return ex


def submit(jobs: Sequence[Callable], engine: Engine, folder: str | Path, resources: Resources) -> list:
    """Submit every job (one Slurm array where the engine has arrays) and return submitit's job handles."""
    ex = executor(engine, folder, resources)
    if engine is Engine.SLURM:
        with ex.batch():
            handles = [ex.submit(job) for job in jobs]
        return handles
    return [ex.submit(job) for job in jobs]


@dataclass
class Report:
    """Where the submitted jobs ended: results of the finished, one error line per failed job."""

    results: list = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def wait(handles: Sequence, *, poll_s: float = 10.0, progress: Callable[[str], None] = print) -> Report:
    """Wait for every job, printing done/running/failed counts when they change; failures are collected, not
    raised, so one bad job does not hide the others' results."""
    report, last = Report(), None
    pending = list(handles)
    while pending:
        still = []
        for job in pending:
            if job.done():
                try:
                    report.results.append(job.result())
                except Exception as exc:  # noqa: BLE001  (any job error is reported, once)
                    report.failures.append(f"job {job.job_id} failed: {_last_line(exc)}")
            else:
                still.append(job)
        pending = still
        line = (f"kafrob: jobs {len(report.results)} done, {len(pending)} running or queued, "
                f"{len(report.failures)} failed of {len(handles)}")
        if line != last:
            progress(line)
            last = line
        if pending:
            time.sleep(poll_s)
    return report


def _last_line(exc: Exception) -> str:
    """The job's own error: submitit wraps it as 'failed during processing with trace:', the remote traceback
    between two dashed lines, then where the logs are. The traceback's last line names the error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    dashes = [i for i, ln in enumerate(lines) if set(ln) == {"-"}]
    if len(dashes) >= 2 and dashes[-1] > dashes[-2] + 1:
        return lines[dashes[-1] - 1]
    return lines[-1] if lines else type(exc).__name__


def shard_jobs(plan: Sequence, jobs: int, root: str | Path, data_dir: str | None = None) -> list[ShardJob]:
    """Split a shard plan into ``jobs`` jobs, every ``jobs``-th (spec, shard) pair each, so that every job covers
    every model and label mode of its shards (the true-label shard reuses the predicted one within a job)."""
    plan = list(plan)
    by_shard: dict[int, list] = {}
    for spec, shard in plan:
        by_shard.setdefault(shard, []).append((spec, shard))
    shards = sorted(by_shard)
    groups = [[pair for s in shards[i::jobs] for pair in by_shard[s]] for i in range(jobs)]
    return [ShardJob(group, root, data_dir) for group in groups if group]
