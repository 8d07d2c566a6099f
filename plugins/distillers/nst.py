"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 2017.

For every stage after the stem (``feats[1:]``, pairs in order up to the shorter
model, the larger map average-pooled to the smaller) each channel's flattened
spatial map is L2-normalised, and the channels of the student and of the
teacher are matched as two samples by the squared maximum mean discrepancy with
the polynomial kernel k(x, y) = (xᵀy + c)^d, d = 2, c = 0 (paper eq. 6-7):
mean k(t, t') + mean k(s, s') − 2 mean k(s, t), each mean over the batch and the
channel pairs; summed over stages. This is the CRD benchmark's computation
(RepDistiller ``NSTLoss``, with the full MMD including the constant teacher
term) and MDistiller's ``NST``. CIFAR defaults (CE 1, NST weight 50) are
RepDistiller's ``--distill nst -a 0 -b 50`` and MDistiller's ``NST`` config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl
from kdbench.losses import match_spatial_size

__all__ = ["NST", "nst_loss", "polynomial_mmd2"]


def _mean_poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the mean over the batch and all channel pairs of (a_iᵀ b_j)²."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def polynomial_mmd2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Return the squared MMD (kernel (xᵀy)²) between the channel-normalised (N, C, H·W) student and teacher maps."""
    s = F.normalize(student.flatten(2), dim=2)
    t = F.normalize(teacher.flatten(2), dim=2)
    return _mean_poly_kernel(t, t) + _mean_poly_kernel(s, s) - 2 * _mean_poly_kernel(s, t)


def nst_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return Σ over stage pairs of the polynomial-kernel squared MMD between student and teacher channels."""
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, teacher_feats):
        total = total + polynomial_mmd2(*match_spatial_size(f_s, f_t))
    return total


class NST(Distiller):
    """Match the distributions of neuron selectivity patterns (channel maps) by squared MMD."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        nst_weight: float = 50.0,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.nst_weight = nst_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and neuron-selectivity-transfer terms."""
        assert teacher is not None
        with torch.autocast(student.logits.device.type, enabled=False):
            nst = nst_loss(
                [at_least_float32(f) for f in student.feats[1:]],
                [at_least_float32(f) for f in teacher.feats[1:]],
            )
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "nst": self.nst_weight * nst,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="nst",
            builder=NST,
            description="Neuron selectivity transfer: polynomial-kernel squared MMD between channel maps per stage",
            citation="Huang & Wang, arXiv:1707.01219 (2017)",
            family="feature",
        )
    ]
