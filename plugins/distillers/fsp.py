"""FSP: Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017.

The "flow of solution procedure" between two stages is the Gram matrix of their
features over spatial positions; the student's feature layers are first trained to
reproduce the teacher's FSP matrices (init stage), then the student is trained on
the labels alone. CIFAR defaults and details follow the CRD benchmark (Tian et
al., ICLR 2020, RepDistiller ``distiller_zoo/FSP.py``, ``helper/pretrain.py``,
``train_student.py``), which the CIFAR-100 tables report:

- features: the post-ReLU outputs of every stage, stem included (f0..fK); one FSP
  matrix per pair of consecutive stages; the larger map of a pair is average-pooled
  to the smaller's size;
- loss: the mean squared difference of the matrices, summed over the pairs, with
  weight 1 — the reference's ``-b 50`` multiplies a zero main-stage term, so the
  published "weight 50" never reaches the loss (``fsp_weight`` is that init weight);
- 30 init epochs at the recipe's base LR training the student's feature layers
  (everything but the classifier) with the student in train mode, its BatchNorm
  statistics moving, as RepDistiller (``helper/pretrain.py`` lines 12-14 put the
  student in eval mode and then ``init_modules`` — ``model_s.get_feat_modules()``,
  ``train_student.py`` lines 259-261 — in train mode); then CE only.

FSP compares matrices entry by entry, so student and teacher must have the same
number of stages and the same channels at every stage. The reference raises
otherwise and so does kdbench: on the CIFAR-100 suites FSP runs on resnet56→resnet20,
resnet110→resnet32, resnet110→resnet20, resnet32x4→resnet8x4, wrn_40_2→wrn_16_2 and
vgg13→vgg8, and cannot run on wrn_40_2→wrn_40_1 (16/32/64 vs 32/64/128 channels, the
"N/A" of the CRD and ASKD tables) nor on any pair of different families.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import (
    Batch,
    DistillContext,
    Distiller,
    DistillerSpec,
    KdbenchError,
    Phase,
    Progress,
    Signals,
    at_least_float32,
    feature_parameters,
    hookimpl,
)

__all__ = ["FSP", "fsp_loss", "fsp_matrix"]


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Return the FSP matrices G[n, i, j] = mean over positions of bottom[n, i] · top[n, j], shape (N, C_b, C_t).

    When the two maps differ in size, the larger one is adaptive-average-pooled to
    the smaller one's (Yim et al. 2017, eq. 1; RepDistiller's pooling). Computed in
    at least float32, outside autocast.
    """
    bottom, top = at_least_float32(bottom), at_least_float32(top)
    if bottom.shape[-2:] != top.shape[-2:]:
        if bottom.shape[-2] > top.shape[-2]:
            bottom = F.adaptive_avg_pool2d(bottom, top.shape[-2:])
        else:
            top = F.adaptive_avg_pool2d(top, bottom.shape[-2:])
    positions = bottom.shape[-2] * bottom.shape[-1]
    with torch.autocast(bottom.device.type, enabled=False):  # a Gram matrix in bf16 loses the match it measures
        return torch.einsum("nihw,njhw->nij", bottom, top) / positions


def fsp_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return Σ over consecutive stage pairs of mean((G_student − G_teacher)²)."""
    losses = [
        (fsp_matrix(student[k], student[k + 1]) - fsp_matrix(teacher[k], teacher[k + 1])).pow(2).mean()
        for k in range(len(student) - 1)
    ]
    return torch.stack(losses).sum()


def _channels(shapes: Signals | None, side: str) -> list[int]:
    if shapes is None:
        raise KdbenchError(f"FSP needs the {side}'s signal shapes in the DistillContext")
    return [t.shape[1] for t in shapes.feats]


class FSP(Distiller):
    """Train the student's stages to reproduce the teacher's FSP matrices, then train on the labels."""

    student_signals = frozenset({"feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        fsp_weight: float = 1.0,
        init_epochs: int = 30,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        s_channels = _channels(context.student_shapes, "student")
        t_channels = _channels(context.teacher_shapes, "teacher")
        if s_channels != t_channels:
            raise KdbenchError(
                f"FSP needs equal stage channels: {context.student_name} has {s_channels}, "
                f"{context.teacher_name} has {t_channels} (FSP cannot run on this pair, as in the reference)"
            )
        self.fsp_weight = fsp_weight
        self.init_epochs = init_epochs
        self.ce_weight = ce_weight

    def phases(self) -> tuple[Phase, ...]:
        """Return the FSP initialisation stage (recipe base LR, the student in train mode as RepDistiller)."""
        return (Phase("init", epochs=self.init_epochs, lr=None, student_mode="train"),) if self.init_epochs else ()

    def phase_parameters(self, phase: Phase, student: nn.Module) -> Iterable[nn.Parameter]:
        """Return the student's feature layers' parameters."""
        return feature_parameters(student)

    def phase_terms(
        self, phase: Phase, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"fsp": fsp_weight · FSP loss over all stages}``."""
        assert teacher is not None
        return {"fsp": self.fsp_weight * fsp_loss(student.feats, [t.detach() for t in teacher.feats])}

    def signals(self, phase: Phase | None) -> tuple[frozenset[str], frozenset[str]]:
        """Return the init stage's signals; the main training is CE only and needs no teacher pass."""
        if phase is None:
            return frozenset({"logits"}), frozenset()
        return self.student_signals, self.teacher_signals

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the main stage's only term, ``{"ce": ce_weight · CE}``."""
        return {"ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets)}


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="fsp",
            builder=FSP,
            description="Flow of solution procedure: 30 epochs matching stage-to-stage Gram matrices, then CE",
            citation="Yim, Joo, Bae & Kim, CVPR 2017",
            family="feature",
        )
    ]
