"""DIST: Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

Instead of KL's exact match of probabilities, DIST asks the student to keep the
teacher's *relations*, measured by the Pearson correlation of the
temperature-softened class probabilities (softmax(z/τ)):

- inter-class relation: per sample, the correlation across classes between the
  student's and the teacher's probability vectors (the ranking of classes);
- intra-class relation: per class, the correlation across the batch (which
  samples the class is confident about).

loss = CE + β·τ²·(1 − mean inter-class correlation) + γ·τ²·(1 − mean intra-class correlation).

Defaults are the paper's CIFAR-100 setting, β = γ = 2, τ = 4, with CE weight 1;
on ImageNet the authors use β = γ = 1, τ = 1. The loss follows the authors'
``dist_kd.py`` (github.com/hunto/image_classification_sota, linked from
github.com/hunto/DIST_KD), including its ε = 1e-8 in the correlation's
denominator, which makes a constant vector's correlation 0 instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kdbench import Batch, DistillContext, Distiller, Progress, Signals, at_least_float32

__all__ = ["DIST", "dist_relations", "pearson_rows"]


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Return the Pearson correlation of each row of ``a`` with the same row of ``b`` (shape: rows)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the unweighted (inter-class, intra-class) DIST losses, each τ²·(1 − mean correlation).

    Half-precision inputs are computed in float32.
    """
    p_student = F.softmax(at_least_float32(student_logits) / temperature, dim=1)
    p_teacher = F.softmax(at_least_float32(teacher_logits) / temperature, dim=1)
    inter = 1 - pearson_rows(p_student, p_teacher).mean()  # rows: samples, across classes
    intra = 1 - pearson_rows(p_student.t(), p_teacher.t()).mean()  # rows: classes, across the batch
    return inter * temperature**2, intra * temperature**2


class DIST(Distiller):
    """Match the teacher's inter- and intra-class relations (Pearson correlations), not its probabilities."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext,
        beta: float = 2.0,
        gamma: float = 2.0,
        tau: float = 4.0,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau
        self.ce_weight = ce_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, inter-class and intra-class terms."""
        assert teacher is not None
        inter, intra = dist_relations(student.logits, teacher.logits, self.tau)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "inter": self.beta * inter,
            "intra": self.gamma * intra,
        }
