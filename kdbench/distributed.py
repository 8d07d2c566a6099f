"""One run over several processes of a node (DDP): joining the group, and launching it torchrun's way.

``kdbench execute PLAN --run ID --nproc-per-node N`` starts N copies of itself with the
environment ``torchrun`` gives its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); ``torchrun --nproc-per-node N -m
kdbench execute …`` does the same. Each copy joins the process group (NCCL on CUDA, gloo on
the CPU) and trains its part of every global batch; the engine averages gradients once per
step, as ``DistributedDataParallel`` does (see :class:`kdbench.engine.EngineOptions`). A copy
that fails stops the others; the launcher returns its exit code.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from kdbench.errors import KdbenchError

__all__ = ["init_distributed", "launch", "local_rank", "torchrun_world"]


def torchrun_world() -> tuple[int, int]:
    """Return (rank, world size) from the launcher's environment ((0, 1) outside one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    try:
        return int(os.environ["RANK"]), world
    except (KeyError, ValueError):
        raise KdbenchError(
            "WORLD_SIZE is set without a valid RANK: start kdbench with --nproc-per-node or torchrun"
        ) from None


def local_rank() -> int:
    """Return this process's rank on its node (its GPU index)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def init_distributed(device: Any) -> tuple[int, int]:
    """Join the process group of the launcher's environment (once); return (rank, world size)."""
    rank, world = torchrun_world()
    if world == 1:
        return rank, world
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        atexit.register(_leave)
    return rank, world


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(argv: Sequence[str], nproc: int, poll_seconds: float = 0.2) -> int:
    """Run ``python -m kdbench ARGV`` as ``nproc`` ranks of one group on this node; return the exit code.

    The first rank to fail ends the others (SIGTERM, then SIGKILL after 10 s); 0 when all succeed.
    """
    port = str(_free_port())
    processes = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
        env.update(LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, "-m", "kdbench", *argv], env=env))
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                _stop(processes)
                return failed[0]
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    except BaseException:
        _stop(processes)
        raise


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
