"""The executor contract: how a plan's runs reach processes, GPUs, a Slurm cluster or Ray.

An executor never trains anything itself and never writes the results store. The driver
(``kdbench run --executor NAME``) walks the plan's DAG and hands it :class:`Task` s — one run,
or a cohort of runs — each a command line (``python -m kdbench execute PLAN --run ID …``) that
writes ``WORK_DIR/RUN_ID/result.json`` for each of its runs under the run's lock. The driver
collects those records into the store. So an executor only has to start commands where they
should run and say when each one has ended: a worker killed mid-run is a task that ended
without its results, and the driver submits it again (the run resumes from its checkpoint).

A plugin adds an executor (Kubernetes, LSF, …) by returning an :class:`ExecutorSpec` from
``kdbench_register_executors``; ``builder(options)`` returns an object with the methods of
:class:`Executor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, final

__all__ = ["Ended", "Executor", "ExecutorOptions", "ExecutorSpec", "Task"]


@final
@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work: the runs it settles, the command that does it, and what it needs."""

    key: str
    """A name unique within the driver (the first run's id and the attempt)."""
    run_ids: tuple[str, ...]
    """The runs it executes (several: a cohort, trained in lockstep by one process)."""
    command: tuple[str, ...]
    """The argv to run (``python -m kdbench execute PLAN --run ID …`` with the driver's options)."""
    label: str
    """What a person reads in progress lines (e.g. ``kd resnet8x4←resnet32x4 seed=0``)."""
    work_dir: Path
    """The runs' work root: each run writes ``work_dir/RUN_ID/result.json``."""
    gpus: float = 0.0
    """GPUs the task needs (0 on the CPU; a fraction where several tasks share one GPU)."""
    log: Path | None = None
    """Where the task's standard output and error should go (None: the executor chooses)."""
    after: tuple[str, ...] = ()
    """Keys of submitted tasks this one must wait for (only given to executors with ``dependencies``)."""


@final
@dataclass(frozen=True, slots=True)
class Ended:
    """A task that ended: its exit code (None when the executor lost it, e.g. a node died)."""

    task: Task
    exit_code: int | None
    reason: str = ""
    """Why it ended without results, when the executor knows (``SIGKILL``, ``PREEMPTED``, ``TIMEOUT``…)."""


@dataclass(frozen=True, slots=True)
class ExecutorOptions:
    """What the command line says about executing: workers, GPUs and cluster settings (by name)."""

    workers: int | None = None
    """Tasks at once (local: processes; None: one per visible GPU, else 1)."""
    runs_per_gpu: int = 1
    """Tasks sharing one GPU (local: processes per GPU; Ray: fractional ``num_gpus``)."""
    processes_per_run: int = 1
    """DDP processes of one run (``--nproc-per-node``): a task then needs that many GPUs of one node."""
    device: str = "cpu"
    """The training device the runs were asked for (``cuda``: tasks are given GPUs)."""
    wait: bool = True
    """False: submit and return (a cluster runs the tasks; ``kdbench collect`` ingests their results)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Executor-specific settings (``slurm_partition``, ``slurm_time``, ``ray_address``, …)."""


class Executor(Protocol):
    """What the driver calls: submit tasks while there is room, poll for the ones that ended, shut down.

    An executor whose class sets ``dependencies = True`` can hold a task until the tasks in its
    ``after`` have ended (Slurm's ``--dependency``): with ``--no-wait`` the driver then submits the
    whole plan at once and returns.
    """

    def capacity(self) -> int:
        """Return how many more tasks may be submitted now (the driver keeps the rest until there is room)."""

    def submit(self, task: Task) -> None:
        """Start ``task`` (do not wait for it)."""

    def poll(self, timeout: float) -> list[Ended]:
        """Return the tasks that ended since the last call, waiting up to ``timeout`` seconds for one."""

    def shutdown(self, cancel: bool) -> None:
        """Release what the executor holds; with ``cancel``, stop the tasks still running (they resume later)."""


@final
@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    """An executor: ``builder(options)`` returns an :class:`Executor`."""

    name: str
    builder: Callable[[ExecutorOptions], Executor]
    description: str
    needs: str = ""
    """What it needs installed or running (shown by ``kdbench list executors``)."""
