"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

The student's hint (stage ``hint_layer`` = 2 of the post-ReLU stage features)
is mapped onto the teacher's by a trained regressor (conv that matches the
spatial size → BN → ReLU, RepDistiller's ``ConvReg``) and pulled to it by an
MSE. The paper trains the hint first and then the classifier (two stages); the
CIFAR benchmarks train both terms together from the start, and so does this
plugin. CIFAR defaults (hint layer 2, CE 1, hint weight 100) are those of the
CRD benchmark (RepDistiller ``train_student.py --distill hint -a 0 -b 100``)
and of MDistiller's ``FITNET`` config, which agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import (
    Batch,
    DistillContext,
    Distiller,
    DistillerSpec,
    KdbenchError,
    Progress,
    Signals,
    at_least_float32,
    hookimpl,
)

__all__ = ["FitNet", "HintRegressor", "hint_loss"]


def hint_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """Return the mean (over every element) squared difference between the regressed student hint and the teacher's."""
    return (student_hint - teacher_hint).pow(2).mean()


def _size_matching_conv(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Conv2d | nn.ConvTranspose2d:
    """Return the conv that maps a (C_s, H_s, W_s) feature to (C_t, H_t, W_t), as RepDistiller's ConvReg picks it."""
    _, s_channels, s_height, s_width = student_shape
    _, t_channels, t_height, t_width = teacher_shape
    if s_height == 2 * t_height:
        return nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
    if 2 * s_height == t_height:
        return nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2, padding=1)
    if s_height >= t_height:
        return nn.Conv2d(s_channels, t_channels, kernel_size=(1 + s_height - t_height, 1 + s_width - t_width))
    raise KdbenchError(
        f"FitNet cannot regress a {s_height}×{s_width} student hint onto a {t_height}×{t_width} teacher hint; "
        "pick another hint_layer for this pair"
    )


class HintRegressor(nn.Module):
    """Conv (matching the teacher's spatial size) → BN → ReLU, from student to teacher channels."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        self.conv = _size_matching_conv(student_shape, teacher_shape)
        self.bn = nn.BatchNorm2d(teacher_shape[1])
        self.relu = nn.ReLU()

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        """Return the student hint mapped to the teacher's hint shape."""
        return self.relu(self.bn(self.conv(hint)))


class FitNet(Distiller):
    """Regress the teacher's hint-layer feature from the student's through a trained regressor."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        hint_layer: int = 2,
        ce_weight: float = 1.0,
        hint_weight: float = 100.0,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("FitNet needs the student's and teacher's feature shapes in its DistillContext")
        self.hint_layer = hint_layer
        self.ce_weight = ce_weight
        self.hint_weight = hint_weight
        self.regressor = HintRegressor(
            context.student_shapes.feats[hint_layer].shape, context.teacher_shapes.feats[hint_layer].shape
        )

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and hint (MSE to the teacher's hint) terms."""
        assert teacher is not None
        regressed = self.regressor(student.feats[self.hint_layer])
        with torch.autocast(regressed.device.type, enabled=False):
            hint = hint_loss(at_least_float32(regressed), at_least_float32(teacher.feats[self.hint_layer]))
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "hint": self.hint_weight * hint,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="fitnet",
            builder=FitNet,
            description="Hint learning: MSE between a regressed student stage feature and the teacher's",
            citation="Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015 (arXiv:1412.6550)",
            family="feature",
        )
    ]
