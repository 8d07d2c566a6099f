"""The local executor: a pool of worker processes on this machine, each pinned to a GPU.

``--workers N`` processes at once (default: one per visible GPU, else 1); with
``--runs-per-gpu K`` each GPU takes K tasks at once (small CIFAR runs leave a GPU half idle); with
``--nproc-per-node N`` each task is one run of N DDP processes and gets N GPUs.
Every task is its own process (``python -m kdbench execute …``), in its own process group, with
``CUDA_VISIBLE_DEVICES`` set to its GPU: a worker that crashes or is killed takes nothing else
with it, and the driver submits its task again (the run resumes from its checkpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from kdbench import hookimpl
from kdbench.executors import Ended, ExecutorOptions, ExecutorSpec, Task

__all__ = ["LocalExecutor", "visible_gpus"]


def visible_gpus() -> list[str]:
    """Return the GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (empty without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except Exception:
        return []


@dataclass
class _Slot:
    gpu: str | None
    task: Task | None = None
    process: subprocess.Popen | None = None


class LocalExecutor:
    """Worker processes on this machine: one task per slot, a slot per worker (× runs per GPU)."""

    def __init__(self, options: ExecutorOptions) -> None:
        gpus = visible_gpus() if options.device.startswith("cuda") else []
        if (options.workers is not None and options.workers < 1) or options.runs_per_gpu < 1:
            raise ValueError("--workers and --runs-per-gpu must be at least 1")
        per_gpu = options.runs_per_gpu if gpus else 1
        group = options.processes_per_run if gpus else 1  # a run of N processes gets N GPUs
        if gpus and len(gpus) < group:
            raise ValueError(f"a run of {group} processes needs {group} GPUs; {len(gpus)} visible")
        groups = [",".join(gpus[i : i + group]) for i in range(0, len(gpus) - group + 1, group)]
        workers = options.workers or max(1, len(groups))
        self.slots = [
            _Slot(groups[worker % len(groups)] if gpus else None) for worker in range(workers) for _ in range(per_gpu)
        ]

    def capacity(self) -> int:
        """Return the free slots."""
        return sum(slot.task is None for slot in self.slots)

    def submit(self, task: Task) -> None:
        """Start ``task`` in a free slot, in a new process group, pinned to the slot's GPU."""
        slot = next(slot for slot in self.slots if slot.task is None)
        env = dict(os.environ)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        log = open(task.log, "ab") if task.log else subprocess.DEVNULL
        slot.process = subprocess.Popen(
            list(task.command), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if task.log:
            log.close()
        slot.task = task

    def poll(self, timeout: float) -> list[Ended]:
        """Return the tasks whose process exited, waiting up to ``timeout`` seconds for one."""
        deadline = time.monotonic() + timeout
        while True:
            ended = []
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    code = slot.process.returncode
                    reason = f"killed by {signal.Signals(-code).name}" if code < 0 else ""
                    ended.append(Ended(slot.task, code, reason))  # type: ignore[arg-type]
                    slot.task, slot.process = None, None
            if ended or time.monotonic() >= deadline:
                return ended
            time.sleep(0.05)

    def shutdown(self, cancel: bool) -> None:
        """With ``cancel``, interrupt every running task (SIGINT to its group: it stops at once, resumable)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                if cancel:
                    os.killpg(slot.process.pid, signal.SIGINT)
                slot.process.wait()


@hookimpl
def kdbench_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            name="local",
            builder=LocalExecutor,
            description="worker processes on this machine, one per visible GPU (--workers, --runs-per-gpu)",
        )
    ]
