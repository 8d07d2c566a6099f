"""DKD: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

KD's loss splits into a target-class term (TCKD: binary KL between the
target-class and all-other-classes probabilities) and a non-target term (NCKD:
KL between the distributions over the non-target classes), KD = TCKD +
(1 − p_t)·NCKD; DKD weights them independently, α·TCKD + β·NCKD.

CIFAR defaults are MDistiller's (the authors' code, ``mdistiller/engine/cfg.py``
and ``configs/cifar100/dkd/*.yaml``): CE 1.0, α = 1, β = 8, T = 4, the DKD term
ramped by ``min(epoch / 20, 1)`` over its 1-based epochs. β is a per-pair
hyper-parameter there (2 for resnet56/resnet110 teachers, 6 for the wrn_40_2 →
wrn and vgg13 pairs); suites set it per pair.

Two options reproduce re-implementations that differ from the authors' (both
off by default, and then left out of run configs): ``logit_clamp`` clamps both
models' logits to ±``logit_clamp`` before the DKD term only (Streamlined KD's
``Distiller/DKD.py:9-10`` uses 10; its CE reads the raw logits), and
``warmup_first_epoch=0`` ramps by ``min(epoch / 20, 1)`` over 0-based epochs
(Streamlined KD's trainer passes them, ``DKD.py:107``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, hookimpl
from kdbench.losses import dkd_parts, linear_ramp

__all__ = ["DKD", "dkd_loss"]


def dkd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Return the batch mean of α·TCKD + β·NCKD (T²-scaled), DKD's distillation loss."""
    tckd, nckd = dkd_parts(logits_student, logits_teacher, target, temperature)
    return (alpha * tckd + beta * nckd).mean()


class DKD(Distiller):
    """Cross-entropy plus target / non-target decoupled KD, ramped in over the first epochs."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext | None,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
        logit_clamp: float | None = None,
        warmup_first_epoch: int | None = None,
    ):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.logit_clamp = logit_clamp
        self.first_epoch = 1 if warmup_first_epoch is None else warmup_first_epoch

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and (ramped) DKD terms."""
        assert teacher is not None
        s_logits, t_logits = student.logits, teacher.logits
        if self.logit_clamp is not None:
            s_logits = s_logits.clamp(-self.logit_clamp, self.logit_clamp)
            t_logits = t_logits.clamp(-self.logit_clamp, self.logit_clamp)
        dkd = dkd_loss(s_logits, t_logits, batch.targets, self.alpha, self.beta, self.temperature)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "dkd": linear_ramp(progress, self.warmup_epochs, self.first_epoch) * dkd,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="dkd",
            builder=DKD,
            description="Decoupled KD: α·target-class KD + β·non-target-class KD, ramped over 20 epochs",
            citation="Zhao, Cui, Song, Qiu & Liang, CVPR 2022 (arXiv:2203.08679)",
            family="logit",
        )
    ]
