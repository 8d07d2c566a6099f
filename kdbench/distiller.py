"""The distiller contract: a module that owns a method's extra parts and returns its loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import nn

from kdbench.features import Signals

__all__ = ["Batch", "DistillContext", "Distiller", "Progress"]


@final
@dataclass(frozen=True, slots=True)
class Batch:
    """One training batch as the model sees it: normalised images, labels, dataset indices."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    """Positions of the samples in the train set (for methods with per-sample memory, e.g. CRD)."""


@final
@dataclass(frozen=True, slots=True)
class DistillContext:
    """What a distiller may know when it is built, besides the two models."""

    num_classes: int
    input_size: tuple[int, int, int]
    num_train: int
    student_name: str
    teacher_name: str | None
    student_shapes: Signals | None = None
    """Shapes (as empty tensors on the meta device) of the student's signals."""
    teacher_shapes: Signals | None = None


@final
@dataclass(frozen=True, slots=True)
class Progress:
    """Where training is: 0-based epoch, total epochs, and step within the epoch."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        """Return the fraction of training done before this step, in [0, 1)."""
        return (self.epoch + self.step / max(self.steps_per_epoch, 1)) / max(self.epochs, 1)


class Distiller(nn.Module):
    """Base class of every training method (vanilla training is one too).

    Subclasses declare the signals they read from each model
    (``"logits"``, ``"feats"``, ``"preact"``, ``"embedding"``) and implement
    :meth:`loss_terms`. Submodules and parameters registered on the distiller
    are the method's *training-only* parts: the engine optimises them with the
    student, stores them in checkpoints and reports their parameter count apart.
    Never register the student or the teacher as submodules.
    """

    student_signals: ClassVar[frozenset[str]] = frozenset({"logits"})
    teacher_signals: ClassVar[frozenset[str]] = frozenset({"logits"})

    def loss_terms(
        self,
        student: Signals,
        teacher: Signals | None,
        batch: Batch,
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return the weighted loss terms (name → scalar tensor) whose sum is minimised."""
        raise NotImplementedError

    def extra_parameter_count(self) -> int:
        """Return how many trainable parameters the method adds to the student."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
