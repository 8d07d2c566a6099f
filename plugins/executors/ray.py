"""The Ray executor: one Ray task per run or cohort, on a running cluster or a local one.

``kdbench run --executor ray`` connects to ``--executor-option ray_address=…`` (``auto``: the
cluster this machine belongs to) or, without an address, starts a local Ray cluster for the
duration of the command. Each task asks for ``num_gpus`` = 1 / ``--runs-per-gpu`` on CUDA
(fractions pack several runs on one GPU) and ``ray_cpus`` CPUs (default 1), and runs
``python -m kdbench execute …`` on whichever node Ray picks (the work directory must be
shared by the nodes). A worker process that dies is retried by Ray (``ray_max_retries``,
default 1) and then by the driver (``--retries``); the run resumes from its checkpoint.
"""

from __future__ import annotations

import subprocess
from typing import Any

from kdbench import hookimpl
from kdbench.executors import Ended, ExecutorOptions, ExecutorSpec, Task

__all__ = ["RayExecutor", "run_command"]


def run_command(command: list[str], log: str | None) -> int:
    """Run a task's command in a Ray worker; return its exit code (its output goes to ``log``)."""
    if log is None:
        return subprocess.run(command, check=False).returncode
    with open(log, "ab") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


class RayExecutor:
    """Submits tasks as Ray tasks; a task ends when its object ref is ready (or its worker is lost for good)."""

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the Ray executor needs ray: pip install 'kdbench[cluster]'") from exc
        settings = dict(options.settings)
        address = settings.pop("ray_address", None)
        self.cpus = float(settings.pop("ray_cpus", 1))
        retries = int(settings.pop("ray_max_retries", 1))
        if settings:
            raise ValueError(f"unknown Ray settings {sorted(settings)}")
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.remote = ray.remote(max_retries=retries)(run_command)
        self.refs: dict[Any, Task] = {}

    def capacity(self) -> int:
        """Return a large number: Ray queues tasks until their resources are free."""
        return 1_000_000

    def submit(self, task: Task) -> None:
        """Submit ``task`` with its GPU share and CPUs."""
        log = str(task.log) if task.log else None
        ref = self.remote.options(num_gpus=task.gpus, num_cpus=self.cpus).remote(list(task.command), log)
        self.refs[ref] = task

    def poll(self, timeout: float) -> list[Ended]:
        """Return the tasks whose Ray task returned or failed for good, waiting up to ``timeout`` seconds."""
        if not self.refs:
            return []
        done, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        ended = []
        for ref in done:
            task = self.refs.pop(ref)
            try:
                ended.append(Ended(task, int(self.ray.get(ref))))
            except Exception as exc:  # the worker died more often than Ray retries
                ended.append(Ended(task, None, f"Ray: {type(exc).__name__}"))
        return ended

    def shutdown(self, cancel: bool) -> None:
        """With ``cancel``, cancel the tasks still running; stop the local cluster this executor started."""
        if cancel:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


@hookimpl
def kdbench_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="ray",
            builder=RayExecutor,
            description="one Ray task per run or cohort (fractional GPUs pack runs; --executor-option ray_address=…)",
            needs="ray; a running cluster (ray_address) or none (a local one is started); a shared work directory",
        )
    ]
