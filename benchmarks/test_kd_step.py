"""One KD training step, resnet32x4 → resnet8x4 at batch 64: the kdbench engine beside the classic loop.

Each round trains one epoch of ``settings.steps`` batches on the same synthetic
CIFAR-shaped data and ends with a host synchronisation, so a round's time is
the device time of its steps. Run with ``make bench``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from classic_loop import ClassicKDLoop, SyntheticCIFAR, train_transform

import kdbench
from kdbench import DatasetSpec, PairSpec, Recipe, SuiteSpec, hookimpl
from kdbench.engine import EngineOptions, RunState, TrainedModel
from kdbench.plan import plan_suite

if TYPE_CHECKING:
    from conftest import BenchSettings

    Record = Callable[[Any, str, BenchSettings], None]

TEACHER = "resnet32x4"
STUDENT = "resnet8x4"
GROUP = "kd-step-resnet32x4-resnet8x4"


class _SyntheticDatasetPlugin:
    """An in-code plugin registering the synthetic dataset, so the engine sees it as any other dataset."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    @hookimpl
    def kdbench_register_datasets(self) -> list[DatasetSpec]:
        return [self.spec]


def _engine_run(dataset: DatasetSpec, options: EngineOptions, batch_size: int) -> RunState:
    """Build the engine's state for the KD run the runner would plan for this pair on ``dataset``."""
    host = kdbench.create_plugin_host(plugins=[("bench_synthetic_data", _SyntheticDatasetPlugin(dataset))])
    suite = SuiteSpec(
        name="bench-kd-step",
        description="one KD step, for timing",
        dataset=dataset.name,
        pairs=(PairSpec(teacher=TEACHER, student=STUDENT),),
        distillers=("kd",),
        seeds=(0,),
        recipe=Recipe(batch_size=batch_size),
    )
    (planned,) = [run for run in plan_suite(suite, host) if run.role == "student"]
    spec = host.datasets.get(planned.dataset)
    data = spec.loader(Path("."), False)
    torch.manual_seed(1)
    teacher = host.models.get(TEACHER).builder(num_classes=spec.num_classes)
    teacher.to(options.device).eval().requires_grad_(False)
    torch.manual_seed(planned.seed)
    student = kdbench.create_model(planned.model, spec.num_classes, host=host)
    factory = functools.partial(host.distillers.get("kd").builder, **planned.params)
    teacher_model = TrainedModel(TEACHER, teacher)
    return RunState(student, factory, teacher_model, planned.recipe, planned.seed, spec, data, options)


def _time_engine(benchmark: Any, run: RunState, settings: BenchSettings) -> None:
    """Time ``train_epoch`` over fresh epoch numbers, one epoch (``settings.steps`` steps) per round."""
    epochs = itertools.count()

    def one_epoch() -> float:
        sums = run.train_epoch(next(epochs))
        return float(sums["kd"])  # one host sync per round: waits for every queued step

    benchmark.pedantic(one_epoch, rounds=settings.rounds, warmup_rounds=settings.warmup_rounds, iterations=1)


@pytest.mark.benchmark(group=GROUP)
def test_classic_loop(
    benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec, record_per_step: Record
) -> None:
    """DataLoader + PIL transforms on the host, copy to the device, ``loss.item()`` every step."""
    data = synthetic_cifar.loader(Path("."), False)
    dataset = SyntheticCIFAR(
        data.train_images, data.train_labels, train_transform(synthetic_cifar.mean, synthetic_cifar.std)
    )
    host = kdbench.create_plugin_host()
    torch.manual_seed(1)
    teacher = host.models.get(TEACHER).builder(num_classes=synthetic_cifar.num_classes)
    student = host.models.get(STUDENT).builder(num_classes=synthetic_cifar.num_classes)
    loop = ClassicKDLoop(
        student, teacher, dataset, settings.device, batch_size=settings.batch_size, num_workers=settings.num_workers
    )

    def one_epoch() -> float:
        loss = loop.run_epoch()
        if settings.device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    benchmark.pedantic(one_epoch, rounds=settings.rounds, warmup_rounds=settings.warmup_rounds, iterations=1)
    record_per_step(benchmark, "classic loop", settings)


@pytest.mark.benchmark(group=GROUP)
def test_engine(benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec, record_per_step: Record) -> None:
    """The kdbench engine: uint8 data on the device, device-side augmentation, one sync per epoch."""
    run = _engine_run(synthetic_cifar, EngineOptions(device=settings.device), settings.batch_size)
    _time_engine(benchmark, run, settings)
    record_per_step(benchmark, "kdbench engine (fp32)", settings)


@pytest.mark.benchmark(group=GROUP)
def test_engine_bf16_channels_last(
    benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec, record_per_step: Record
) -> None:
    """The engine with its CUDA switches: bf16 autocast and channels_last."""
    if settings.device.type != "cuda":
        pytest.skip("bf16 + channels_last are CUDA switches")
    run = _engine_run(
        synthetic_cifar, EngineOptions(device=settings.device, bf16=True, channels_last=True), settings.batch_size
    )
    _time_engine(benchmark, run, settings)
    record_per_step(benchmark, "kdbench engine (bf16+channels_last)", settings)
