"""TensorBoard logging of every run: per-epoch scalars, the config, hyper-parameters and final metrics.

Optional: needs ``pip install kdbench[tensorboard]`` (``torch.utils.tensorboard``).
Without it the plugin stays loaded, logs nothing and warns once, at the first
run. Disable it with ``-p no:tensorboard``. Events go to ``<work_dir>/tensorboard/``:

- ``top1/test``, ``lr`` and ``loss/<term>`` each epoch, the step being the epoch;
  a method's phase before the main training logs under ``<phase>/...`` so that
  its epochs do not overwrite the main ones;
- the run's config as text when it starts (or resumes);
- at the end, the run's hyper-parameters and ``hparam/best_top1``, ``hparam/last_top1``
  for the HParams dashboard, and the error of a failed run as text.

A resumed run writes a new event file beside the old ones; TensorBoard reads them as one run.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench import EpochRecord, RunInfo, RunResult, hookimpl

__all__ = ["LOG_DIR"]

LOG_DIR = "tensorboard"
_writers: dict[Path, Any] = {}  # work dir of a run in progress → its open SummaryWriter


@functools.cache
def _writer_class() -> type | None:
    """Return ``SummaryWriter``, or None after warning (once per process) that TensorBoard is unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # missing, or installed but broken: either way no logging, no failed runs
        warnings.warn(
            f"TensorBoard logging is off ({type(exc).__name__}: {exc}); "
            "install it with `pip install kdbench[tensorboard]`, or disable the plugin with `-p no:tensorboard`",
            stacklevel=2,
        )
        return None
    return SummaryWriter


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested config values as ``{"a.b": value}``, non-scalars as JSON text (what HParams accepts)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def _close(work_dir: Path) -> None:
    writer = _writers.pop(work_dir, None)
    if writer is not None:
        writer.close()


@hookimpl
def kdbench_run_start(run: RunInfo) -> None:
    """Open the run's writer and log its config."""
    writer_class = _writer_class()
    if writer_class is None:
        return
    _close(run.work_dir)
    writer = writer_class(log_dir=str(run.work_dir / LOG_DIR))
    _writers[run.work_dir] = writer
    config = json.dumps(dict(run.config), indent=2, sort_keys=True, default=str)
    writer.add_text("config", "\n".join(f"    {line}" for line in config.splitlines()))  # markdown code block
    writer.flush()


@hookimpl
def kdbench_epoch_end(run: RunInfo, epoch: EpochRecord) -> None:
    """Log the epoch's test top-1, learning rate and loss terms."""
    writer = _writers.get(run.work_dir)
    if writer is None:
        return
    prefix = "" if epoch.phase == "main" else f"{epoch.phase}/"
    writer.add_scalar(f"{prefix}top1/test", epoch.test_top1, epoch.epoch)
    writer.add_scalar(f"{prefix}lr", epoch.lr, epoch.epoch)
    for term, value in epoch.losses.items():
        writer.add_scalar(f"{prefix}loss/{term}", value, epoch.epoch)
    writer.flush()


@hookimpl
def kdbench_run_end(run: RunInfo, result: RunResult) -> None:
    """Log hyper-parameters and final metrics (or the error), then close the writer whatever happened."""
    writer = _writers.get(run.work_dir)
    if writer is None:
        return
    try:
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/{name}": getattr(result, name) for name in ("best_top1", "last_top1")}
        metrics = {tag: value for tag, value in metrics.items() if value is not None}
        params = {"run_id": run.run_id, "status": result.status, **_flat(run.config)}
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
        if result.error:
            writer.add_text("error", result.error)
    finally:
        _close(run.work_dir)
