"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.

On the pooled embeddings (the classifier inputs): cosine-similarity kernels
K_ij = (1 + cos(e_i, e_j)) / 2, each row normalised into a conditional
distribution p_j|i (eq. 9-10), and the loss Σ_ij p^t_j|i log(p^t_j|i / p^s_j|i)
averaged over the N² entries (eq. 11; the authors' code, used by RepDistiller and
MDistiller, takes that mean and adds ε = 1e-7 inside the log and to the norms).
CIFAR defaults (CE 1, PKT weight 30000) are RepDistiller's ``--distill pkt -a 0
-b 30000`` and MDistiller's ``PKT`` config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl

__all__ = ["PKT", "conditional_probabilities", "pkt_loss"]


def conditional_probabilities(embedding: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Return the (N, N) row-normalised kernel (1 + cos(e_i, e_j)) / 2, the norms taken as ‖e‖ + eps."""
    unit = embedding / (embedding.norm(dim=1, keepdim=True) + eps)
    unit = unit.masked_fill(unit.isnan(), 0.0)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Return mean over the N² entries of p_t · log((p_t + eps) / (p_s + eps)) for the two embeddings' kernels."""
    p_s = conditional_probabilities(student.flatten(1), eps)
    p_t = conditional_probabilities(teacher.flatten(1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKT(Distiller):
    """Match the teacher's distribution of cosine similarities between the samples of a batch."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        pkt_weight: float = 30000.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.pkt_weight = pkt_weight
        self.eps = eps

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and probabilistic-knowledge-transfer terms."""
        assert teacher is not None and student.embedding is not None and teacher.embedding is not None
        with torch.autocast(student.logits.device.type, enabled=False):
            pkt = pkt_loss(at_least_float32(student.embedding), at_least_float32(teacher.embedding), self.eps)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "pkt": self.pkt_weight * pkt,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="pkt",
            builder=PKT,
            description="Probabilistic KT: KL between cosine-similarity distributions of the embeddings",
            citation="Passalis & Tefas, ECCV 2018 (arXiv:1803.10837)",
            family="feature",
        )
    ]
