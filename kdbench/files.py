"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of either.

Every writer in kdbench and its plugins goes through here: the bytes go to a
uniquely named temporary file in the target's directory (so two processes
writing one path never share a temporary), are flushed and fsynced, and the
temporary replaces the target with ``os.replace``. On any error the temporary
is removed and the target is left as it was. The new file gets the permissions
a plain ``open(path, "w")`` would give it (0o666 less the umask), not the
owner-only ones of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "load_state"]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], previous: str | os.PathLike[str] | None = None
) -> None:
    """Replace ``path`` atomically with what ``write(handle)`` writes to a binary handle.

    The parent directory is created if needed. The temporary file is unique to
    this call (``.NAME.*.tmp`` beside the target) and removed on failure. With
    ``previous``, the file being replaced is kept there (one generation back): a crash
    between the two renames leaves the previous generation, never nothing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if previous is not None and target.exists():
            os.replace(target, previous)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """Return the process umask without changing it (Linux's /proc, else set-and-restore)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` atomically with ``data``."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` atomically with ``text`` encoded as UTF-8 (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(
    payload: Mapping[str, Any], path: str | os.PathLike[str], previous: str | os.PathLike[str] | None = None
) -> None:
    """Replace ``path`` atomically with ``torch.save(dict(payload))`` (keeping the replaced file at ``previous``)."""
    import torch

    atomic_write(path, lambda handle: torch.save(dict(payload), handle), previous)


def load_state(path: Path, advice: str = "delete it to restart this run from scratch") -> dict[str, Any]:
    """Return the dict ``torch.save`` wrote at ``path`` (tensors and plain data only: ``weights_only``).

    A missing or unreadable file raises CheckpointError naming it, leaves it as it is, and adds ``advice``.
    """
    import argparse
    import warnings

    import torch

    from kdbench.errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # RepDistiller stores its argparse options beside the weights: allow exactly that class.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on odd pickle protocols: the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({_reason(exc)}); it was left as is — {advice}") from None


def _reason(exc: BaseException) -> str:
    """Return why torch could not load a file, in one line (without torch's advice to unpickle it unsafely)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:  # the file is no PyTorch file of weights: torch suggests weights_only=False, which we never do
        detail = text.split(marker, 1)[1].strip().split("\n\n", 1)[0].strip()
        return f"not a file of weights torch can read safely: {detail or type(exc).__name__}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
