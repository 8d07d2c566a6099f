"""The pruner contract: settings, the :class:`Pruner` base class, calibrations, the registry entry point."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.pruning._structured import classifier_of, prune_structured

if TYPE_CHECKING:
    from kdbench._plugins import PluginHost

__all__ = [
    "DEFAULT_TARGET_STEPS",
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "Calibration",
    "PruneSettings",
    "Pruner",
    "calibration_from_batches",
    "check_choice",
    "prune_model",
    "sparsity",
]

#: Steps of the channel-ratio schedule (0 → 1) searched when a MACs reduction is the target.
DEFAULT_TARGET_STEPS = 100

#: How torch-pruning's group importances combine the scores of a group's coupled layers.
GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate")
#: How torch-pruning's group importances rescale a group's scores (only global pruning compares groups).
NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")

#: ``calibration(model)`` runs forward + backward of a loss on a few batches, accumulating ``.grad``.
Calibration = Callable[[nn.Module], None]


@dataclass(frozen=True, slots=True)
class PruneSettings:
    """How much to prune and where: exactly one of ``ratio`` and ``target_macs_reduction``.

    ``ratio`` is torch-pruning's ``pruning_ratio`` (the fraction of each layer's
    channels removed; for unstructured pruners, the fraction of weights zeroed).
    ``target_macs_reduction`` (e.g. 2.0: MACs halved) is reached by raising the
    channel ratio in ``iterative_steps`` equal steps from 0 towards 1 and stopping at
    the first step whose MACs reduction reaches it. ``iterative_steps=None`` means
    1 for a ratio and :data:`DEFAULT_TARGET_STEPS` for a target. ``round_to`` keeps
    channel counts multiples of it (8 for real speed-ups; None for the published
    CIFAR ratios). ``ignored`` names modules never changed (the classifier always
    keeps its outputs).
    """

    ratio: float | None = None
    target_macs_reduction: float | None = None
    global_pruning: bool = False
    round_to: int | None = 8
    ignored: tuple[str, ...] = ()
    iterative_steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignored", tuple(self.ignored))
        if (self.ratio is None) == (self.target_macs_reduction is None):
            raise KdbenchError("prune settings need exactly one of `ratio` and `target_macs_reduction`")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise KdbenchError(f"pruning ratio must lie strictly between 0 and 1, got {self.ratio}")
        if self.target_macs_reduction is not None and not self.target_macs_reduction > 1.0:
            target = self.target_macs_reduction
            raise KdbenchError(f"target MACs reduction must be above 1 (2.0 halves MACs), got {target}")
        if self.round_to is not None and self.round_to < 1:
            raise KdbenchError(f"round_to must be a positive channel count or None, got {self.round_to}")
        if self.iterative_steps is not None and self.iterative_steps < 1:
            raise KdbenchError(f"iterative_steps must be at least 1, got {self.iterative_steps}")

    @property
    def steps(self) -> int:
        """Return the number of pruning steps (``iterative_steps`` or its default for the mode)."""
        if self.iterative_steps is not None:
            return self.iterative_steps
        return 1 if self.ratio is not None else DEFAULT_TARGET_STEPS


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise KdbenchError naming them."""
    if value not in choices:
        raise KdbenchError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


class Pruner:
    """Base class of pruner plugins: an importance criterion, or a whole ``prune`` for unstructured ones."""

    structured: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = False
    """Whether :meth:`prune` needs a calibration callable that accumulates loss gradients (Taylor, SSA)."""

    def importance(self) -> Any:
        """Return the torch-pruning importance (``importance(group)`` → per-channel scores) of this criterion."""
        raise NotImplementedError(f"{type(self).__name__} must implement importance() or override prune()")

    def prune(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        settings: PruneSettings,
        calibration: Calibration | None = None,
    ) -> nn.Module:
        """Return ``model`` pruned in place (default: structured pruning with :meth:`importance`)."""
        return prune_structured(
            model, self.importance(), example_inputs, settings, calibration, needs_gradients=self.needs_gradients
        )


# ---------------------------------------------------------------------------------------------------------------------
# Calibration


def calibration_from_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> Calibration:
    """Return a calibration that accumulates ``loss(model(x), y)`` gradients over ``batches`` (re-iterable).

    Batches are moved to the device of the model's first parameter. SSA-KD's code
    uses two batches of 128 training images with cross-entropy, in eval mode.
    """
    batches = list(batches)

    def calibrate(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for images, targets in batches:
            loss(model(images.to(device)), targets.to(device)).backward()

    return calibrate


# ---------------------------------------------------------------------------------------------------------------------
# Unstructured reporting


def sparsity(model: nn.Module, exclude_classifier: bool = False) -> float:
    """Return the fraction of zero entries among conv and linear weights (optionally without the classifier)."""
    skipped = {id(m) for m in classifier_of(model).modules()} if exclude_classifier else set()
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and id(module) not in skipped:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Registry entry point


def prune_model(
    host: PluginHost,
    model: nn.Module,
    pruner: str,
    params: Mapping[str, Any],
    example_inputs: torch.Tensor,
    settings: PruneSettings,
    calibration: Calibration | None = None,
) -> nn.Module:
    """Return ``model`` pruned in place by registered pruner ``pruner`` with its defaults updated by ``params``."""
    spec = host.pruners.get(pruner)
    arguments = {**spec.defaults, **params}
    try:
        instance = spec.builder(**arguments)
    except TypeError as exc:
        raise KdbenchError(f"pruner {pruner!r} does not accept {sorted(arguments)}: {exc}") from exc
    if not isinstance(instance, Pruner):
        raise KdbenchError(f"pruner {pruner!r} built a {type(instance).__name__}, not a kdbench.pruning.Pruner")
    return instance.prune(model, example_inputs, settings, calibration)
