"""The distiller contract: a module that owns a method's extra parts and returns its loss terms.

Everything a method needs beyond "logits in, loss out" is a general capability
declared here, never a special case in the engine:

- **signals**: ``student_signals`` / ``teacher_signals`` name what the feature
  taps must capture (``logits``, ``feats``, ``preact``, ``embedding``,
  ``pooled_map``), per phase
  if needed (:meth:`Distiller.signals`); no teacher signal means no teacher pass;
- **extra trainable parts**: submodules and parameters of the distiller are
  optimised with the student, checkpointed, and reported as training-only
  parameters; buffers (e.g. CRD's memory banks) live in its state_dict;
- **per-sample indices and randomness**: every :class:`Batch` carries the
  samples' train-set indices and the engine's per-epoch generator (so a resumed
  run draws the same numbers); :class:`DistillContext` carries the train labels;
- **extra views**: :meth:`Distiller.prepare_batch` may replace a batch's images
  with more views made on the device (rotations, a strong augmentation of
  ``batch.raw``) before both models see them, in one pass or view by view
  (``Batch.chunks``);
- **stages before the main training**: :meth:`Distiller.phases` declares them
  (e.g. 30 epochs of connector initialisation) and :meth:`Distiller.phase_terms`
  gives their loss; the engine runs and resumes them as part of the run;
- **optimisation**: :meth:`Distiller.make_optimizer` and :meth:`Distiller.step`
  default to the recipe's SGD on the summed terms; a method that changes the
  optimiser itself (DOT) overrides them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.features import Signals
from kdbench.specs import AugmentSpec

__all__ = ["Batch", "DistillContext", "Distiller", "OptimizerSettings", "Phase", "Progress", "at_least_float32"]


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in float32 if it is half precision (bf16/fp16 under autocast), else unchanged.

    Loss maths of distances, Gram matrices, SVDs and softmaxes is done in at least
    float32 even when the models run in bf16.
    """
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


@final
@dataclass(frozen=True, slots=True)
class Batch:
    """One training batch: normalised images as the models see them, labels, indices, raw pixels, RNG."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    """Positions of the samples in the train set (for methods with per-sample memory, e.g. CRD)."""
    raw: torch.Tensor | None = None
    """The same samples as uint8, before augmentation (for methods that make their own views)."""
    generator: torch.Generator | None = None
    """The engine's generator for this epoch, on the batch's device: draw a method's randomness from it."""
    extras: Mapping[str, Any] | None = None
    """Whatever :meth:`Distiller.prepare_batch` wants to pass on to :meth:`Distiller.loss_terms`."""
    chunks: tuple[int, ...] = ()
    """Sizes of consecutive views to forward *separately* (so BatchNorm sees each view alone, as a
    reference that runs the model once per view); their signals are concatenated. Empty: one pass."""


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
    train_labels: torch.Tensor | None = None
    """Labels of the whole train set, on the training device (e.g. for class-aware negatives)."""
    mean: tuple[float, ...] = ()
    """The dataset's normalisation, for methods that make extra views of ``batch.raw``."""
    std: tuple[float, ...] = ()
    augment: AugmentSpec | None = None
    """The dataset's train augmentation."""


@final
@dataclass(frozen=True, slots=True)
class Progress:
    """Where training is: 0-based epoch, total epochs, and step within the epoch (of the current phase)."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    phase: str = "main"

    @property
    def fraction(self) -> float:
        """Return the fraction of training done before this step, in [0, 1)."""
        return (self.epoch + self.step / max(self.steps_per_epoch, 1)) / max(self.epochs, 1)


@final
@dataclass(frozen=True, slots=True)
class Phase:
    """A stage a method runs before the main training (e.g. AB's 30 epochs of connector initialisation)."""

    name: str
    epochs: int
    lr: float | None = None
    """Learning rate of the phase; ``None`` means the recipe's base LR."""
    student_mode: str = "eval"
    """``"train"`` or ``"eval"``: the student's BatchNorm mode during the phase."""
    lr_milestones: tuple[int, ...] = ()
    """Epochs of the phase (0-based) from which the LR is multiplied by ``lr_gamma`` once more."""
    lr_gamma: float = 0.1


@final
@dataclass(frozen=True, slots=True)
class OptimizerSettings:
    """The recipe's optimiser hyper-parameters, handed to :meth:`Distiller.make_optimizer`."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    fused: bool = False
    """Use the fused SGD kernel (``--fused-sgd``, CUDA): same formula, different rounding."""


class Distiller(nn.Module):
    """Base class of every training method (vanilla training is one too).

    Subclasses declare the signals they read from each model and implement
    :meth:`loss_terms`; every other method has a working default. Never
    register the student or the teacher as submodules.
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

    def signals(self, phase: Phase | None) -> tuple[frozenset[str], frozenset[str]]:
        """Return (student, teacher) signals needed in ``phase`` (``None``: the main training).

        Default: the class's declarations everywhere. A method whose main training
        needs no teacher (AB, FSP after their init phase) returns an empty teacher
        set there, and the engine then skips the teacher's forward pass.
        """
        return self.student_signals, self.teacher_signals

    def prepare_batch(self, batch: Batch) -> Batch:
        """Return the batch both models will see (default: unchanged); may add views made on the device."""
        return batch

    def phases(self) -> tuple[Phase, ...]:
        """Return the stages to run before the main training (default: none)."""
        return ()

    def phase_parameters(self, phase: Phase, student: nn.Module) -> Iterable[nn.Parameter]:
        """Return the parameters a phase trains (default: the distiller's own)."""
        return self.parameters()

    def phase_terms(
        self, phase: Phase, student: Signals | None, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the loss terms of a phase declared by :meth:`phases`.

        ``student`` is ``None`` when :meth:`signals` asks nothing of the student in
        that phase (the engine then skips the student's forward pass).
        """
        raise NotImplementedError(f"{type(self).__name__} declares phase {phase.name!r} but no phase_terms")

    def main_parameters(self) -> Iterable[nn.Parameter]:
        """Return the method's parameters trained with the student in the main training (default: all)."""
        return self.parameters()

    def make_optimizer(self, parameters: list[nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
        """Return the optimiser of the main training (default: the recipe's SGD)."""
        return torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.nesterov,
            fused=settings.fused or None,
        )

    def step(self, terms: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Minimise the summed terms by one optimiser step (default: one backward of the sum)."""
        loss = torch.stack([term.float() for term in terms.values()]).sum()
        if not loss.requires_grad:  # a Python attribute: no host sync
            raise KdbenchError(
                f"{type(self).__name__}: none of the loss terms {sorted(terms)} depends on a trained parameter "
                "(detached, or computed from the teacher alone)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def extra_parameter_count(self) -> int:
        """Return how many trainable parameters the method adds to the student."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
