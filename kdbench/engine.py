"""The engine: trains one run of built objects faithfully to its recipe, fast, resumably.

The engine knows no registry and no plan: it is given a student module, a distiller
(or a factory building one from the student, the teacher and a
:class:`~kdbench.DistillContext`), an optional frozen teacher, a recipe, a seed, the
dataset's spec and data, and options. :class:`RunState` holds one run on its device
(the testing kit drives it step by step); :func:`train` runs it to the end with
checkpoints, observers and final weights.

Data lives on the device as uint8; each epoch draws a permutation and every
sample's crop offsets and flip bit on the device from a generator seeded by
(run seed, epoch), so a run resumed from its end-of-epoch checkpoint sees
exactly the batches an uninterrupted run would. Losses are accumulated on the
device; the host synchronises once per epoch (test accuracy, loss means,
divergence check).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kdbench.augment import (
    POLICIES,
    RandAugmentPolicy,
    Views,
    apply_policy,
    apply_views,
    draw_views,
    normalize,
)
from kdbench.distiller import Batch, DistillContext, Distiller, OptimizerSettings, Phase, Progress
from kdbench.errors import CheckpointError, KdbenchError
from kdbench.features import SIGNALS, FeatureCapture, Signals, concat_signals
from kdbench.files import atomic_torch_save, load_state
from kdbench.records import EpochRecord, RunInfo, RunResult
from kdbench.specs import AugmentSpec, DatasetSpec, ImageData, ImageFiles, Recipe, ResizedCropSpec
from kdbench.stream import KEY_BOUND, LoaderSpec, StreamRequest, path_array

__all__ = [
    "CHECKPOINT_NAME",
    "FINAL_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "PREVIOUS_FINAL_NAME",
    "DistillerFactory",
    "EngineOptions",
    "EpochDraw",
    "LoaderClock",
    "Observer",
    "RunState",
    "Segment",
    "Silent",
    "TeacherLogits",
    "TrainedModel",
    "add_terms",
    "calibration_batches",
    "draw_epoch",
    "end_epoch",
    "epoch_batches",
    "evaluate",
    "evaluate_files",
    "evaluate_top1",
    "finish_run",
    "forward_signals",
    "probe_signals",
    "resume_state",
    "stream_batches",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint of the epoch before (a corrupt latest one falls back to it).
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
FINAL_NAME = "final.pt"
#: Final weights already in a run directory are kept here when a run writes its own (never discarded).
PREVIOUS_FINAL_NAME = "final.prev.pt"
_CHECKPOINT_FORMAT = "kdbench-checkpoint-1"

#: ``factory(student, teacher, context)`` returns the run's distiller (e.g. a method's builder with its params bound).
DistillerFactory = Callable[[nn.Module, "nn.Module | None", DistillContext], Distiller]


class Observer(Protocol):
    """What watches a run: ``notify("kdbench_run_start", run=…)`` and ``"kdbench_epoch_end"`` (a PluginHost)."""

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call the lifecycle hook ``hook_name`` with ``kwargs``."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How (not what) to train: device and speed switches that leave the recipe's math unchanged."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    channels_last: bool = False
    progress: bool = False
    fused_sgd: bool = False
    """One fused kernel per SGD step: the same update formula, rounded differently (FMA; 1 ulp after a step)."""
    loader: LoaderSpec | None = None
    """How a streaming dataset's batches are read (see :mod:`kdbench.stream`); needed only for one."""
    loader_workers: int = 0
    """Worker processes the loader may use (0: it reads in this process)."""
    rank: int = 0
    """This process's rank among ``world_size`` training one run together (DDP; the group is initialised)."""
    world_size: int = 1

    @property
    def loader_name(self) -> str:
        """Return the streaming loader's name ("" without one)."""
        return self.loader.name if self.loader else ""

    @property
    def distributed(self) -> bool:
        """Return whether several processes train this run together (each on its part of every batch)."""
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Return whether this process writes checkpoints, weights and notifications (rank 0)."""
        return self.rank == 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise KdbenchError(f"rank {self.rank} is not in a world of {self.world_size}")
        if (self.bf16 or self.channels_last or self.fused_sgd) and self.device.type != "cuda":
            raise KdbenchError(
                "--bf16, --channels-last and --fused-sgd are CUDA switches; drop them or use --device cuda"
            )


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A teacher ready for distillation: the module (eval mode, frozen) and its architecture name."""

    name: str
    module: nn.Module


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(1_000_003 * (seed + 1) + epoch)
    return generator


def _steps_per_epoch(num_train: int, batch_size: int) -> int:
    steps = math.ceil(num_train / batch_size)
    # A trailing batch of one sample breaks BatchNorm in train mode; the reference
    # loaders would crash there, we drop that single sample instead.
    return steps - 1 if num_train % batch_size == 1 and steps > 1 else steps


def _strong_policy(name: str) -> RandAugmentPolicy | None:
    """Return the augmentation policy a recipe's ``strong_copy`` names (None for none)."""
    if not name:
        return None
    if name not in POLICIES:
        raise KdbenchError(f"recipe strong_copy {name!r} is not an augmentation policy; known: {', '.join(POLICIES)}")
    return POLICIES[name]


def _subset(views: Views, index: torch.Tensor) -> Views:
    return replace(views, dy=views.dy[index], dx=views.dx[index], flip=views.flip[index])


@dataclass(frozen=True, slots=True)
class EpochDraw:
    """One epoch's shared randomness: the order of the samples and their views, drawn from (seed, epoch).

    Every run of one seed, dataset and recipe draws the same: that is what lets runs train in
    lockstep (a cohort). ``generator`` goes on with the strong copy's per-step policy draws;
    each run's *method* draws from its own copy of the state after the shared draws
    (:meth:`method_generator`), so what a method draws never moves the data another run sees.
    """

    order: torch.Tensor
    views: Views | None
    """Device-resident data: every sample's crop offsets and flip (None for a streaming dataset)."""
    steps: int
    batch_size: int
    num_train: int
    policy: RandAugmentPolicy | None
    generator: torch.Generator
    method_state: torch.Tensor
    keys: torch.Tensor | None = None
    """Streaming data: one key per position of ``order``, from which its crop and flip follow."""

    def method_generator(self) -> torch.Generator:
        """Return a new generator in the state the shared draws left (a run's methods draw from it)."""
        generator = torch.Generator(device=self.generator.device)
        generator.set_state(self.method_state)
        return generator


def draw_epoch(
    seed: int, position: int, num_train: int, recipe: Recipe, dataset: DatasetSpec, device: torch.device
) -> EpochDraw:
    """Return the draws of global epoch ``position`` of a run with this seed, train-set size and recipe."""
    generator = _epoch_generator(seed, position, device)
    if dataset.streaming:
        if recipe.strong_copy:
            raise KdbenchError(f"recipe strong_copy needs a device-resident dataset; {dataset.name} streams from disk")
        order = torch.randperm(num_train, generator=generator, device=device)
        keys = torch.randint(0, KEY_BOUND, (num_train,), generator=generator, device=device)
        steps = _steps_per_epoch(num_train, recipe.batch_size)
        state = generator.get_state()
        return EpochDraw(order, None, steps, recipe.batch_size, num_train, None, generator, state, keys)
    policy = _strong_policy(recipe.strong_copy)
    samples = num_train * (2 if policy is not None else 1)  # with a strong copy: every image twice
    order = torch.randperm(samples, generator=generator, device=device)
    augment = dataset.augment
    views = draw_views(samples, augment.pad, augment.flip, generator, device)
    steps = _steps_per_epoch(samples, recipe.batch_size)
    return EpochDraw(order, views, steps, recipe.batch_size, num_train, policy, generator, generator.get_state())


def epoch_batches(
    draw: EpochDraw, images: torch.Tensor, labels: torch.Tensor, dataset: DatasetSpec, channels_last: bool = False
) -> Iterator[tuple[Batch, Views]]:
    """Yield each step's batch (without a generator: give each run its own) and its samples' views, in order."""
    assert draw.views is not None and isinstance(dataset.augment, AugmentSpec), "a device-resident draw"
    pad = dataset.augment.pad
    for step in range(draw.steps):
        drawn = draw.order[step * draw.batch_size : (step + 1) * draw.batch_size]
        index = drawn % draw.num_train if draw.policy is not None else drawn
        raw = images[index]
        views = _subset(draw.views, drawn)
        augmented = apply_views(raw, views, pad)
        if draw.policy is not None:  # the copy's half of the batch gets the strong policy on top (no sync)
            strong = apply_policy(augmented, draw.policy, draw.generator)
            augmented = torch.where((drawn >= draw.num_train).view(-1, 1, 1, 1), strong, augmented)
        augmented = normalize(augmented, dataset.mean, dataset.std)
        if channels_last:
            augmented = augmented.contiguous(memory_format=torch.channels_last)
        yield Batch(augmented, labels[index], index, raw=raw), views


@dataclass(slots=True)
class LoaderClock:
    """What a streaming epoch measured: images delivered and seconds spent waiting for the loader."""

    images: int = 0
    wait: float = 0.0


def _stream_spec(dataset: DatasetSpec) -> ResizedCropSpec:
    if not isinstance(dataset.augment, ResizedCropSpec):
        raise KdbenchError(f"dataset {dataset.name} gives image files but no ResizedCropSpec augmentation")
    return dataset.augment


def _loader(options: EngineOptions, dataset: DatasetSpec) -> LoaderSpec:
    if options.loader is None:
        raise KdbenchError(f"dataset {dataset.name} streams from disk: the engine needs a loader (options.loader)")
    return options.loader


def _request(
    files: Sequence[str] | np.ndarray,
    order: np.ndarray,
    keys: np.ndarray | None,
    sizes: tuple[int, ...],
    dataset: DatasetSpec,
    options: EngineOptions,
) -> StreamRequest:
    """Return the loader request for ``order`` of ``files`` in batches of ``sizes`` (train crops with ``keys``)."""
    size, spec = dataset.image_size[-1], _stream_spec(dataset)
    return StreamRequest(files, order, keys, sizes, size, spec, options.device, options.loader_workers)


def _shard(start: int, end: int, rank: int, world: int) -> tuple[int, int]:
    """Return rank ``rank``'s contiguous part of positions [start, end) split over ``world`` ranks."""
    size = end - start
    return start + size * rank // world, start + size * (rank + 1) // world


def stream_batches(
    draw: EpochDraw,
    files: Sequence[str] | np.ndarray,
    labels: torch.Tensor,
    dataset: DatasetSpec,
    options: EngineOptions,
    shard: tuple[int, int] = (0, 1),
    clock: LoaderClock | None = None,
) -> Iterator[tuple[Batch, None]]:
    """Yield each step's batch of a streaming dataset's train ``files`` (rank ``shard[0]`` of ``shard[1]``'s part).

    The epoch's order and keys come to the host once; the loader decodes and transforms
    each batch; normalisation runs on the device. ``clock`` adds up images and wait.
    """
    rank, world = shard
    used = min(draw.steps * draw.batch_size, draw.num_train)
    parts = [_shard(s, min(s + draw.batch_size, used), rank, world) for s in range(0, used, draw.batch_size)]
    order, keys = draw.order.cpu().numpy(), draw.keys.cpu().numpy()  # type: ignore[union-attr]
    positions = np.concatenate([np.arange(a, b) for a, b in parts])
    sizes = tuple(b - a for a, b in parts)
    images = _loader(options, dataset).load(_request(files, order[positions], keys[positions], sizes, dataset, options))
    for a, b in parts:
        tick = time.perf_counter()
        raw = next(images)
        if clock is not None:
            clock.images += raw.shape[0]
            clock.wait += time.perf_counter() - tick
        index = draw.order[a:b]
        x = normalize(raw, dataset.mean, dataset.std)
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield Batch(x, labels[index], index), None  # no ``raw``: these pixels are already cropped


@torch.no_grad()
def evaluate_files(
    model: nn.Module,
    files: Sequence[str] | np.ndarray,
    labels: torch.Tensor,
    dataset: DatasetSpec,
    options: EngineOptions,
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """Return the number of correct top-1 predictions on rank ``shard[0]``'s part of ``files`` (0-d, device)."""
    start, end = _shard(0, len(files), *shard)
    sizes = tuple(min(batch_size, end - s) for s in range(start, end, batch_size))
    loaded = _loader(options, dataset).load(_request(files, np.arange(start, end), None, sizes, dataset, options))
    return _count_correct(model, loaded, labels[start:end], dataset, options.device, options.bf16)


_PATHS: dict[int, tuple[ImageFiles, tuple[np.ndarray, np.ndarray]]] = {}


def _paths_of(files: ImageFiles) -> tuple[np.ndarray, np.ndarray]:
    """Return the (train, test) path arrays of ``files``, made once per dataset object (runs of a cohort share them)."""
    cached = _PATHS.get(id(files))
    if cached is None or cached[0] is not files:
        if len(_PATHS) >= 2:  # a process trains on one or two datasets: keep no more
            _PATHS.pop(next(iter(_PATHS)))
        cached = _PATHS[id(files)] = (files, (path_array(files.train_files), path_array(files.test_files)))
    return cached[1]


def calibration_batches(
    data: ImageData | ImageFiles, dataset: DatasetSpec, options: EngineOptions, count: int, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return ``count`` normalised train batches of ``size`` images (a fixed random choice) on the device.

    Device-resident images are taken as they are; streamed ones get the eval transform (no random crop).
    """
    generator = torch.Generator().manual_seed(0)
    labels = data.train_labels.cpu()
    order = torch.randperm(labels.shape[0], generator=generator)[: count * size]
    device = options.device
    if isinstance(data, ImageData):
        return [
            (normalize(data.train_images[index].to(device), dataset.mean, dataset.std), labels[index].to(device))
            for index in order.split(size)
        ]
    sizes = tuple(len(chunk) for chunk in order.split(size))
    loaded = _loader(options, dataset).load(_request(data.train_files, order.numpy(), None, sizes, dataset, options))
    return [
        (normalize(raw, dataset.mean, dataset.std), labels[index].to(device))
        for raw, index in zip(loaded, order.split(size), strict=True)
    ]


class TeacherLogits(Protocol):
    """Where a run may read its teacher's logits instead of a forward pass (a teacher table)."""

    def logits(self, indices: torch.Tensor, views: Views) -> torch.Tensor:
        """Return the teacher's logits of the train samples ``indices`` under ``views`` (B×classes, device)."""


def probe_signals(model: nn.Module, input_size: tuple[int, int, int], device: torch.device) -> Signals:
    """Return the shapes of every signal ``model`` gives (empty tensors on the meta device), from one eval pass."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FeatureCapture(model, SIGNALS) as capture:
        signals = capture(torch.zeros(2, *input_size, device=device))
    model.train(was_training)

    def meta(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, device="meta")

    return Signals(
        logits=meta(signals.logits),
        feats=[meta(t) for t in signals.feats],
        preact=[meta(t) for t in signals.preact],
        embedding=None if signals.embedding is None else meta(signals.embedding),
        pooled_map=None if signals.pooled_map is None else meta(signals.pooled_map),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: DatasetSpec, batch_size: int, bf16: bool
) -> torch.Tensor:
    """Return top-1 accuracy (%) on the given uint8 images as a 0-d device tensor (no host sync)."""
    batches = images.split(batch_size)
    correct = _count_correct(model, batches, labels, dataset, images.device, bf16)
    return correct.double() * 100.0 / images.shape[0]


@torch.no_grad()
def _count_correct(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    labels: torch.Tensor,
    dataset: DatasetSpec,
    device: torch.device,
    bf16: bool,
) -> torch.Tensor:
    """Return how many of the uint8 ``batches`` (in order) ``model`` classifies as ``labels`` say (0-d, device)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    start = 0
    for raw in batches:
        x = normalize(raw, dataset.mean, dataset.std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        correct += (logits.argmax(dim=1) == labels[start : start + raw.shape[0]]).sum()
        start += raw.shape[0]
    model.train(was_training)
    return correct


def evaluate_top1(
    model: nn.Module,
    dataset: DatasetSpec,
    data: ImageData | ImageFiles,
    options: EngineOptions,
    batch_size: int | None = None,
) -> float:
    """Return the test-set top-1 (%) of ``model`` on ``options.device``, rounded to 4 decimals.

    ``batch_size`` defaults to the recipe default's evaluation batch; the number does not depend on it.
    """
    device = options.device
    batch = Recipe().eval_batch_size if batch_size is None else batch_size
    if isinstance(data, ImageFiles):
        labels = data.test_labels.to(device)
        correct = evaluate_files(model.to(device), data.test_files, labels, dataset, options, batch)
        return round(float(correct.double() * 100.0 / max(1, data.num_test)), 4)
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    return round(float(evaluate(model.to(device), images, labels, dataset, batch, options.bf16)), 4)


@dataclass(frozen=True, slots=True)
class Segment:
    """A contiguous block of epochs: one of the method's phases, or the main training (``phase`` None)."""

    phase: Phase | None
    start: int
    epochs: int

    @property
    def name(self) -> str:
        """Return the phase's name, or ``main``."""
        return self.phase.name if self.phase else "main"


def _segments(phases: tuple[Phase, ...], main_epochs: int) -> list[Segment]:
    segments, start = [], 0
    for phase in (*phases, None):
        epochs = phase.epochs if phase else main_epochs
        segments.append(Segment(phase, start, epochs))
        start += epochs
    return segments


class RunState:
    """One run on its device: student, distiller, teacher, optimiser, data and curve.

    Built from objects: ``student`` (a module, already initialised: seed the global RNG
    before building it), ``distiller`` (a :class:`~kdbench.Distiller`, or a factory
    called with the student, the teacher module and a :class:`~kdbench.DistillContext`;
    it is built right away, continuing the global RNG), ``teacher`` (frozen, eval mode)
    or None, the ``recipe``, the run's ``seed`` (per-epoch data order and views), the
    dataset's spec and data, and ``options``. ``identity`` is stored in checkpoints and
    must match on resume. ``teacher_table`` (optional) holds the teacher's logits of every
    train image and view: steps of a method that reads only the teacher's logits read them
    there instead of running the teacher. Epochs are counted by one *position* over the method's phases
    followed by the main training; the per-epoch generator and the checkpoint use it.
    """

    def __init__(
        self,
        student: nn.Module,
        distiller: Distiller | DistillerFactory,
        teacher: TrainedModel | None,
        recipe: Recipe,
        seed: int,
        dataset: DatasetSpec,
        data: ImageData | ImageFiles,
        options: EngineOptions,
        *,
        student_name: str = "student",
        identity: Mapping[str, Any] | None = None,
        teacher_table: TeacherLogits | None = None,
    ) -> None:
        if teacher_table is not None and (teacher is None or options.bf16):
            raise KdbenchError("a teacher table needs a teacher and fp32 (it holds the fp32 teacher's logits)")
        self.options = options
        self.teacher_table = teacher_table
        self.dataset = dataset
        self.recipe = recipe
        self.seed = seed
        self.student_name = student_name
        self.identity = dict(identity or {})
        device = options.device
        if recipe.sync_bn and options.distributed:  # before the distiller and optimiser see the student
            if device.type != "cuda":
                raise KdbenchError("recipe sync_bn: torch's SyncBatchNorm runs on CUDA only (use --device cuda)")
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.student = student.to(device)
        self.teacher = teacher
        self.files = data if isinstance(data, ImageFiles) else None
        #: Streamed data: the train and test file paths as numpy arrays (shared by forked loader workers).
        self.paths = _paths_of(self.files) if self.files else None
        self.train_images = None if self.files else data.train_images.to(device)  # type: ignore[union-attr]
        self.test_images = None if self.files else data.test_images.to(device)  # type: ignore[union-attr]
        self.train_labels = data.train_labels.to(device)
        self.test_labels = data.test_labels.to(device)
        self.num_train = int(self.train_labels.shape[0])
        self.clock = LoaderClock()
        if not isinstance(distiller, Distiller):
            distiller = distiller(self.student, teacher.module if teacher else None, self._context(data))
        self.distiller: Distiller = distiller.to(device)
        if options.channels_last:
            self.student.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.module.to(memory_format=torch.channels_last)
        self.segments = _segments(tuple(self.distiller.phases()), self.recipe.epochs)
        self.total_epochs = sum(segment.epochs for segment in self.segments)
        self.optimizer: torch.optim.Optimizer | None = None
        self._optimizer_segment: Segment | None = None
        self.curve: list[EpochRecord] = []
        self.start_epoch = 0
        if options.distributed:  # every rank starts from rank 0's weights, as DDP does
            _broadcast_state(self.student)
            _broadcast_state(self.distiller)

    def _context(self, data: ImageData | ImageFiles) -> DistillContext:
        device, dataset, teacher = self.options.device, self.dataset, self.teacher
        return DistillContext(
            num_classes=dataset.num_classes,
            input_size=dataset.image_size,
            num_train=self.num_train,
            student_name=self.student_name,
            teacher_name=teacher.name if teacher else None,
            student_shapes=probe_signals(self.student, dataset.image_size, device),
            teacher_shapes=probe_signals(teacher.module, dataset.image_size, device) if teacher else None,
            train_labels=self.train_labels,
            mean=dataset.mean,
            std=dataset.std,
            augment=dataset.augment,
        )

    @property
    def source(self) -> object:
        """Return what the run trains on (runs sharing it can share batches): the device images or the files."""
        return self.files if self.files is not None else self.train_images

    @property
    def main_segment(self) -> Segment:
        """Return the main training's segment (the last one)."""
        return self.segments[-1]

    def segment_at(self, position: int) -> tuple[Segment, int]:
        """Return the segment holding global epoch ``position`` and the epoch's index inside it."""
        for segment in self.segments:
            if position < segment.start + segment.epochs:
                return segment, position - segment.start
        raise IndexError(position)

    def optimizer_for(self, segment: Segment) -> torch.optim.Optimizer:
        """Return the optimiser of ``segment``, built when the segment starts (kept while it lasts)."""
        if self._optimizer_segment is not segment:
            settings = OptimizerSettings(
                lr=self.recipe.base_lr(self.student_name),
                momentum=self.recipe.momentum,
                weight_decay=self.recipe.weight_decay,
                nesterov=self.recipe.nesterov,
                fused=self.options.fused_sgd,
            )
            if segment.phase is None:
                parameters = [*self.student.parameters(), *self.distiller.main_parameters()]
                self.optimizer = self.distiller.make_optimizer(parameters, settings)
            else:
                parameters = list(self.distiller.phase_parameters(segment.phase, self.student))
                lr = settings.lr if segment.phase.lr is None else segment.phase.lr
                self.optimizer = Distiller.make_optimizer(self.distiller, parameters, replace(settings, lr=lr))
            if self.options.distributed:
                self.optimizer.register_step_pre_hook(_average_gradients)
            self._optimizer_segment = segment
        assert self.optimizer is not None
        return self.optimizer

    def _lr(self, segment: Segment, epoch: int) -> float:
        phase = segment.phase
        if phase is None:
            return self.recipe.lr_at(epoch, self.student_name)
        base = self.recipe.base_lr(self.student_name) if phase.lr is None else phase.lr
        return base * phase.lr_gamma ** sum(1 for milestone in phase.lr_milestones if epoch >= milestone)

    def checkpoint(self, position: int) -> dict[str, Any]:
        """Return the resume state after global epoch ``position`` (what ``checkpoint.pt`` holds)."""
        assert self.optimizer is not None
        return {
            "format": _CHECKPOINT_FORMAT,
            "config": dict(self.identity),
            "epoch": position,
            "student": self.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "curve": [_epoch_to_dict(e) for e in self.curve],
        }

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``; one that belongs elsewhere raises CheckpointError."""
        state = load_state(path)
        if state.get("format") != _CHECKPOINT_FORMAT or state.get("config") != self.identity:
            raise CheckpointError(f"checkpoint {path} belongs to another run or format; delete it to restart")
        done = int(state["epoch"])
        try:
            self.student.load_state_dict(state["student"])
            self.distiller.load_state_dict(state["distiller"])
            if done + 1 < self.total_epochs and self.segment_at(done + 1)[0] is self.segment_at(done)[0]:
                self.optimizer_for(self.segment_at(done)[0]).load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this run: {exc}") from None
        self.curve = [_epoch_from_dict(e) for e in state["curve"]]
        self.start_epoch = done + 1

    def captures(self, segment: Segment) -> tuple[FeatureCapture | None, FeatureCapture | None]:
        """Return the (student, teacher) feature captures the distiller needs in ``segment`` (close them after)."""
        teacher_signals = self.distiller.signals(segment.phase)[1]
        teacher = FeatureCapture(self.teacher.module, teacher_signals) if self.teacher and teacher_signals else None
        return self.student_capture(segment), teacher

    def student_capture(self, segment: Segment) -> FeatureCapture | None:
        """Return the student's feature capture in ``segment`` (logits always in the main training; close it after)."""
        student_signals = self.distiller.signals(segment.phase)[0]
        if segment.phase is None:
            student_signals = student_signals | {"logits"}
        return FeatureCapture(self.student, student_signals) if student_signals else None

    def start_epoch_of(self, position: int) -> tuple[Segment, int, torch.optim.Optimizer]:
        """Set up global epoch ``position`` (its segment's optimiser and LR, train/eval modes); return them."""
        segment, epoch = self.segment_at(position)
        optimizer = self.optimizer_for(segment)
        for group in optimizer.param_groups:
            group["lr"] = self._lr(segment, epoch)
        self.student.train(segment.phase is None or segment.phase.student_mode == "train")
        self.distiller.train()
        return segment, epoch, optimizer

    def train_epoch(self, position: int) -> dict[str, torch.Tensor]:
        """Train global epoch ``position``; return the mean loss terms as device tensors (no host sync)."""
        segment, epoch, optimizer = self.start_epoch_of(position)
        self.clock = LoaderClock()
        draw = self.draw(position)
        generator = draw.method_generator()
        student_capture, teacher_capture = self.captures(segment)
        sums: dict[str, torch.Tensor] = {}
        try:
            for step, (batch, views) in enumerate(self.batches(draw)):
                batch = replace(batch, generator=generator)
                progress = Progress(epoch, segment.epochs, step, draw.steps, phase=segment.name)
                terms = self.step(segment, student_capture, teacher_capture, batch, progress, optimizer, views)
                add_terms(sums, terms)
        finally:
            for capture in (student_capture, teacher_capture):
                if capture is not None:
                    capture.close()
        return self.mean_terms(sums, draw.steps)

    def mean_terms(self, sums: Mapping[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
        """Return the epoch's mean loss terms (averaged over the ranks of a distributed run: one collective)."""
        means = {name: total / steps for name, total in sums.items()}
        if self.options.distributed and means:
            import torch.distributed as dist

            stacked = torch.stack([means[name].float() for name in sorted(means)])
            dist.all_reduce(stacked)
            means = dict(zip(sorted(means), (stacked / self.options.world_size).unbind(), strict=True))
        return means

    def draw(self, position: int) -> EpochDraw:
        """Return the shared draws of global epoch ``position`` (order; views or keys)."""
        return draw_epoch(self.seed, position, self.num_train, self.recipe, self.dataset, self.options.device)

    def batches(self, draw: EpochDraw) -> Iterator[tuple[Batch, Views | None]]:
        """Yield this process's part of each step's batch (and its views, for device-resident data)."""
        options = self.options
        if self.files is not None:
            shard = (options.rank, options.world_size)
            assert self.paths is not None
            yield from stream_batches(draw, self.paths[0], self.train_labels, self.dataset, options, shard, self.clock)
            return
        assert self.train_images is not None
        batches = epoch_batches(draw, self.train_images, self.train_labels, self.dataset, options.channels_last)
        for batch, views in batches:
            if options.distributed:
                batch, views = _rank_part(batch, views, options.rank, options.world_size)
            yield batch, views

    def table_serves(self, segment: Segment) -> bool:
        """Return whether the teacher table replaces the teacher's forward in ``segment`` (logits only)."""
        if self.teacher_table is None or segment.phase is not None:
            return False
        return self.distiller.signals(None)[1] <= {"logits"}

    def step(
        self,
        segment: Segment,
        student_capture: FeatureCapture | None,
        teacher_capture: FeatureCapture | None,
        batch: Batch,
        progress: Progress,
        optimizer: torch.optim.Optimizer,
        views: Views | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one training step on ``batch`` (teacher pass, student pass, loss, update); return its loss terms.

        With a teacher table and the batch's ``views``, the teacher's logits are read, not computed.
        """
        with torch.autocast(self.options.device.type, dtype=torch.bfloat16, enabled=self.options.bf16):
            prepared = self.distiller.prepare_batch(batch)
            # Teacher first: its activations are freed before the student's autograd graph is built.
            teacher = None
            if teacher_capture is not None:
                if views is not None and prepared is batch and self.table_serves(segment):
                    assert self.teacher_table is not None
                    teacher = Signals(logits=self.teacher_table.logits(batch.indices, views))
                else:
                    with torch.no_grad():
                        teacher = forward_signals(teacher_capture, prepared)
        return self.student_step(segment, student_capture, teacher, prepared, progress, optimizer)

    def student_step(
        self,
        segment: Segment,
        student_capture: FeatureCapture | None,
        teacher: Signals | None,
        batch: Batch,
        progress: Progress,
        optimizer: torch.optim.Optimizer,
    ) -> dict[str, torch.Tensor]:
        """Run the student's part of a step given the teacher's signals: forward, loss, update; return the terms."""
        with torch.autocast(self.options.device.type, dtype=torch.bfloat16, enabled=self.options.bf16):
            student = forward_signals(student_capture, batch) if student_capture is not None else None
            if segment.phase is None:
                assert student is not None
                terms = self.distiller.loss_terms(student, teacher, batch, progress)
            else:
                terms = self.distiller.phase_terms(segment.phase, student, teacher, batch, progress)
        self.distiller.step(terms, optimizer)
        return terms

    def test_top1(self) -> torch.Tensor:
        """Return the student's test top-1 (%) as a 0-d device tensor (no host sync).

        A distributed run first gives every rank rank 0's BatchNorm statistics (DDP's
        ``broadcast_buffers``); streamed test sets are split over the ranks.
        """
        options = self.options
        if options.distributed:
            _broadcast_state(self.student, buffers_only=True)
        if self.files is not None:
            shard = (options.rank, options.world_size)
            assert self.paths is not None
            correct = evaluate_files(
                self.student, self.paths[1], self.test_labels, self.dataset, options, self.recipe.eval_batch_size, shard
            )
            if options.distributed:
                import torch.distributed as dist

                dist.all_reduce(correct)
            return correct.double() * 100.0 / max(1, self.files.num_test)
        assert self.test_images is not None
        return evaluate(
            self.student,
            self.test_images,
            self.test_labels,
            self.dataset,
            self.recipe.eval_batch_size,
            self.options.bf16,
        )


def _rank_part(batch: Batch, views: Views, rank: int, world: int) -> tuple[Batch, Views]:
    """Return rank ``rank``'s contiguous part of a global batch (and of its views)."""
    a, b = _shard(0, batch.images.shape[0], rank, world)
    part = replace(
        batch,
        images=batch.images[a:b],
        targets=batch.targets[a:b],
        indices=batch.indices[a:b],
        raw=None if batch.raw is None else batch.raw[a:b],
    )
    return part, _subset(views, torch.arange(a, b, device=views.dy.device))


def _broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters and buffers of ``module`` (its buffers only, with ``buffers_only``)."""
    import torch.distributed as dist

    tensors = [] if buffers_only else [p.data for p in module.parameters()]
    tensors += [b for b in module.buffers() if b.is_floating_point() or b.dtype == torch.int64]
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def _average_gradients(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Average the gradients of ``optimizer``'s parameters over the ranks: one all-reduce per step (DDP's math)."""
    import torch.distributed as dist

    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def add_terms(sums: dict[str, torch.Tensor], terms: Mapping[str, torch.Tensor]) -> None:
    """Add a step's loss terms (detached, float32) to the epoch's running sums, on the device."""
    for name, value in terms.items():
        sums[name] = sums.get(name, 0) + value.detach().float()


def forward_signals(capture: FeatureCapture, batch: Batch) -> Signals:
    """Return the model's signals for the batch: one pass, or one pass per view in ``batch.chunks``."""
    if not batch.chunks:
        return capture(batch.images)
    return concat_signals([capture(view) for view in batch.images.split(list(batch.chunks))])


def _epoch_to_dict(record: EpochRecord) -> dict[str, Any]:
    return {
        "epoch": record.epoch,
        "lr": record.lr,
        "losses": dict(record.losses),
        "test_top1": record.test_top1,
        "seconds": record.seconds,
        "phase": record.phase,
        **({"throughput": dict(record.throughput)} if record.throughput else {}),
    }


def _epoch_from_dict(data: Mapping[str, Any]) -> EpochRecord:
    return EpochRecord(
        epoch=int(data["epoch"]),
        lr=float(data["lr"]),
        losses=dict(data["losses"]),
        test_top1=float(data["test_top1"]),
        seconds=float(data["seconds"]),
        phase=str(data.get("phase", "main")),
        throughput=dict(data["throughput"]) if data.get("throughput") else None,
    )


def _result(curve: list[EpochRecord], status: str, extra_params: int) -> RunResult:
    wall = sum(e.seconds for e in curve)
    main = [e for e in curve if e.phase == "main"]
    if not main:
        return RunResult(status=status, curve=tuple(curve), wall_seconds=wall, extra_params=extra_params)
    best = max(main, key=lambda e: (e.test_top1, -e.epoch))
    return RunResult(
        status=status,
        best_top1=best.test_top1,
        last_top1=main[-1].test_top1,
        best_epoch=best.epoch,
        curve=tuple(curve),
        wall_seconds=wall,
        extra_params=extra_params,
    )


class Silent:
    """An observer that ignores every notification."""

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        return None


def train(
    run: RunInfo,
    state: RunState,
    observer: Observer | None = None,
    final_extras: Mapping[str, Any] | None = None,
    label: str = "",
) -> RunResult:
    """Train (or resume) ``state`` to its last epoch; write checkpoints and final weights in ``run.work_dir``.

    A checkpoint left in ``run.work_dir`` by the same run (``state.identity``) is resumed.
    ``observer`` gets ``kdbench_run_start`` and ``kdbench_epoch_end``; ``final_extras`` go
    into ``final.pt`` beside the weights (e.g. a pruned architecture's description);
    ``label`` names the progress bar. Returns a finished or diverged :class:`RunResult`
    whose wall time is the sum of its epochs' times (resume-stable); errors propagate.
    """
    writes = state.options.writes
    observer = observer if observer is not None and writes else Silent()  # only rank 0 tells the plugins
    run.work_dir.mkdir(parents=True, exist_ok=True)
    resume_state(state, run.work_dir)
    observer.notify("kdbench_run_start", run=run)
    bar = _progress_bar(label or run.run_id, state.total_epochs, state.start_epoch, state.options.progress and writes)
    status = "finished"
    try:
        for position in range(state.start_epoch, state.total_epochs):
            tick = time.perf_counter()
            sums = state.train_epoch(position)
            record = end_epoch(run, state, position, sums, time.perf_counter() - tick, observer)
            if record is None:
                status = "diverged"
                break
            bar.update(1)
            bar.set_postfix(
                top1=f"{record.test_top1:.2f}", loss=f"{sum(record.losses.values()):.3f}", phase=record.phase
            )
    finally:
        bar.close()
    return finish_run(run, state, status, final_extras)


def end_epoch(
    run: RunInfo,
    state: RunState,
    position: int,
    sums: Mapping[str, torch.Tensor],
    seconds: float,
    observer: Observer,
    timer: Callable[[], float] = time.perf_counter,
) -> EpochRecord | None:
    """Close global epoch ``position``: test, record, checkpoint, notify; return its record (None: diverged).

    ``seconds`` is the epoch's training time so far; the test pass is added to it (timed with ``timer``).
    """
    segment, epoch = state.segment_at(position)
    tick = timer()
    top1 = state.test_top1()
    losses = {name: float(value) for name, value in sums.items()}
    assert state.optimizer is not None
    record = EpochRecord(
        epoch=epoch,
        lr=state.optimizer.param_groups[0]["lr"],
        losses=losses,
        test_top1=round(float(top1), 4),
        seconds=round(seconds + timer() - tick, 3),
        phase=segment.name,
        throughput=_throughput(state, seconds),
    )
    state.curve.append(record)
    if not all(math.isfinite(v) for v in losses.values()):
        return None
    if state.options.writes:
        checkpoint = run.work_dir / CHECKPOINT_NAME
        atomic_torch_save(state.checkpoint(position), checkpoint, run.work_dir / PREVIOUS_CHECKPOINT_NAME)
        observer.notify("kdbench_epoch_end", run=run, epoch=record)
        if record.throughput is not None:
            print(
                f"kdbench: {run.run_id} epoch {position}: {record.throughput['images_per_second']:,.0f} images/s, "
                f"{record.throughput['data_wait']:.0%} of it waiting for data ({state.options.loader_name})",
                file=sys.stderr,
            )
    _barrier(state.options)
    return record


def _throughput(state: RunState, seconds: float) -> dict[str, float] | None:
    """Return a streaming epoch's images/s (all ranks) and this rank's share of time waiting for data."""
    if state.files is None or seconds <= 0:
        return None
    images = state.clock.images * state.options.world_size
    return {"images_per_second": round(images / seconds, 1), "data_wait": round(state.clock.wait / seconds, 4)}


def _barrier(options: EngineOptions) -> None:
    """Wait for every rank of a distributed run (nothing to do in a single process)."""
    if options.distributed:
        import torch.distributed as dist

        dist.barrier()


def finish_run(run: RunInfo, state: RunState, status: str, final_extras: Mapping[str, Any] | None) -> RunResult:
    """Write the final weights of a finished run (keeping any earlier ones); return its result."""
    if status == "finished" and state.options.writes:
        final = {"arch": state.student_name, **(final_extras or {}), "model": state.student.state_dict()}
        atomic_torch_save(final, run.work_dir / FINAL_NAME, run.work_dir / PREVIOUS_FINAL_NAME)
    _barrier(state.options)
    return _result(state.curve, status, state.distiller.extra_parameter_count())


def resume_state(state: RunState, work_dir: Path) -> None:
    """Resume ``state`` from its latest checkpoint in ``work_dir`` (or the one before, if the latest is unreadable)."""
    checkpoint, previous = work_dir / CHECKPOINT_NAME, work_dir / PREVIOUS_CHECKPOINT_NAME
    if not checkpoint.exists():
        if previous.exists():  # a crash between the two renames of a checkpoint write
            state.resume(previous)
        return
    try:
        state.resume(checkpoint)
    except CheckpointError as exc:
        if not previous.exists() or "cannot read" not in str(exc):
            raise
        print(
            f"kdbench: warning: {checkpoint} is unreadable; resuming from the previous one, {previous.name} "
            "(one epoch earlier); the unreadable file was left as is",
            file=sys.stderr,
        )
        state.resume(previous)


def _progress_bar(label: str, epochs: int, done: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=done, desc=label, unit="ep", leave=False, disable=not enabled)
