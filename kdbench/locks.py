"""Run locks: one process at a time trains a run; the lock dies with its holder.

A lock is an advisory ``flock`` on ``WORK_DIR/RUN_ID/.lock`` (``msvcrt.locking`` on
Windows). The operating system releases it when the holding process exits, however it
exits (kill -9 included), so a crashed driver never leaves a run locked. Locks work
between processes on one machine and on file systems that support ``flock`` across
hosts (local disks, most NFSv4 and Lustre set-ups).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class RunLock:
    """An exclusive lock on a run's work directory (created if needed)."""

    def __init__(self, work_dir: Path) -> None:
        self.path = Path(work_dir) / LOCK_NAME
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Return whether this object holds the lock."""
        return self._descriptor is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; return False at once if another process holds it and ``blocking`` is False."""
        if self._descriptor is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _lock(descriptor, blocking):
                os.close(descriptor)
                return False
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            _unlock(descriptor)
            os.close(descriptor)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _lock(descriptor: int, blocking: bool) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True
    mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK  # pragma: no cover - Windows
    try:  # pragma: no cover - Windows
        msvcrt.locking(descriptor, mode, 1)
    except OSError:  # pragma: no cover - Windows
        return False
    return True  # pragma: no cover - Windows


def _unlock(descriptor: int) -> None:
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
