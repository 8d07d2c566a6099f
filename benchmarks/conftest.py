"""Shared fixtures of the step benchmarks: device settings, synthetic CIFAR-shaped data, a per-step summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench import AugmentSpec, DatasetSpec, ImageData

NUM_CLASSES = 100
BATCH_SIZE = 64
DATASET_NAME = "bench-synthetic-cifar100"
# CIFAR-100 normalisation, as the cifar100 dataset plugin registers it.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """How much to time on one device: batch size, steps per round (one epoch), timed and warm-up rounds."""

    device: torch.device
    batch_size: int
    steps: int
    rounds: int
    warmup_rounds: int
    num_workers: int


@dataclass(frozen=True, slots=True)
class _Row:
    device: str
    label: str
    steps: int
    median_ms: float
    min_ms: float


_ROWS = pytest.StashKey[list[_Row]]()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


def _settings(kind: str) -> BenchSettings:
    """Return the round sizes for ``kind``; ``KDBENCH_BENCH_STEPS`` / ``KDBENCH_BENCH_ROUNDS`` override them."""
    if kind == "cuda":
        device, steps, rounds, warmup, workers = torch.device("cuda"), 32, 10, 2, min(8, os.cpu_count() or 1)
    else:
        device, steps, rounds, warmup, workers = torch.device("cpu"), 4, 3, 1, 0
    return BenchSettings(
        device=device,
        batch_size=BATCH_SIZE,
        steps=_env_int("KDBENCH_BENCH_STEPS", steps),
        rounds=_env_int("KDBENCH_BENCH_ROUNDS", rounds),
        warmup_rounds=warmup,
        num_workers=workers,
    )


@pytest.fixture(params=["cuda" if torch.cuda.is_available() else "cpu"])
def settings(request: pytest.FixtureRequest) -> BenchSettings:
    """The device available here (CUDA if present, else CPU) and its round sizes."""
    return _settings(request.param)


@pytest.fixture
def synthetic_cifar(settings: BenchSettings) -> DatasetSpec:
    """A CIFAR-100-shaped dataset of random uint8 images, exactly ``steps`` batches of train data."""
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, NUM_CLASSES, (n,), dtype=torch.int64, generator=generator)

    num_train = settings.batch_size * settings.steps
    data = ImageData(images(num_train), labels(num_train), images(BATCH_SIZE), labels(BATCH_SIZE))

    def loader(root: Path, download: bool) -> ImageData:
        return data

    return DatasetSpec(
        name=DATASET_NAME,
        loader=loader,
        description="random uint8 images shaped like CIFAR-100, for timing only",
        num_classes=NUM_CLASSES,
        image_size=(3, 32, 32),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        augment=AugmentSpec(pad=4, flip=True),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = []


@pytest.fixture
def record_per_step(request: pytest.FixtureRequest) -> Callable[[Any, str, BenchSettings], None]:
    """Return ``record(benchmark, label, settings)``: put steps and per-step ms in ``extra_info`` and the summary."""

    def record(benchmark: Any, label: str, settings: BenchSettings) -> None:
        benchmark.extra_info.update(steps=settings.steps, batch_size=settings.batch_size, device=settings.device.type)
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return
        stats = benchmark.stats.stats
        row = _Row(
            device=settings.device.type,
            label=label,
            steps=settings.steps,
            median_ms=stats.median / settings.steps * 1e3,
            min_ms=stats.min / settings.steps * 1e3,
        )
        benchmark.extra_info.update(per_step_ms=round(row.median_ms, 3), per_step_min_ms=round(row.min_ms, 3))
        request.config.stash[_ROWS].append(row)

    return record


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print per-step times (round time / steps) and each one's speed-up over the classic loop on its device."""
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    title = f"KD step resnet32x4→resnet8x4, batch {BATCH_SIZE}: ms per step (torch {torch.__version__})"
    terminalreporter.write_sep("-", title)
    terminalreporter.write_line(f"{'device':6s} {'loop':36s} {'median':>9s} {'min':>9s}  {'speed-up (median, min)':s}")
    for device in dict.fromkeys(row.device for row in rows):
        on_device = [row for row in rows if row.device == device]
        classic = next((row for row in on_device if row.label == "classic loop"), None)
        for row in on_device:
            speedup = ""
            if classic is not None:
                speedup = f"{classic.median_ms / row.median_ms:.2f}x, {classic.min_ms / row.min_ms:.2f}x"
            terminalreporter.write_line(
                f"{row.device:6s} {row.label:36s} {row.median_ms:9.1f} {row.min_ms:9.1f}  {speedup}"
                f"   ({row.steps} steps/round)"
            )
    threads = torch.get_num_threads()
    terminalreporter.write_line(f"(round time / steps per round; {threads} intra-op CPU threads)")
