"""The plugin kit: tiny CIFAR-shaped models, synthetic data and contract checks for plugin authors.

Call the checks from your own pytest; each raises :class:`AssertionError` naming the plugin
and the rule it breaks::

    from kdbench.testing import check_distiller

    def test_my_method_keeps_the_contract():
        check_distiller("my_method")  # looked up through the installed entry points

The checks drive the real engine (its training step, checkpoints and resume) on
tiny models and a few synthetic images, so they take a second or two on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench._plugins import PluginHost, create_plugin_host
from kdbench.augment import normalize
from kdbench.distiller import Batch, Distiller, Progress
from kdbench.engine import EngineOptions, RunState, TrainedModel
from kdbench.errors import KdbenchError
from kdbench.features import SIGNALS, FeatureCapture, FeatureTaps, Signals
from kdbench.files import atomic_torch_save
from kdbench.hookspecs import hookimpl
from kdbench.specs import (
    AugmentSpec,
    DatasetSpec,
    DistillerSpec,
    ImageData,
    ImageFiles,
    ModelSpec,
    PrunerSpec,
    Recipe,
    ResizedCropSpec,
)

__all__ = [
    "TinyNet",
    "check_dataset",
    "check_distiller",
    "check_model",
    "check_pruner",
    "synthetic_dataset_spec",
    "synthetic_files_spec",
    "synthetic_image_data",
    "tiny_model",
    "tiny_model_specs",
    "write_image_folder",
]

#: Stem and stage widths of the two tiny architectures (the teacher is twice as wide).
TINY_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "tiny_teacher": (16, 16, 32, 64),
    "tiny_student": (8, 8, 16, 32),
}
_BATCH = 8
_TEACHER_SEED = 123


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models and synthetic data


class _Block(nn.Module):
    """A CIFAR basic block: two 3×3 conv-BN layers and a (projected) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class TinyNet(nn.Module):
    """A ResNet-8 in miniature: 3×3 stem, three one-block stages (strides 1, 2, 2), pooling, ``fc``."""

    def __init__(self, widths: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.stage1 = _Block(widths[0], widths[1], stride=1)
        self.stage2 = _Block(widths[1], widths[2], stride=2)
        self.stage3 = _Block(widths[2], widths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_taps = FeatureTaps(
            stages=("relu", "stage1.relu_out", "stage2.relu_out", "stage3.relu_out"),
            classifier="fc",
            bn_before_relu=("bn1", "stage1.bn2", "stage2.bn2", "stage3.bn2"),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_model(name: str = "tiny_student", num_classes: int = 10) -> nn.Module:
    """Return a freshly initialised tiny CIFAR-shaped model (3×32×32 input) carrying ``feature_taps``.

    ``name`` is ``"tiny_teacher"`` (widths 16/16/32/64) or ``"tiny_student"`` (8/8/16/32).
    """
    if name not in TINY_WIDTHS:
        raise KdbenchError(f"unknown tiny model {name!r}; choose one of {', '.join(map(repr, TINY_WIDTHS))}")
    return TinyNet(TINY_WIDTHS[name], num_classes=num_classes)


def tiny_model_specs() -> list[ModelSpec]:
    """Return the model specs of ``tiny_teacher`` and ``tiny_student`` (to register them in a test plugin)."""
    return [
        ModelSpec(
            name=name,
            builder=functools.partial(tiny_model, name),
            description=f"kdbench.testing tiny CIFAR-shaped ResNet, widths {'/'.join(map(str, widths))}",
            citation="kdbench.testing (for plugin tests)",
            input_size=(3, 32, 32),
            default_num_classes=10,
            tags=("testing",),
        )
        for name, widths in TINY_WIDTHS.items()
    ]


def synthetic_image_data(
    num_classes: int = 10, train: int = 64, test: int = 32, size: int = 32, seed: int = 0
) -> ImageData:
    """Return a learnable random RGB dataset: each class is a smooth prototype image plus pixel noise.

    Labels are balanced (``index % num_classes``, shuffled); the same arguments give the same bytes.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, 4, 4, generator=generator)
    prototypes = F.interpolate(prototypes, size=(size, size), mode="bilinear", align_corners=False)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
        noise = torch.rand(count, 3, size, size, generator=generator)
        pixels = 0.7 * prototypes[labels] + 0.3 * noise
        return (pixels * 255).round().clamp(0, 255).to(torch.uint8), labels

    train_images, train_labels = split(train)
    test_images, test_labels = split(test)
    return ImageData(train_images, train_labels, test_images, test_labels)


def synthetic_dataset_spec(
    num_classes: int = 10, *, train: int = 64, test: int = 32, size: int = 32, seed: int = 0
) -> DatasetSpec:
    """Return the spec of dataset ``"synthetic"``, whose loader returns :func:`synthetic_image_data`."""

    def load(root: Path, download: bool) -> ImageData:
        return synthetic_image_data(num_classes, train, test, size, seed)

    return DatasetSpec(
        name="synthetic",
        loader=load,
        description=f"kdbench.testing synthetic data: {num_classes} classes, {train} train / {test} test images",
        num_classes=num_classes,
        image_size=(3, size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=AugmentSpec(pad=max(1, size // 8), flip=True),
        citation="kdbench.testing (for plugin tests)",
    )


def write_image_folder(
    root: Path, num_classes: int = 4, train: int = 8, test: int = 4, seed: int = 0, sizes: tuple[int, int] = (40, 72)
) -> Path:
    """Write a learnable JPEG dataset in the ImageFolder layout: ``root/{train,val}/class_NN/NNNN.JPEG``.

    Each class is a smooth colour prototype plus noise, at random sizes between ``sizes`` (width and
    height drawn apart); ``train`` / ``test`` images per class. Returns ``root``.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, 3, 3, 3))
    for split, count in (("train", train), ("val", test)):
        for label in range(num_classes):
            folder = Path(root) / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                width, height = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
                base = Image.fromarray((prototypes[label] * 255).astype(np.uint8)).resize((width, height))
                noise = rng.integers(0, 60, size=(height, width, 3))
                pixels = np.clip(np.asarray(base, dtype=np.int64) * 0.8 + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}.JPEG", quality=90)
    return Path(root)


def _folder_files(root: Path) -> ImageFiles:
    def split(name: str) -> tuple[list[str], list[int]]:
        classes = sorted(p.name for p in (root / name).iterdir() if p.is_dir())
        files = [(str(f), label) for label, c in enumerate(classes) for f in sorted((root / name / c).glob("*.JPEG"))]
        return [f for f, _ in files], [label for _, label in files]

    train_files, train_labels = split("train")
    test_files, test_labels = split("val")
    return ImageFiles(
        tuple(train_files), torch.tensor(train_labels), tuple(test_files), torch.tensor(test_labels), verified=None
    )


def synthetic_files_spec(num_classes: int = 4, *, size: int = 32, folder: str = "synthetic-files") -> DatasetSpec:
    """Return the spec of streaming dataset ``"synthetic-files"``: the ImageFolder under ``DATA_ROOT/folder``.

    Write the folder with :func:`write_image_folder` first. Images are random-resized-cropped to
    ``size`` (eval: shorter side to ``size * 8 // 7``, then the centre crop), as ImageNet's are to 224.
    """

    def load(root: Path, download: bool) -> ImageFiles:
        if not (Path(root) / folder / "train").is_dir():
            raise KdbenchError(f"no image folder at {Path(root) / folder}; write one with write_image_folder")
        return _folder_files(Path(root) / folder)

    return DatasetSpec(
        name="synthetic-files",
        loader=load,
        description=f"kdbench.testing JPEG image folder: {num_classes} classes, streamed",
        num_classes=num_classes,
        image_size=(3, size, size),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        augment=ResizedCropSpec(eval_resize=size * 8 // 7),
        citation="kdbench.testing (for plugin tests)",
    )


class _KitPlugin:
    """The plugin behind the kit's private hosts: the tiny models and the distiller or pruner under test."""

    def __init__(self, distillers: tuple[DistillerSpec, ...] = (), pruners: tuple[PrunerSpec, ...] = ()) -> None:
        self.distillers = list(distillers)
        self.pruners = list(pruners)

    @hookimpl
    def kdbench_register_models(self) -> list[ModelSpec]:
        return tiny_model_specs()

    @hookimpl
    def kdbench_register_distillers(self) -> list[DistillerSpec]:
        return self.distillers

    @hookimpl
    def kdbench_register_pruners(self) -> list[PrunerSpec]:
        return self.pruners


def _kit_host(**specs: Any) -> PluginHost:
    return create_plugin_host(entry_points=False, strict=True, plugins=[("kdbench_testing", _KitPlugin(**specs))])


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers: lookup and failure messages


def _resolve(kind: str, spec: Any, host: PluginHost | None, spec_type: type) -> Any:
    """Return ``spec`` itself, or the spec registered as ``spec`` (a name) in ``host``'s ``kind`` registry."""
    if isinstance(spec, str):
        host = host if host is not None else create_plugin_host()
        registry = host.registry(kind)
        if spec not in registry:
            broken = {info.name: info for info in host.plugins if info.status != "loaded"}
            if spec in broken:  # the usual case: a plugin named like its method failed to load
                info = broken[spec]
                why = info.error if info.status == "failed" else "by -p no:NAME or KDBENCH_DISABLE_PLUGINS"
                raise AssertionError(f"plugin {spec!r} is installed but {info.status}: {why}")
            problems = "".join(f"; {line}" for line in host.problems)
            raise AssertionError(
                f"no {kind[:-1]} named {spec!r} is registered (registered: {', '.join(registry.names()) or 'none'}); "
                f"is its package installed (pip install -e .) with an entry point in group 'kdbench'?{problems}"
            )
        spec = registry.get(spec)
    if not isinstance(spec, spec_type):
        raise AssertionError(f"expected a {spec_type.__name__} or a registered name, got {type(spec).__name__}")
    return spec


def _require(condition: object, subject: str, rule: str) -> None:
    if not condition:
        raise AssertionError(f"{subject}: {rule}")


@contextlib.contextmanager
def _rule(subject: str, rule: str) -> Iterator[None]:
    """Turn an exception the plugin raises while ``rule`` is checked into an AssertionError naming both."""
    try:
        yield
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{subject}: {rule}, but it raised {type(exc).__name__}: {exc}") from exc


def _check_described(subject: str, spec: Any, citation: bool = True) -> None:
    _require(isinstance(spec.name, str) and spec.name, subject, "the spec needs a name")
    _require(spec.description, subject, "the spec needs a one-line `description`")
    if citation:
        _require(spec.citation, subject, "the spec needs a `citation` (the paper or source it implements)")


def _check_json(subject: str, what: str, values: Mapping[str, Any]) -> None:
    try:
        json.dumps(dict(values), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{subject}: {what} must be JSON data (run ids hash them): {exc}") from None


def _state_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """Return the keys whose tensors differ between two state dicts (or are missing from one)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]


def _parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Distillers


@dataclass(frozen=True, slots=True)
class _Pair:
    teacher: str
    student: str


_PAIRS = (_Pair("tiny_teacher", "tiny_student"), _Pair("tiny_student", "tiny_student"))


class _DistillerBench:
    """Builds fresh engine states for one distiller on the tiny problem."""

    def __init__(self, spec: DistillerSpec, params: Mapping[str, Any], steps: int) -> None:
        self.spec = spec
        self.subject = f"distiller {spec.name!r}"
        self.host = _kit_host(distillers=(spec,))
        self.dataset = synthetic_dataset_spec(10, train=steps * _BATCH, test=_BATCH)
        self.data = self.dataset.loader(Path("."), False)
        self.recipe = Recipe(epochs=2, batch_size=_BATCH, lr=0.05, lr_milestones=(), eval_batch_size=64)
        self.params = {**spec.defaults, **params}

    def state(self, pair: _Pair) -> RunState:
        teacher = None
        if self.spec.needs_teacher:
            torch.manual_seed(_TEACHER_SEED)
            module = tiny_model(pair.teacher, self.dataset.num_classes).eval().requires_grad_(False)
            teacher = TrainedModel(pair.teacher, module)
        torch.manual_seed(0)
        student = tiny_model(pair.student, self.dataset.num_classes)
        factory = functools.partial(self.spec.builder, **self.params)
        options = EngineOptions()
        identity = {"distiller": self.spec.name, "params": dict(self.params), "pair": [pair.teacher, pair.student]}
        state = RunState(
            student, factory, teacher, self.recipe, 0, self.dataset, self.data, options,
            student_name=pair.student, identity=identity,
        )  # fmt: skip
        _require(
            isinstance(state.distiller, Distiller),
            self.subject,
            f"the builder must return a kdbench.Distiller, got {type(state.distiller).__name__}",
        )
        return state

    def pair(self) -> _Pair:
        """Return the first tiny pair the method accepts; a refusal must be a KdbenchError with a reason."""
        refusals = []
        for pair in _PAIRS:
            try:
                self.state(pair)
            except KdbenchError as exc:
                _require(str(exc).strip(), self.subject, "a KdbenchError refusing a pair must say why")
                refusals.append(f"{pair.teacher}→{pair.student}: {exc}")
                continue
            except AssertionError:
                raise
            except Exception as exc:
                raise AssertionError(self._build_failure(pair, exc)) from exc
            return pair
        raise AssertionError(f"{self.subject}: refuses every tiny pair, even equal widths: {'; '.join(refusals)}")

    def _build_failure(self, pair: _Pair, exc: Exception) -> str:
        """Say why building failed: the pair's widths only if the equal-width pair builds."""
        what = f"building it for {pair.teacher}→{pair.student} with params {self.params} raised {type(exc).__name__}"
        if pair != _PAIRS[-1]:
            try:
                self.state(_PAIRS[-1])
            except Exception:  # fails whatever the widths: not about the pair
                return f"{self.subject}: {what}: {exc}"
            return (
                f"{self.subject}: {what}: {exc}; it builds on equal widths, so a pair it cannot handle must be "
                "refused with a kdbench.KdbenchError naming the reason"
            )
        return f"{self.subject}: {what}: {exc}"


def _check_parts_are_its_own(subject: str, state: RunState) -> None:
    models = {id(p) for p in state.student.parameters()}
    if state.teacher is not None:
        models |= {id(p) for p in state.teacher.module.parameters()}
    own = list(state.distiller.parameters())
    _require(
        not any(id(p) in models for p in own),
        subject,
        "the student or teacher is registered as a submodule of the distiller (keep them out of its attributes)",
    )
    expected = sum(p.numel() for p in own if p.requires_grad)
    _require(
        state.distiller.extra_parameter_count() == expected,
        subject,
        f"extra_parameter_count() says {state.distiller.extra_parameter_count()} but its trainable parameters "
        f"hold {expected}: training-only parameters must be reported",
    )
    for who, declared in (("student", state.distiller.student_signals), ("teacher", state.distiller.teacher_signals)):
        _require(declared <= SIGNALS, subject, f"{who}_signals {sorted(declared)} must be among {sorted(SIGNALS)}")


def _check_round_trip(bench: _DistillerBench, pair: _Pair, state: RunState) -> None:
    clone = bench.state(pair)
    with _rule(bench.subject, "its state_dict must load strictly into a freshly built copy"):
        clone.distiller.load_state_dict(state.distiller.state_dict(), strict=True)


def _check_terms(subject: str, where: str, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    _require(isinstance(terms, Mapping) and terms, subject, f"{where}: loss terms must be a non-empty dict")
    values = {}
    for name, value in terms.items():
        _require(
            isinstance(name, str) and isinstance(value, torch.Tensor) and value.dim() == 0,
            subject,
            f"{where}: loss term {name!r} must be a named scalar tensor",
        )
        values[name] = float(value.detach())
        _require(math.isfinite(values[name]), subject, f"{where}: loss term {name!r} is not finite ({values[name]})")
    return values


def _check_phases(bench: _DistillerBench, pair: _Pair) -> None:
    state = bench.state(pair)
    phases = tuple(state.distiller.phases())
    if not phases:
        return
    phase = phases[0]
    where = f"phase {phase.name!r}"
    trained = list(state.distiller.phase_parameters(phase, state.student))
    _require(trained, bench.subject, f"{where} trains no parameter")
    before = [p.detach().clone() for p in trained]
    running = {k: v.clone() for k, v in state.student.state_dict().items() if "running_" in k}
    with _rule(bench.subject, f"{where} must train through the engine"):
        sums = state.train_epoch(0)
    _check_terms(bench.subject, where, sums)
    _require(any(not torch.equal(b, p) for b, p in zip(before, trained)), bench.subject, f"{where} changed nothing")
    moved = [k for k, v in running.items() if not torch.equal(v, state.student.state_dict()[k])]
    if phase.student_mode == "eval":
        _require(not moved, bench.subject, f"{where} keeps the student in eval mode, yet BN statistics moved: {moved}")
    elif state.distiller.signals(phase)[0]:  # the student runs in a train-mode phase: its BN statistics move
        _require(moved, bench.subject, f"{where} puts the student in train mode, yet no BN statistic moved")


def _check_main_epoch(bench: _DistillerBench, pair: _Pair) -> dict[str, float]:
    """Train one main epoch through the engine; return its mean loss terms."""
    subject, state = bench.subject, bench.state(pair)
    main = state.main_segment.start
    student_before = {n: p.detach().clone() for n, p in state.student.named_parameters()}
    teacher_before = _snapshot(state.teacher.module) if state.teacher else {}
    with _rule(subject, "one epoch of main training through the engine must run"):
        losses = _check_terms(subject, "main training", state.train_epoch(main))
    named = list(state.student.named_parameters())
    ungraded = [n for n, p in named if p.grad is None]
    _require(not ungraded, subject, f"the loss does not reach the student: parameters {ungraded[:4]} get no gradient")
    bad = [n for n, p in named if not torch.isfinite(p.grad).all()]
    _require(not bad, subject, f"the student's gradients are not finite for {bad[:4]}")
    unchanged = [n for n, p in named if torch.equal(student_before[n], p)]
    _require(not unchanged, subject, f"student parameters {unchanged[:4]} did not change: is the optimiser given them?")
    for name, parameter in state.distiller.named_parameters():
        if parameter.requires_grad and any(parameter is p for p in state.distiller.main_parameters()):
            _require(parameter.grad is not None, subject, f"its own parameter {name!r} receives no gradient")
    if state.teacher is not None:
        teacher = state.teacher.module
        changed = _state_equal(teacher_before, teacher.state_dict())
        _require(not changed, subject, f"the teacher must stay frozen, yet {changed[:4]} changed in training")
        training = [n or "(root)" for n, m in teacher.named_modules() if m.training]
        _require(not training, subject, f"the teacher must stay in eval mode, yet {training[:4]} are in train mode")
        graded = [n for n, p in teacher.named_parameters() if p.requires_grad or p.grad is not None]
        _require(not graded, subject, f"the teacher must get no gradient, yet {graded[:4]} require or hold one")
    return losses


def _check_deterministic(bench: _DistillerBench, pair: _Pair, expected: Mapping[str, float]) -> None:
    state = bench.state(pair)
    got = {k: float(v) for k, v in state.train_epoch(state.main_segment.start).items()}
    _require(
        got == dict(expected),
        bench.subject,
        f"the same seed must give the same losses (draw randomness from batch.generator): {expected} then {got}",
    )


def _graph_leaves(terms: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Return the leaf tensors that the autograd graph of ``terms`` would accumulate gradients into."""
    stack = [t.grad_fn for t in terms.values() if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen, leaves = set(), []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def _check_fits_a_batch(bench: _DistillerBench, pair: _Pair, steps: int) -> None:
    """Run the engine's step on one fixed batch: the loss must fall and train only registered parameters."""
    subject, state = bench.subject, bench.state(pair)
    segment = state.main_segment
    optimizer = state.optimizer_for(segment)
    student_capture, teacher_capture = state.captures(segment)
    assert student_capture is not None
    known = {id(p) for p in (*state.student.parameters(), *state.distiller.parameters())}
    stray: list[tuple[int, ...]] = []
    detached: set[str] = set()
    original_step = state.distiller.step

    def inspecting_step(terms: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer) -> None:
        stray.extend(tuple(t.shape) for t in _graph_leaves(terms) if id(t) not in known)
        detached.update(n for n, t in terms.items() if not any(id(v) in known for v in _graph_leaves({n: t})))
        original_step(terms, opt)

    state.student.train()
    state.distiller.train()
    state.distiller.step = inspecting_step  # type: ignore[method-assign]
    raw = state.train_images[:_BATCH]
    images = normalize(raw, bench.dataset.mean, bench.dataset.std)
    losses = []
    try:
        for step in range(steps):
            batch = Batch(
                images, state.train_labels[:_BATCH], torch.arange(_BATCH), raw, torch.Generator().manual_seed(7)
            )
            progress = Progress(epoch=0, epochs=state.recipe.epochs, step=step, steps_per_epoch=steps)
            with _rule(subject, "the engine's training step must run"):
                terms = state.step(segment, student_capture, teacher_capture, batch, progress, optimizer)
            losses.append(sum(_check_terms(subject, "main training", terms).values()))
    finally:
        del state.distiller.step
        student_capture.close()
        if teacher_capture is not None:
            teacher_capture.close()
    _require(
        not stray,
        subject,
        f"the loss trains tensors of shapes {stray[:3]} that are neither the student's nor registered in the "
        "distiller (assign modules and nn.Parameters as attributes, not in plain lists or dicts)",
    )
    _require(
        not detached,
        subject,
        f"loss term(s) {sorted(detached)} do not depend on the student or the method's own parameters "
        "(detached, or computed from the teacher alone): they cannot train anything",
    )
    _require(losses[-1] < losses[0], subject, f"the summed loss did not decrease on a fixed batch: {losses}")


def _check_resume_is_exact(bench: _DistillerBench, pair: _Pair) -> None:
    first = bench.state(pair)
    main = first.main_segment.start
    resume_at = main if main else 1
    first.train_epoch(0)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "checkpoint.pt"
        atomic_torch_save(first.checkpoint(resume_at - 1), checkpoint)
        expected = {k: float(v) for k, v in first.train_epoch(resume_at).items()}
        second = bench.state(pair)
        with _rule(bench.subject, "a checkpoint must resume (state_dict holds every buffer it needs)"):
            second.resume(checkpoint)
    got = {k: float(v) for k, v in second.train_epoch(resume_at).items()}
    _require(got == expected, bench.subject, f"a resumed run must repeat the losses exactly: {expected} vs {got}")
    for who, a, b in (("student", first.student, second.student), ("distiller", first.distiller, second.distiller)):
        differ = _state_equal(a.state_dict(), b.state_dict())
        _require(not differ, bench.subject, f"after resuming, the {who}'s state differs in {differ[:4]}")


def _check_params_taken(subject: str, spec: DistillerSpec, params: Mapping[str, Any]) -> None:
    accepted = spec.accepted_params
    if accepted is None:  # the builder takes **kwargs
        return
    unknown = sorted(set(spec.defaults) - accepted)
    _require(not unknown, subject, f"spec.defaults name parameters the builder does not take: {unknown}")
    undeclared = sorted(accepted - set(spec.defaults))
    _require(
        not undeclared,
        subject,
        f"the builder takes {undeclared}, missing from spec.defaults (defaults are what run ids and results record)",
    )
    unknown = sorted(set(params) - accepted)
    _require(not unknown, subject, f"params {unknown} are not parameters of the method; it takes {sorted(accepted)}")


def check_distiller(
    spec: DistillerSpec | str,
    *,
    params: Mapping[str, Any] | None = None,
    host: PluginHost | None = None,
    steps: int = 2,
    fit_steps: int = 16,
) -> None:
    """Check a distiller against the kdbench contract on tiny models; raise AssertionError on a breach.

    ``spec`` is a :class:`kdbench.DistillerSpec` or a name looked up in ``host``
    (default: the installed plugins). ``params`` override the spec's defaults;
    ``steps`` is the number of engine steps per checked epoch and ``fit_steps`` the
    steps on one fixed batch over which the loss must fall. The method is built on
    tiny_teacher → tiny_student (different widths); if it refuses them with a
    :class:`kdbench.KdbenchError`, on a teacher as wide as the student.
    """
    if steps < 1 or fit_steps < 2:
        raise ValueError(f"check_distiller needs steps >= 1 and fit_steps >= 2, got {steps} and {fit_steps}")
    spec = _resolve("distillers", spec, host, DistillerSpec)
    subject = f"distiller {spec.name!r}"
    _check_described(subject, spec)
    _check_json(subject, "spec.defaults", spec.defaults)
    _check_json(subject, "params", params or {})
    _check_params_taken(subject, spec, params or {})
    bench = _DistillerBench(spec, params or {}, steps)
    pair = bench.pair()
    state = bench.state(pair)
    _check_parts_are_its_own(subject, state)
    _check_round_trip(bench, pair, state)
    _check_phases(bench, pair)
    losses = _check_main_epoch(bench, pair)
    _check_deterministic(bench, pair, losses)
    _check_fits_a_batch(bench, pair, fit_steps)
    _check_resume_is_exact(bench, pair)


# ---------------------------------------------------------------------------------------------------------------------
# Pruners


def _calibration() -> Any:
    from kdbench.pruning import calibration_from_batches

    data = synthetic_image_data(10, train=32, test=1)
    images = normalize(data.train_images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return calibration_from_batches(zip(images.split(16), data.train_labels.split(16)))


def _pruned_copy(subject: str, host: PluginHost, name: str, structured: bool, ratio: float) -> nn.Module:
    from kdbench.pruning import Pruner, PruneSettings, prune_model

    instance = host.pruners.get(name).builder(**host.pruners.get(name).defaults)
    _require(isinstance(instance, Pruner), subject, "the builder must return a kdbench.pruning.Pruner")
    _require(
        instance.structured == structured,
        subject,
        f"spec.structured={structured} but the pruner's class says structured={instance.structured}",
    )
    torch.manual_seed(0)
    model = tiny_model("tiny_teacher").eval()
    settings = PruneSettings(ratio=ratio, round_to=None)
    calibration = _calibration() if instance.needs_gradients else None
    with _rule(subject, f"pruning tiny_teacher at ratio {ratio} must work"):
        pruned = prune_model(host, model, name, {}, torch.zeros(2, 3, 32, 32), settings, calibration)
    _require(isinstance(pruned, nn.Module), subject, f"prune() must return the model, got {type(pruned).__name__}")
    return pruned


def _check_trains_one_step(subject: str, model: nn.Module) -> None:
    data = synthetic_image_data(10, train=_BATCH, test=1)
    images = normalize(data.train_images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model.train()
    before = _parameters(model)  # not the state dict: BatchNorm buffers move in any train-mode forward pass
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with _rule(subject, "the pruned model must train one step"):
        loss = F.cross_entropy(model(images), data.train_labels)
        loss.backward()
        optimizer.step()
    value = float(loss.detach())
    _require(math.isfinite(value), subject, f"the pruned model's loss is not finite ({value})")
    _require(
        _state_equal(before, _parameters(model)), subject, "one training step left the pruned model's weights unchanged"
    )


def check_pruner(spec: PrunerSpec | str, *, host: PluginHost | None = None, ratio: float = 0.5) -> None:
    """Check a pruner on a tiny model at ``ratio``; raise AssertionError on a breach.

    Structured pruners must keep the output shape and the feature taps while reducing
    parameters and MACs; unstructured ones must reach the sparsity. Both must be
    deterministic and leave a model that still trains.
    """
    from kdbench.profile import count_macs
    from kdbench.pruning import sparsity

    spec = _resolve("pruners", spec, host, PrunerSpec)
    subject = f"pruner {spec.name!r}"
    _check_described(subject, spec)
    _check_json(subject, "spec.defaults", spec.defaults)
    kit = _kit_host(pruners=(spec,))
    original = tiny_model("tiny_teacher").eval()
    pruned = _pruned_copy(subject, kit, spec.name, spec.structured, ratio)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with _rule(subject, "the pruned model must run forward with every feature tap"):
        with torch.no_grad(), FeatureCapture(pruned.eval(), {"feats", "preact", "embedding"}) as capture:
            signals = capture(x)
    _require(signals.logits.shape == (2, 10), subject, f"output shape changed to {tuple(signals.logits.shape)}")
    params = sum(p.numel() for p in pruned.parameters())
    if spec.structured:
        _require(
            params < sum(p.numel() for p in original.parameters()), subject, "structured pruning kept every parameter"
        )
        macs = count_macs(pruned, (3, 32, 32)), count_macs(original, (3, 32, 32))
        _require(macs[0] < macs[1], subject, f"structured pruning did not reduce MACs ({macs[0]} vs {macs[1]})")
    else:
        reached = sparsity(pruned, exclude_classifier=True)
        _require(reached >= ratio - 0.02, subject, f"sparsity {reached:.3f} falls short of the ratio {ratio}")
    again = _pruned_copy(subject, kit, spec.name, spec.structured, ratio)
    differ = _state_equal(pruned.state_dict(), again.state_dict())
    _require(not differ, subject, f"pruning the same model twice gave different results in {differ[:4]}")
    _check_trains_one_step(subject, pruned)


# ---------------------------------------------------------------------------------------------------------------------
# Models


def _check_taps(subject: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    taps = getattr(model, "feature_taps", None)
    _require(isinstance(taps, FeatureTaps), subject, "the model needs a `feature_taps` attribute (a FeatureTaps)")
    modules = dict(model.named_modules())
    named = (*taps.stages, *taps.preact, taps.classifier, *taps.bn_before_relu, *filter(None, (taps.pooled_map,)))
    missing = [n for n in named if n not in modules]
    _require(not missing, subject, f"feature_taps name modules the model does not have: {missing}")
    _require(taps.stages, subject, "feature_taps.stages is empty")
    if taps.bn_before_relu:
        _require(
            len(taps.bn_before_relu) == len(taps.stages),
            subject,
            "feature_taps.bn_before_relu needs one BatchNorm per stage",
        )
    classifier_out: list[torch.Tensor] = []
    handle = modules[taps.classifier].register_forward_hook(lambda m, i, o: classifier_out.append(o))
    try:
        with _rule(subject, "a forward pass with every feature tap must run"), torch.no_grad():
            with FeatureCapture(model, SIGNALS) as capture:
                signals = capture(x)
    finally:
        handle.remove()
    batch = x.shape[0]
    _require(
        signals.logits.shape == (batch, num_classes),
        subject,
        f"builder(num_classes={num_classes}) must give logits of shape {(batch, num_classes)}, "
        f"got {tuple(signals.logits.shape)}",
    )
    _require(
        len(classifier_out) == 1 and torch.equal(classifier_out[0], signals.logits),
        subject,
        f"feature_taps.classifier {taps.classifier!r} must be the module whose output is the logits",
    )
    for index, (name, feat, preact) in enumerate(zip(taps.stages, signals.feats, signals.preact)):
        _require(
            feat.dim() == 4 and feat.shape[0] == batch and feat.shape == preact.shape,
            subject,
            f"stage tap {index} ({name!r}) must map a B×C×H×W preact to a feature of the same shape, "
            f"got {tuple(preact.shape)} → {tuple(feat.shape)}",
        )
        rectified_in_place = torch.equal(feat, preact) and bool((feat >= 0).all()) and bool((feat == 0).any())
        _require(
            not rectified_in_place,
            subject,
            f"stage tap {index} ({name!r}): the captured pre-activation equals the rectified output; the stage's "
            "last ReLU must not be in-place (nn.ReLU(inplace=True) overwrites the tensor preact reads)",
        )
        if taps.bn_before_relu:
            bn = modules[taps.bn_before_relu[index]]
            _require(
                isinstance(bn, nn.BatchNorm2d) and bn.num_features == feat.shape[1],
                subject,
                f"bn_before_relu[{index}] {taps.bn_before_relu[index]!r} must be a BatchNorm2d over the stage's "
                f"{feat.shape[1]} channels",
            )
    embedding = signals.embedding
    _require(
        embedding is not None and embedding.shape[0] == batch,
        subject,
        f"the classifier's input (the embedding) must have batch size {batch}",
    )
    _check_pooled_map(subject, taps, signals)
    return signals.logits


def _check_pooled_map(subject: str, taps: FeatureTaps, signals: Signals) -> None:
    pooled_map, embedding = signals.pooled_map, signals.embedding
    where = f"pooled_map {taps.pooled_map!r}" if taps.pooled_map else "the last stage feature (pooled_map unset)"
    _require(
        pooled_map is not None and pooled_map.dim() == 4 and embedding is not None and embedding.dim() == 2,
        subject,
        f"{where} must be a B×C×H×W map and the embedding B×C",
    )
    assert pooled_map is not None and embedding is not None
    _require(
        pooled_map.shape[:2] == embedding.shape and torch.allclose(pooled_map.mean(dim=(2, 3)), embedding, atol=1e-5),
        subject,
        f"the embedding must be the spatial mean of {where}, got a {tuple(pooled_map.shape[1:])} map for a "
        f"{tuple(embedding.shape[1:])} embedding; name the global pooling module in feature_taps.pooled_map",
    )


def check_model(spec: ModelSpec | str, *, host: PluginHost | None = None, num_classes: int = 10) -> None:
    """Check a model builder (output shape, feature taps, determinism, state_dict); raise AssertionError on a breach."""
    spec = _resolve("models", spec, host, ModelSpec)
    subject = f"model {spec.name!r}"
    _check_described(subject, spec, citation=False)
    size = spec.input_size
    _require(
        isinstance(size, tuple) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size),
        subject,
        f"input_size must be (channels, height, width), got {size!r}",
    )
    _require(spec.default_num_classes > 0, subject, "default_num_classes must be positive")
    torch.manual_seed(0)
    with _rule(subject, f"builder(num_classes={num_classes}) must build the model"):
        model = spec.builder(num_classes=num_classes)
    _require(isinstance(model, nn.Module), subject, f"the builder must return an nn.Module, got {type(model).__name__}")
    model.eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    logits = _check_taps(subject, model, x, num_classes)
    with torch.no_grad():
        again = model(x)
    _require(torch.equal(logits, again), subject, "two eval-mode forward passes of one input must agree exactly")
    torch.manual_seed(1)
    with _rule(subject, "its state_dict must load strictly into a second instance"):
        twin = spec.builder(num_classes=num_classes)
        twin.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        _require(
            torch.equal(twin.eval()(x), logits), subject, "a state_dict round trip must reproduce the outputs exactly"
        )
    other = num_classes + 3  # a builder that ignores num_classes passes when it equals the model's own default
    with _rule(subject, f"builder(num_classes={other}) must build the model"), torch.no_grad():
        shape = tuple(spec.builder(num_classes=other).eval()(x).shape)
    _require(
        shape == (2, other), subject, f"builder(num_classes={other}) gives outputs of shape {shape}, not (2, {other})"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Datasets


def _check_image_data(subject: str, spec: DatasetSpec, data: object) -> None:
    _require(isinstance(data, ImageData), subject, f"the loader must return kdbench.ImageData, got {type(data)}")
    assert isinstance(data, ImageData)
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        _require(images.shape[0] > 0, subject, f"the {split} split is empty")
        _require(
            tuple(images.shape[1:]) == tuple(spec.image_size),
            subject,
            f"{split} images are {tuple(images.shape[1:])}, but image_size says {tuple(spec.image_size)}",
        )
        low, high = int(labels.min()), int(labels.max())
        _require(
            0 <= low and high < spec.num_classes,
            subject,
            f"{split} labels span {low}..{high}, outside 0..{spec.num_classes - 1} (num_classes={spec.num_classes})",
        )


def check_dataset(
    spec: DatasetSpec | str,
    *,
    root: Path | None = None,
    host: PluginHost | None = None,
    download: bool = False,
) -> None:
    """Check a dataset's spec and loader; raise AssertionError on a breach.

    The loader is first called on an empty directory: it must return valid data (a
    dataset that ships its own) or raise a :class:`kdbench.KdbenchError` naming the
    path it expected. With ``root``, the data found there (or downloaded) is validated.
    """
    spec = _resolve("datasets", spec, host, DatasetSpec)
    subject = f"dataset {spec.name!r}"
    _check_described(subject, spec, citation=False)
    _require(spec.num_classes > 0, subject, "num_classes must be positive")
    size = tuple(spec.image_size)
    _require(len(size) == 3 and all(v > 0 for v in size), subject, f"image_size must be (C, H, W), got {size}")
    _require(
        len(spec.mean) == size[0] and len(spec.std) == size[0],
        subject,
        f"mean and std need one value per channel ({size[0]}), got {len(spec.mean)} and {len(spec.std)}",
    )
    _require(all(s > 0 for s in spec.std), subject, "std values must be positive")
    with tempfile.TemporaryDirectory() as scratch:
        empty = Path(scratch)
        try:
            data = spec.loader(empty, False)
        except KdbenchError as exc:
            _require(
                str(empty) in str(exc),
                subject,
                f"the missing-data error must name where the data was expected (under {empty}): {exc}",
            )
            data = None
        except Exception as exc:
            raise AssertionError(
                f"{subject}: with no data under {empty} the loader must raise a kdbench.KdbenchError naming the "
                f"missing path, not {type(exc).__name__}: {exc}"
            ) from exc
    if data is not None:
        _check_image_data(subject, spec, data)
    if root is not None:
        with _rule(subject, f"the loader must read the data under {root}"):
            data = spec.loader(Path(root), download)
        _check_image_data(subject, spec, data)
