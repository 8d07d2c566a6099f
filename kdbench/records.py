"""What the lifecycle hooks receive (a run's identity, one epoch's record, a run's result) and stored-record facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

__all__ = ["MACS_CONVENTION", "EpochRecord", "RunInfo", "RunResult", "stored_latency_ms"]

#: How every stored profile counts MACs (what the leaderboards' efficiency tables say).
MACS_CONVENTION = "multiply-accumulates counted by fvcore at batch 1 (fvcore calls them flops)"


def stored_latency_ms(profile: Mapping[str, Any], batch_size: int) -> float | None:
    """Return the median latency (ms) at ``batch_size`` from a stored profile dict, or None if not timed."""
    for latency in profile.get("latency") or ():
        if int(latency["batch_size"]) == batch_size:
            return float(latency["median_ms"])
    return None


@final
@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run about to train: its id, resolved config and working directory."""

    run_id: str
    config: Mapping[str, Any]
    work_dir: Path
    device: str


@final
@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One finished epoch: mean loss terms over the epoch, LR used, test top-1 (%).

    ``epoch`` counts from 0 inside its ``phase`` (``"main"`` for the main training,
    else the name of a method's phase that runs before it).
    """

    epoch: int
    lr: float
    losses: Mapping[str, float]
    test_top1: float
    seconds: float
    phase: str = "main"
    throughput: Mapping[str, float] | None = None
    """Streaming datasets: ``images_per_second`` trained and ``data_wait`` (the share of the epoch's
    training time spent waiting for the loader); None for device-resident data."""


@final
@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a run: ``status`` is ``finished``, ``diverged`` or ``failed``."""

    status: str
    best_top1: float | None = None
    last_top1: float | None = None
    best_epoch: int | None = None
    curve: tuple[EpochRecord, ...] = field(default_factory=tuple)
    error: str = ""
    wall_seconds: float = 0.0
    extra_params: int = 0
    """Training-only parameters the method added (connectors, embeddings…)."""
