"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

The batch similarity (Gram) matrix of the last stage's flattened post-ReLU
feature, each row L2-normalised, is matched between student and teacher:
‖G̃_t − G̃_s‖²_F / N² (paper eq. 4). CIFAR defaults (last stage, CE 1, SP weight
3000) are those of the CRD benchmark (RepDistiller ``--distill similarity -a 0
-b 3000``, code "verified by original author") and MDistiller's ``SP`` config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl

__all__ = ["SP", "similarity_matrix", "sp_loss"]


def similarity_matrix(feature: torch.Tensor) -> torch.Tensor:
    """Return the (N, N) Gram matrix of the flattened samples with each row L2-normalised."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Return ‖G̃_t − G̃_s‖²_F / N² for the row-normalised batch similarity matrices of the two features."""
    batch = student_feature.shape[0]
    diff = similarity_matrix(teacher_feature) - similarity_matrix(student_feature)
    return diff.pow(2).sum() / batch**2


class SP(Distiller):
    """Preserve the teacher's pairwise sample similarities of the last stage."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        sp_weight: float = 3000.0,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.sp_weight = sp_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and similarity-preserving terms."""
        assert teacher is not None
        with torch.autocast(student.logits.device.type, enabled=False):
            sp = sp_loss(at_least_float32(student.feats[-1]), at_least_float32(teacher.feats[-1]))
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "sp": self.sp_weight * sp,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="sp",
            builder=SP,
            description="Similarity preserving: match row-normalised batch Gram matrices of the last stage",
            citation="Tung & Mori, ICCV 2019 (arXiv:1907.09682)",
            family="feature",
        )
    ]
