"""The frozen value classes plugins return from the registration hooks."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, final

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdbench.distiller import Distiller

__all__ = [
    "AugmentSpec",
    "DatasetSpec",
    "DistillerSpec",
    "ImageData",
    "ImageFiles",
    "ModelSpec",
    "PairSpec",
    "Recipe",
    "ResizedCropSpec",
    "SuiteSpec",
    "TeacherSpec",
]

Family = Literal["baseline", "logit", "feature"]
#: The leaderboard groups a distiller can belong to.
FAMILIES: tuple[str, ...] = ("baseline", "logit", "feature")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@final
@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An architecture usable as teacher or student.

    ``builder(num_classes=...)`` returns an ``nn.Module`` whose ``feature_taps``
    attribute is a :class:`kdbench.FeatureTaps`.
    """

    name: str
    builder: Callable[..., nn.Module]
    description: str
    citation: str = ""
    input_size: tuple[int, int, int] = (3, 32, 32)
    default_num_classes: int = 100
    tags: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class AugmentSpec:
    """A train augmentation: zero-padded random crop back to size, optional h-flip."""

    pad: int = 4
    flip: bool = True


@final
@dataclass(frozen=True, slots=True)
class ResizedCropSpec:
    """A streaming dataset's augmentation: torchvision's ImageNet recipe.

    Train: ``RandomResizedCrop(size, scale, ratio)`` then, with ``flip``, a horizontal flip with
    probability 1/2. Eval: ``Resize(eval_resize)`` of the shorter side, then ``CenterCrop(size)``.
    ``size`` is the dataset's ``image_size``. Every sample's crop is drawn from its own key, itself
    drawn from (run seed, epoch): the same in every loader, worker count and DDP rank.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    eval_resize: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if not (0 < self.scale[0] <= self.scale[1] <= 1) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ResizedCropSpec: scale {self.scale} / ratio {self.ratio} out of range")


@final
@dataclass(frozen=True, slots=True)
class ImageFiles:
    """A dataset read from disk while it trains (streaming): image file paths and int64 labels.

    For datasets too large to hold on the device (ImageNet: 1.28 M JPEGs). Paths are absolute;
    any format PIL reads works, JPEG decodes on the device where a loader can. ``verified`` as
    in :class:`ImageData`. A dataset whose loader returns this declares a :class:`ResizedCropSpec`.
    """

    train_files: tuple[str, ...]
    train_labels: torch.Tensor
    test_files: tuple[str, ...]
    test_labels: torch.Tensor
    verified: bool | None = None

    def __post_init__(self) -> None:
        import torch

        object.__setattr__(self, "train_files", tuple(str(f) for f in self.train_files))
        object.__setattr__(self, "test_files", tuple(str(f) for f in self.test_files))
        for files, labels in ((self.train_files, self.train_labels), (self.test_files, self.test_labels)):
            if labels.dtype != torch.int64 or tuple(labels.shape) != (len(files),):
                raise ValueError("labels must be int64 with one entry per file")

    @property
    def num_train(self) -> int:
        """Return the number of train images."""
        return len(self.train_files)

    @property
    def num_test(self) -> int:
        """Return the number of test images."""
        return len(self.test_files)


@final
@dataclass(frozen=True, slots=True)
class ImageData:
    """A whole image-classification dataset as uint8 NCHW tensors and int64 labels.

    ``verified`` says whether the loader found the files it read equal to their published
    checksums (True), different (False: the records and boards say "unverified data"), or had
    nothing to check them against (None).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    verified: bool | None = None

    def __post_init__(self) -> None:
        import torch

        for name in ("train_images", "test_images"):
            images = getattr(self, name)
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{name} must be a uint8 N×C×H×W tensor, got {images.dtype} {tuple(images.shape)}")
        for images, labels in ((self.train_images, self.train_labels), (self.test_images, self.test_labels)):
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError("labels must be int64 with one entry per image")


@final
@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """An image-classification dataset: how to load it and how it is normalised/augmented.

    ``loader(root, download)`` returns :class:`ImageData` (held on the device; ``augment`` an
    :class:`AugmentSpec`) or :class:`ImageFiles` (streamed from disk; ``augment`` a
    :class:`ResizedCropSpec`), or raises :class:`kdbench.errors.DataNotFoundError` naming the
    path it expected.
    """

    name: str
    loader: Callable[[Path, bool], ImageData | ImageFiles]
    description: str
    num_classes: int
    image_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec | ResizedCropSpec = AugmentSpec()
    citation: str = ""

    @property
    def streaming(self) -> bool:
        """Return whether this dataset streams from disk (its loader returns :class:`ImageFiles`)."""
        return isinstance(self.augment, ResizedCropSpec)


@dataclass(frozen=True, slots=True)
class BuilderParameters:
    """The hyper-parameters a builder takes: their names and the defaults its signature gives."""

    names: frozenset[str]
    defaults: Mapping[str, Any]


def builder_parameters(builder: Callable[..., Any], skip: int) -> BuilderParameters | None:
    """Return the parameters ``builder`` takes after its first ``skip`` positional ones (None: ``**kwargs``).

    A builder whose signature cannot be read also gives None: it may take anything.
    """
    try:
        parameters = list(inspect.signature(builder).parameters.values())[skip:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in parameters if p.kind in by_keyword]
    defaults = {p.name: p.default for p in named if p.default is not inspect.Parameter.empty}
    return BuilderParameters(frozenset(p.name for p in named), MappingProxyType(defaults))


def _one_source_of_defaults(kind: str, name: str, given: Mapping[str, Any] | None, taken: BuilderParameters | None):
    """Return the spec's defaults: ``given`` checked against the builder's own defaults, or the builder's.

    A default written in both places must be the same JSON value (run ids hash it): a
    mismatch raises ValueError naming the parameter, so the plugin fails to register.
    """
    if given is None:
        return _frozen(taken.defaults if taken else {})
    if taken is not None:
        for key, value in given.items():
            if key in taken.defaults and _json_text(taken.defaults[key]) != _json_text(value):
                raise ValueError(
                    f"{kind} {name!r}: default {key}={value!r} in the spec differs from the builder's "
                    f"{key}={taken.defaults[key]!r}; write it once (leave `defaults` out to use the builder's)"
                )
    return _frozen(given)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


@final
@dataclass(frozen=True, slots=True)
class DistillerSpec:
    """A training method: a builder for its :class:`kdbench.Distiller` and its published defaults.

    ``builder(student, teacher, context, **params)`` returns the distiller; the
    engine calls it with ``defaults`` updated by the suite's overrides. Left out,
    ``defaults`` are the keyword defaults of the builder's signature; given, each must
    equal the builder's own default for the same parameter (one source of truth).
    """

    name: str
    builder: Callable[..., Distiller]
    description: str
    citation: str = ""
    defaults: Mapping[str, Any] | None = None
    family: Family = "logit"
    needs_teacher: bool = True

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"distiller {self.name!r}: family must be one of {', '.join(FAMILIES)}, got {self.family!r}"
            )
        taken = builder_parameters(self.builder, skip=3)
        object.__setattr__(self, "defaults", _one_source_of_defaults("distiller", self.name, self.defaults, taken))

    @property
    def accepted_params(self) -> frozenset[str] | None:
        """Return the parameter names the builder takes after (student, teacher, context); None: any."""
        taken = builder_parameters(self.builder, skip=3)
        return None if taken is None else taken.names


@final
@dataclass(frozen=True, slots=True)
class PrunerSpec:
    """A pruning method: ``builder(**params)`` returns a :class:`kdbench.pruning.Pruner`.

    ``structured`` pruners remove whole channels (through torch-pruning's
    dependency graph); unstructured ones zero individual weights. ``defaults`` work
    as a distiller's: left out, the builder's keyword defaults; given, checked against them.
    """

    name: str
    builder: Callable[..., Any]
    description: str
    citation: str = ""
    defaults: Mapping[str, Any] | None = None
    structured: bool = True

    def __post_init__(self) -> None:
        taken = builder_parameters(self.builder, skip=0)
        object.__setattr__(self, "defaults", _one_source_of_defaults("pruner", self.name, self.defaults, taken))

    @property
    def accepted_params(self) -> frozenset[str] | None:
        """Return the parameter names the builder takes; None: any."""
        taken = builder_parameters(self.builder, skip=0)
        return None if taken is None else taken.names


@final
@dataclass(frozen=True, slots=True)
class TeacherSpec:
    """A trained teacher available as a file: ``path`` is relative to ``--teacher-root``.

    The state_dict is read from ``checkpoint[state_key]`` (or the file itself
    when ``state_key`` is empty).
    """

    name: str
    model: str
    dataset: str
    path: str
    description: str = ""
    state_key: str = "model"
    sha256: str = ""
    url: str = ""
    reported_top1: float | None = None
    citation: str = ""


@final
@dataclass(frozen=True, slots=True)
class Recipe:
    """The optimisation recipe of a run, as data (defaults: the CIFAR-100 KD recipe)."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_milestones: tuple[int, ...] = (150, 180, 210)
    lr_gamma: float = 0.1
    lr_overrides: Mapping[str, float] = field(default_factory=dict)
    """Base LR per student architecture (e.g. 0.01 for ShuffleV1/V2, MobileNetV2)."""
    eval_batch_size: int = 1000
    strong_copy: str = ""
    """Name of a strong augmentation policy (``kdbench.augment.POLICIES``, e.g. ``"streamlined"``): each epoch
    then trains on the train set twice, its usual views and a copy augmented with that policy on top,
    shuffled together (Streamlined KD's recipe). Empty: the train set once."""
    sync_bn: bool = False
    """A run trained by several processes (``--nproc-per-node``) normalises with BatchNorm statistics over the
    global batch (``torch.nn.SyncBatchNorm``, CUDA only); False: per-process statistics, as the references."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_overrides", _frozen(self.lr_overrides))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))

    def base_lr(self, student: str) -> float:
        """Return the base learning rate for ``student``."""
        return float(self.lr_overrides.get(student, self.lr))

    def lr_at(self, epoch: int, student: str) -> float:
        """Return the LR of 0-based ``epoch``: decayed once per milestone already passed."""
        passed = sum(1 for milestone in self.lr_milestones if epoch >= milestone)
        return self.base_lr(student) * self.lr_gamma**passed


@final
@dataclass(frozen=True, slots=True)
class PairSpec:
    """A teacher→student pair of a suite, with per-pair distiller overrides."""

    teacher: str
    student: str
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    """Methods that cannot run on this pair (e.g. FSP needs equal channels); shown as n/a."""
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-method recipe fields for this pair (a method's own published schedule, e.g. MLKD's)."""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Method → the parameters whose value on this pair has no published source (kdbench's choice);
    leaderboards list them in their notes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen({k: _frozen(v) for k, v in dict(self.params).items()}))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "recipes", _frozen({k: _frozen(v) for k, v in dict(self.recipes).items()}))
        object.__setattr__(self, "choices", _frozen({k: tuple(v) for k, v in dict(self.choices).items()}))

    @property
    def label(self) -> str:
        """Return ``teacher→student``."""
        return f"{self.teacher}→{self.student}"


@final
@dataclass(frozen=True, slots=True)
class SuiteSpec:
    """A benchmark: dataset × pairs × distillers × seeds under one recipe."""

    name: str
    description: str
    dataset: str
    pairs: tuple[PairSpec, ...]
    distillers: tuple[str, ...] = ("*",)
    """Distiller names; ``"*"`` means every registered distiller."""
    seeds: tuple[int, ...] = (0, 1, 2)
    recipe: Recipe = Recipe()
    teacher_recipe: Recipe | None = None
    """Recipe for teachers the runner trains itself (default: ``recipe``)."""
    teacher_seed: int = 0
    teachers: Mapping[str, str] = field(default_factory=dict)
    """Teacher architecture → registered teacher name or checkpoint path."""
    distiller_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prune_after: tuple[Mapping[str, Any], ...] = ()
    """Distill-then-prune stages: each prunes every finished student run of ``methods`` and fine-tunes it
    (keys: pruner, ratio or macs, finetune_epochs, finetune_lr, methods, round_to, global, params)."""
    method_recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-method recipe fields (e.g. ``{"mlkd": {"lr": 0.025}}``); a pair's ``recipes`` win over these."""
    epoch_rule: Literal["best", "last"] = "best"
    reference: str = ""
    """Dataset key of published numbers shown beside ours (e.g. ``cifar100``)."""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", _frozen(self.teachers))
        object.__setattr__(
            self, "distiller_params", _frozen({k: _frozen(v) for k, v in dict(self.distiller_params).items()})
        )
        object.__setattr__(
            self, "method_recipes", _frozen({k: _frozen(v) for k, v in dict(self.method_recipes).items()})
        )
        object.__setattr__(self, "prune_after", tuple(_frozen(stage) for stage in self.prune_after))

    def recipe_for(self, pair: PairSpec, method: str) -> Recipe:
        """Return the recipe of ``method`` on ``pair``: the suite's, updated by the method's own fields.

        An explicit ``lr`` there also replaces the suite's per-student LR overrides.
        """
        fields = {**self.method_recipes.get(method, {}), **pair.recipes.get(method, {})}
        if not fields:
            return self.recipe
        if "lr" in fields:
            fields["lr_overrides"] = {}
        return replace(self.recipe, **fields)
