"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2015.

CIFAR defaults (T=4, CE 0.1, KD 0.9) are those of the CRD benchmark (Tian et al.,
ICLR 2020, RepDistiller) and MDistiller's KD config, which the leaderboards use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import Batch, Distiller, DistillerSpec, Progress, Signals, hookimpl
from kdbench.losses import kd_loss

__all__ = ["KD"]


class KD(Distiller):
    """Match the teacher's temperature-softened class distribution."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: object,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ):
        super().__init__()
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and KD terms."""
        assert teacher is not None
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "kd": self.kd_weight * self.soft_loss(student.logits, teacher.logits),
        }

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Return the unweighted soft-target term (variants of KD override this alone)."""
        return kd_loss(student_logits, teacher_logits, self.temperature)


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="kd",
            builder=KD,
            description="Soft-target distillation: T²·KL between temperature-softened teacher and student",
            citation="Hinton, Vinyals & Dean, NIPS Deep Learning Workshop 2015 (arXiv:1503.02531)",
            family="logit",
        )
    ]
