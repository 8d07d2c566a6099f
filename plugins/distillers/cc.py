"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

Both pooled embeddings (the classifier inputs) go through a trained linear
embedding to ``feat_dim`` = 128 (RepDistiller's ``LinearEmbed``: a plain
``nn.Linear``, no normalisation; ``Embed`` with L2 normalisation is CRD's), and
the loss is the correlation-congruence term exactly as the CRD benchmark
computes it (RepDistiller ``distiller_zoo/CC.py``, "code emailed to me by the
original author"): with δ_i = |z_s,i − z_t,i|, the mean over consecutive sample
pairs of Σ_d δ_i,d · δ_i+1,d. This is the benchmark's formulation, not the
paper's kernel-based correlation matrix (eq. 6-8, Gaussian RBF by Taylor
expansion). CIFAR defaults (CE 1, CC weight 0.02, 128-d embeds) are
RepDistiller's ``--distill correlation -a 0 -b 0.02 --feat_dim 128``; MDistiller
has no CC.
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

__all__ = ["CC", "cc_loss"]


def cc_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """Return mean over i < N−1 of Σ_d |z_s − z_t|_i,d · |z_s − z_t|_i+1,d (RepDistiller's correlation term)."""
    delta = (student_embedding - teacher_embedding).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class CC(Distiller):
    """Embed both pooled features linearly (trained) and match their sample-to-sample correlation."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        feat_dim: int = 128,
        ce_weight: float = 1.0,
        cc_weight: float = 0.02,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("CC needs the student's and teacher's embedding shapes in its DistillContext")
        student_dim = context.student_shapes.embedding.shape[1]
        teacher_dim = context.teacher_shapes.embedding.shape[1]
        self.ce_weight = ce_weight
        self.cc_weight = cc_weight
        self.embed_student = nn.Linear(student_dim, feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, feat_dim)

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and correlation-congruence terms."""
        assert teacher is not None and student.embedding is not None and teacher.embedding is not None
        z_s = self.embed_student(student.embedding.flatten(1))
        z_t = self.embed_teacher(teacher.embedding.flatten(1))
        with torch.autocast(z_s.device.type, enabled=False):
            cc = cc_loss(at_least_float32(z_s), at_least_float32(z_t))
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "cc": self.cc_weight * cc,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="cc",
            builder=CC,
            description="Correlation congruence between trained linear embeddings of the pooled features",
            citation="Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, ICCV 2019 (arXiv:1904.01802)",
            family="feature",
        )
    ]
