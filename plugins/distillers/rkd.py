"""RKD: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

On the pooled embeddings (the classifier inputs): a distance term — pairwise
Euclidean distances, each divided by the mean of the positive ones, compared by
smooth-L1 (Huber, δ = 1) — and an angle term — for every triplet (i, j, k) the
cosine of the angle at j between e_i − e_j and e_k − e_j, compared by smooth-L1.
CIFAR defaults (CE 1, distance 25, angle 50) are the CRD benchmark's (RepDistiller
``RKDLoss(w_d=25, w_a=50)``, ``--distill rkd -a 0 -b 1``) and MDistiller's
``RKD`` config (with its feature weight 1, folded into the two weights here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl

__all__ = ["RKD", "pairwise_distances", "rkd_angle_loss", "rkd_distance_loss", "triplet_angles"]


def pairwise_distances(embedding: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return the (N, N) Euclidean distances of the rows, squared distances clamped at ``eps``, zero diagonal."""
    squared_norms = embedding.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * embedding @ embedding.t()
    off_diagonal = 1 - torch.eye(len(embedding), dtype=embedding.dtype, device=embedding.device)
    return squared.clamp(min=eps).sqrt() * off_diagonal


def _mean_normalised(distances: torch.Tensor) -> torch.Tensor:
    # Mean over the positive distances, without a host sync (distances are ≥ 0).
    positive = (distances > 0).sum().clamp(min=1)
    return distances / (distances.sum() / positive)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return smooth-L1 (mean over N²) between the two embeddings' mean-normalised pairwise distances."""
    return F.smooth_l1_loss(
        _mean_normalised(pairwise_distances(student.flatten(1), eps)),
        _mean_normalised(pairwise_distances(teacher.flatten(1), eps)),
    )


def triplet_angles(embedding: torch.Tensor) -> torch.Tensor:
    """Return the (N, N, N) cosines: entry [j, i, k] = cos∠(e_i − e_j, e_k − e_j), zero where a difference is zero."""
    differences = F.normalize(embedding[None, :, :] - embedding[:, None, :], p=2, dim=2)
    return differences @ differences.transpose(1, 2)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Return smooth-L1 (mean over N³) between the two embeddings' triplet angle cosines."""
    return F.smooth_l1_loss(triplet_angles(student.flatten(1)), triplet_angles(teacher.flatten(1)))


class RKD(Distiller):
    """Transfer the distance and angle structure of the teacher's embeddings within a batch."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.eps = eps

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, RKD distance and RKD angle terms."""
        assert teacher is not None and student.embedding is not None and teacher.embedding is not None
        with torch.autocast(student.logits.device.type, enabled=False):
            e_s, e_t = at_least_float32(student.embedding), at_least_float32(teacher.embedding)
            distance = rkd_distance_loss(e_s, e_t, self.eps)
            angle = rkd_angle_loss(e_s, e_t)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "rkd_distance": self.distance_weight * distance,
            "rkd_angle": self.angle_weight * angle,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="rkd",
            builder=RKD,
            description="Relational KD: match normalised pairwise distances and triplet angles of the embeddings",
            citation="Park, Kim, Lu & Cho, CVPR 2019 (arXiv:1904.05068)",
            family="feature",
        )
    ]
