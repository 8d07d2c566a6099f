"""The Slurm executor: one Slurm job per task, submitted through submitit.

``kdbench run --executor slurm`` submits each ready run (or cohort) as a job running
``python -m kdbench execute …`` on a node; the driver polls the queue and ingests each run's
``result.json`` (the work directory must be on a file system the nodes share). Settings come
from ``--executor-option``: ``slurm_partition``, ``slurm_time`` (minutes, default 1440),
``slurm_mem`` (e.g. ``32G``), ``slurm_cpus`` (per task), ``slurm_gpus`` (per task; default 1
with ``--device cuda``), ``slurm_account``, ``slurm_qos``, ``slurm_constraint``,
``slurm_extra`` (``;``-separated ``--key=value`` sbatch lines), ``slurm_folder`` (submitit's logs).

A job that Slurm preempts or times out is requeued by submitit (the callable is checkpointable)
and the run resumes from its checkpoint; a job that is cancelled (``scancel``) or lost ends
without a result, and the driver submits it again (``--retries``). With ``--no-wait`` every
task is submitted at once, each depending on the jobs of the runs it needs
(``--dependency=afterany``), and the driver returns: ``kdbench status`` shows the queue's state
and ``kdbench collect`` ingests the results.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench import hookimpl
from kdbench.executors import Ended, ExecutorOptions, ExecutorSpec, Task

__all__ = ["SlurmExecutor", "TaskCommand"]


class TaskCommand:
    """What a Slurm job calls: run the task's command; when Slurm preempts or times it out, requeue it."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)

    def __call__(self) -> int:
        """Run the command in the job; return its exit code."""
        return subprocess.run(self.command, check=False).returncode

    def checkpoint(self) -> Any:
        """Ask submitit to requeue the same command (the run resumes from its own checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TaskCommand(self.command))


def _parameters(options: ExecutorOptions) -> dict[str, Any]:
    """Return submitit's SlurmExecutor parameters from the ``slurm_*`` settings (unknown ones refused)."""
    settings = dict(options.settings)
    per_run = options.processes_per_run  # a run of N DDP processes: N GPUs of one node
    gpus = int(settings.pop("slurm_gpus", per_run if options.device.startswith("cuda") else 0))
    parameters: dict[str, Any] = {"time": int(settings.pop("slurm_time", 24 * 60)), "job_name": "kdbench"}
    if gpus:
        parameters["gpus_per_task"] = gpus
    names = {"slurm_partition": "partition", "slurm_mem": "mem", "slurm_cpus": "cpus_per_task",
             "slurm_account": "account", "slurm_qos": "qos", "slurm_constraint": "constraint"}  # fmt: skip
    for key, name in names.items():
        if key in settings:
            value = settings.pop(key)
            parameters[name] = int(value) if key == "slurm_cpus" else value
    extra = {}
    for line in filter(None, (part.strip() for part in settings.pop("slurm_extra", "").split(";"))):
        key, _, value = line.removeprefix("--").partition("=")
        extra[key] = value or True
    if extra:
        parameters["additional_parameters"] = extra
    settings.pop("slurm_folder", None)
    if settings:
        raise ValueError(f"unknown Slurm settings {sorted(settings)}")
    return parameters


class SlurmExecutor:
    """Submits tasks as Slurm jobs with submitit; a task ends when its job leaves the queue."""

    dependencies = True

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise ImportError("the Slurm executor needs submitit: pip install 'kdbench[cluster]'") from exc
        if subprocess.run(["sinfo", "-h"], capture_output=True, check=False).returncode != 0:
            raise RuntimeError("no Slurm cluster answers here (`sinfo` failed)")
        folder = Path(options.settings.get("slurm_folder", "slurm-logs")).resolve()
        self.executor = submitit.SlurmExecutor(folder=folder)
        self.parameters = _parameters(options)
        self.jobs: dict[str, tuple[Task, Any]] = {}

    def capacity(self) -> int:
        """Return a large number: Slurm queues what it cannot start yet."""
        return 1_000_000

    def submit(self, task: Task) -> None:
        """Submit ``task`` as one job (after the jobs of the tasks in ``task.after``)."""
        parameters = dict(self.parameters)
        ids = [self.jobs[key][1].job_id for key in task.after if key in self.jobs]
        if ids:
            extra = dict(parameters.get("additional_parameters", {}))
            extra["dependency"] = "afterany:" + ":".join(ids)
            parameters["additional_parameters"] = extra
        self.executor.update_parameters(**parameters)
        job = self.executor.submit(TaskCommand(task.command))
        self.jobs[task.key] = (task, job)

    def poll(self, timeout: float) -> list[Ended]:
        """Return the tasks whose job left the queue (with their exit code when the job returned one)."""
        deadline = time.monotonic() + timeout
        while True:
            queued = _queued_ids()
            ended = []
            for key, (task, job) in list(self.jobs.items()):
                if job.job_id in queued and not job.paths.result_pickle.exists():
                    continue
                ended.append(_ended(task, job))
                del self.jobs[key]
            if ended or time.monotonic() >= deadline:
                return ended
            time.sleep(0.5)

    def job_ids(self) -> dict[str, str]:
        """Return task key → Slurm job id of the tasks submitted and not yet ended."""
        return {key: job.job_id for key, (_, job) in self.jobs.items()}

    def shutdown(self, cancel: bool) -> None:
        """With ``cancel``, scancel every job still queued or running (their runs resume when run again)."""
        if cancel and self.jobs:
            subprocess.run(["scancel", *(job.job_id for _, job in self.jobs.values())], check=False)


def _queued_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False)
    return set(out.stdout.split()) if out.returncode == 0 else set()


def _ended(task: Task, job: Any) -> Ended:
    if not job.paths.result_pickle.exists():
        return Ended(task, None, f"Slurm job {job.job_id} left the queue without a result (cancelled or lost)")
    try:
        return Ended(task, int(job.result()))
    except Exception as exc:  # the job's own failure, as submitit reports it
        return Ended(task, None, f"Slurm job {job.job_id}: {type(exc).__name__}")


@hookimpl
def kdbench_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="slurm",
            builder=SlurmExecutor,
            description="one Slurm job per run or cohort, through submitit (--executor-option slurm_partition=…)",
            needs="a Slurm cluster (sbatch, squeue) and submitit; a work directory the nodes share",
        )
    ]
