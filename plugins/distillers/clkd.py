"""CLKD: Zhang, Liu, Hopcroft & He, "Class-aware Information for Logit-based Knowledge Distillation" (2022).

**As re-implemented by Streamlined KD.** No official code exists, and only the abstract of the paper could
be read. This module computes what ``HyunJunSik/StreamLined``'s ``Distiller/CLKD.py`` computes (unchanged
from the May 2025 upload ``e4ab795`` to today), the code that produced the CLKD row of that repository's
CIFAR-100 table. With logits z_s, z_t (N×C), the teacher under ``no_grad`` and ``norm_rows`` dividing each
row by its L2 norm (eps 1e-12):

    L = λ·CE + μ·(L_ins + β·L_cla) + ν·L_cc

- ``L_ins = MSE(norm_rows(z_s), norm_rows(z_t))``: each sample's class vector (``CLKD.py:15-17``).
- ``L_cla = MSE(norm_rows(z_sᵀ), norm_rows(z_tᵀ))``: each class's vector over the batch (``:20-25``).
- ``L_cc = ‖B_s − B_t‖_F / C²`` with ``B = (z − mean_n z)ᵀ(z − mean_n z) / (C − 1)``, the C×C
  class-correlation matrix of the batch-centred logits, divided by C − 1 although the sum runs over the N
  samples (``:27-40``; kept as written).
- No temperature, no extra modules.

Defaults, fixed for every pair, from ``CLKD.__init__`` (``Distiller/CLKD.py:51-54``): λ = 0.1 (``lamb``),
μ = 0.5 (``mu``), ν = 0.4 (``vu``), β = 2.0 (``beta``); ``:62-63`` combine them. Another re-implementation
(MDistiller-based) agrees on this structure but builds L_cc differently, so the paper's own L_cc cannot be
settled from code.

Where this differs, and why: the three KD terms are returned as separate weighted terms (the authors log
their sum, ``loss_kd``), so each is logged; their sum is the same. The maths runs in float32 also under bf16
autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl

__all__ = ["CLKD", "class_correlation", "clkd_losses"]


def class_correlation(logits: torch.Tensor) -> torch.Tensor:
    """Return the C×C matrix (z − mean_n z)ᵀ(z − mean_n z) / (C − 1) of N×C logits (divisor C − 1, as written)."""
    centred = logits - logits.mean(dim=0, keepdim=True)
    return centred.t() @ centred / (logits.shape[1] - 1)


def clkd_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return CLKD's unweighted (L_ins, L_cla, L_cc): instance-level, class-level and class-correlation losses.

    Always float32 at least, autocast or not; the teacher's side is detached.
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        student = at_least_float32(student_logits)
        teacher = at_least_float32(teacher_logits.detach())
        instance = F.mse_loss(F.normalize(student, p=2, dim=1), F.normalize(teacher, p=2, dim=1))
        per_class = F.mse_loss(F.normalize(student.t(), p=2, dim=1), F.normalize(teacher.t(), p=2, dim=1))
        classes = student.shape[1]
        correlation = torch.linalg.matrix_norm(class_correlation(student) - class_correlation(teacher)) / classes**2
        return instance, per_class, correlation


class CLKD(Distiller):
    """Cross-entropy plus instance-level, class-level and class-correlation matching of the logits."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 0.1,
        kd_weight: float = 0.5,
        class_coefficient: float = 2.0,
        cc_weight: float = 0.4,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.class_coefficient = class_coefficient
        self.cc_weight = cc_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, instance-level, class-level and class-correlation terms."""
        assert teacher is not None
        instance, per_class, correlation = clkd_losses(student.logits, teacher.logits)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "clkd_instance": self.kd_weight * instance,
            "clkd_class": self.kd_weight * self.class_coefficient * per_class,
            "clkd_correlation": self.cc_weight * correlation,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="clkd",
            builder=CLKD,
            description=(
                "Class-aware logit KD (Streamlined KD's re-implementation): normalised-logit MSE per sample and "
                "per class, plus the Frobenius distance of class-correlation matrices"
            ),
            citation=(
                "Zhang, Liu, Hopcroft & He, Class-aware Information for Logit-based Knowledge Distillation, "
                "arXiv:2211.14773; no official code: as re-implemented in github.com/HyunJunSik/StreamLined "
                "(Distiller/CLKD.py @ e4ab795)"
            ),
            family="logit",
        )
    ]
