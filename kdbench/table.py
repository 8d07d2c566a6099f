"""The exact teacher table: a frozen teacher's logits for every train image under every view.

The engine's train augmentation is a crop of the zero-padded image at one of ``(2·pad+1)²``
offsets, optionally flipped: each image has :func:`~kdbench.augment.num_views` views (162 for
CIFAR, 9 for digits). A frozen teacher in eval mode gives each (image, view) one answer, so its
logits can be computed once — view by view, over the whole train set — and read instead of a
forward pass by every run, seed and cohort of that teacher whose method reads only the logits.
This is the same math as the live teacher, not an approximation of it (unlike soft labels stored
for sampled crops, or a cache keyed by sample index alone, which would freeze the crop); the only
difference is floating-point summation order across batch compositions (≤1e-5 relative).

On disk (the teacher cache, ``TEACHER_ROOT/tables/``): ``KEY.f32``, float32 laid out
view-major (views × images × classes), and ``KEY.json`` (what it was built from, its SHA-256,
the build time). ``KEY`` digests the teacher's weights, the train set and the augmentation,
so another teacher, dataset or view rule never reads it. The build is resumable (views done
are kept in ``KEY.partial`` and its ``.json``), written under a file lock (two processes build
it once) and published atomically; the digest is checked before the table is first used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.augment import Views, apply_views, normalize, num_views, view_index
from kdbench.errors import CheckpointError
from kdbench.files import atomic_write_text
from kdbench.locks import RunLock
from kdbench.specs import DatasetSpec

__all__ = ["TABLE_FORMAT", "TableLayout", "TeacherTable", "build_table", "table_key", "weights_digest"]

TABLE_FORMAT = "kdbench-teacher-table-1"
_CHUNK = 1 << 20


def weights_digest(model: nn.Module) -> str:
    """Return the SHA-256 (16 hex digits) of a model's state dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()[:16]


def table_key(teacher_digest: str, data_digest: str, dataset: DatasetSpec) -> str:
    """Return the key of the table of a teacher (weights digest) on a train set (data digest) and its views."""
    augment = dataset.augment
    spec = {
        "format": TABLE_FORMAT,
        "teacher": teacher_digest,
        "data": data_digest,
        "pad": augment.pad,
        "flip": augment.flip,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class TableLayout:
    """A table's shape: views × images × classes (float32, view-major)."""

    views: int
    images: int
    classes: int

    @property
    def floats(self) -> int:
        """Return the number of float32 values."""
        return self.views * self.images * self.classes


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK * 8):
            digest.update(block)
    return digest.hexdigest()


class TeacherTable:
    """A built table, memory-mapped; :meth:`logits` gathers a batch's rows onto the training device."""

    def __init__(self, path: Path, layout: TableLayout, pad: int, flip: bool, device: torch.device) -> None:
        self.path = path
        self.pad, self.flip = pad, flip
        self.layout = layout
        mapped = np.memmap(path, dtype=np.float32, mode="c", shape=(layout.views, layout.images, layout.classes))
        values = torch.from_numpy(mapped)
        # On an accelerator the table is held in its memory (gathers stay on the device); on the CPU it stays mapped.
        self.values = values.to(device) if device.type != "cpu" else values

    def logits(self, indices: torch.Tensor, views: Views) -> torch.Tensor:
        """Return the teacher's logits of train samples ``indices`` under ``views`` (B×classes, float32)."""
        view = view_index(views, self.pad, self.flip).to(self.values.device)
        rows = self.values[view, indices.to(self.values.device)]
        return rows.to(indices.device, non_blocking=True)

    @classmethod
    def open(cls, root: Path, key: str, device: torch.device) -> TeacherTable | None:
        """Return the table ``key`` under ``root`` if it is built, its digest checked; None if not built.

        A table whose file does not match its recorded SHA-256 raises CheckpointError naming it.
        """
        meta_path, path = root / f"{key}.json", root / f"{key}.f32"
        if not meta_path.is_file() or not path.is_file():
            return None
        meta = _read_meta(meta_path)
        layout = TableLayout(meta["views"], meta["images"], meta["classes"])
        if path.stat().st_size != layout.floats * 4 or _file_sha256(path) != meta["sha256"]:
            raise CheckpointError(f"teacher table {path} does not match its digest in {meta_path.name}; delete both")
        return cls(path, layout, meta["pad"], meta["flip"], device)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"teacher table record {path} is unreadable ({exc}); delete it to rebuild") from None
    if not isinstance(meta, dict) or meta.get("format") != TABLE_FORMAT:
        raise CheckpointError(f"teacher table record {path} is not a {TABLE_FORMAT} record; delete it to rebuild")
    return meta


@torch.no_grad()
def _fill_view(
    teacher: nn.Module, images: torch.Tensor, dataset: DatasetSpec, view: int, batch_size: int, out: np.ndarray
) -> None:
    """Write the teacher's logits of every image under view ``view`` into ``out`` (images × classes)."""
    augment = dataset.augment
    side = 2 * augment.pad + 1
    flips, offset = (2, view) if augment.flip else (1, view)
    flip, offset = offset % flips == 1, offset // flips
    dy, dx = divmod(offset, side)
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        count = chunk.shape[0]
        device = chunk.device
        views = Views(
            dy=torch.full((count,), dy, dtype=torch.int64, device=device),
            dx=torch.full((count,), dx, dtype=torch.int64, device=device),
            flip=torch.full((count,), flip, dtype=torch.bool, device=device),
        )
        logits = teacher(normalize(apply_views(chunk, views, augment.pad), dataset.mean, dataset.std))
        out[start : start + count] = logits.float().cpu().numpy()


def build_table(
    teacher: nn.Module,
    images: torch.Tensor,
    dataset: DatasetSpec,
    root: Path,
    key: str,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> TeacherTable:
    """Build (or finish building) the table ``key`` of ``teacher`` on the uint8 train ``images``; return it.

    The teacher runs in eval mode, fp32, view by view. Views done survive a kill (``KEY.partial``);
    a process that finds another building the same table waits for it and reads its result.
    """
    device = device or images.device
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root / f"{key}.build"):
        table = TeacherTable.open(root, key, device)
        if table is not None:
            return table
        return _build_locked(teacher, images, dataset, root, key, batch_size, device)


def _build_locked(
    teacher: nn.Module,
    images: torch.Tensor,
    dataset: DatasetSpec,
    root: Path,
    key: str,
    batch_size: int,
    device: torch.device,
) -> TeacherTable:
    augment = dataset.augment
    was_training = teacher.training
    teacher.eval()
    probe = teacher(normalize(images[:2].to(device), dataset.mean, dataset.std))
    layout = TableLayout(num_views(augment.pad, augment.flip), images.shape[0], probe.shape[1])
    partial, progress_path = root / f"{key}.partial", root / f"{key}.partial.json"
    done, seconds = _partial_progress(progress_path, partial, layout)
    mode = "r+" if done else "w+"
    out = np.memmap(partial, dtype=np.float32, mode=mode, shape=(layout.views, layout.images, layout.classes))
    images = images.to(device)
    try:
        for view in range(done, layout.views):
            tick = time.perf_counter()
            _fill_view(teacher, images, dataset, view, batch_size, out[view])
            out.flush()
            seconds += time.perf_counter() - tick
            atomic_write_text(progress_path, json.dumps({"views_done": view + 1, "seconds": seconds}))
    finally:
        teacher.train(was_training)
    del out
    meta = {
        "format": TABLE_FORMAT,
        "key": key,
        "views": layout.views,
        "images": layout.images,
        "classes": layout.classes,
        "pad": augment.pad,
        "flip": augment.flip,
        "sha256": _file_sha256(partial),
        "build_seconds": round(seconds, 3),
    }
    os.replace(partial, root / f"{key}.f32")
    atomic_write_text(root / f"{key}.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    progress_path.unlink(missing_ok=True)
    return TeacherTable(root / f"{key}.f32", layout, augment.pad, augment.flip, device)


def _partial_progress(progress_path: Path, partial: Path, layout: TableLayout) -> tuple[int, float]:
    """Return (views done, seconds spent) of an interrupted build that fits ``layout``; (0, 0) to start afresh."""
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        done, seconds = int(progress["views_done"]), float(progress["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0.0
    if not partial.is_file() or partial.stat().st_size != layout.floats * 4 or not 0 < done <= layout.views:
        return 0, 0.0
    return done, seconds
