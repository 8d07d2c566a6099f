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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl

__all__ = ["DKD", "dkd_loss", "dkd_parts", "linear_ramp"]


def _non_target(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the N×(C−1) entries of ``values`` that are not the target class, in class order."""
    # A gather rather than boolean indexing: no device-to-host synchronisation.
    columns = torch.arange(values.shape[1] - 1, device=values.device).unsqueeze(0)
    return values.gather(1, columns + (columns >= target.view(-1, 1)).long())


def dkd_parts(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-sample (TCKD, NCKD), each T²-scaled, as two tensors of shape (N,).

    TCKD is KL(b_t ‖ b_s) with b = (p_target, 1 − p_target) at temperature T;
    NCKD is KL(p̂_t ‖ p̂_s) with p̂ the softmax over the non-target logits only.
    Both are computed from log-sum-exps, so neither saturates for confident
    models. Half-precision inputs are computed in float32.
    """
    s = at_least_float32(logits_student) / temperature
    t = at_least_float32(logits_teacher) / temperature
    index = target.view(-1, 1)
    s_all, t_all = torch.logsumexp(s, 1), torch.logsumexp(t, 1)
    s_rest, t_rest = _non_target(s, target), _non_target(t, target)
    s_other, t_other = torch.logsumexp(s_rest, 1), torch.logsumexp(t_rest, 1)
    log_b_s = torch.stack([s.gather(1, index).squeeze(1) - s_all, s_other - s_all], 1)
    log_b_t = torch.stack([t.gather(1, index).squeeze(1) - t_all, t_other - t_all], 1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    log_q_s, log_q_t = F.log_softmax(s_rest, 1), F.log_softmax(t_rest, 1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return tckd * temperature**2, nckd * temperature**2


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


def linear_ramp(progress: Progress, warmup_epochs: int) -> float:
    """Return ``min((epoch + 1) / warmup_epochs, 1)``: MDistiller's ramp over its 1-based epochs."""
    if warmup_epochs <= 0:
        return 1.0
    return min((progress.epoch + 1) / warmup_epochs, 1.0)


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
    ):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and (ramped) DKD terms."""
        assert teacher is not None
        dkd = dkd_loss(student.logits, teacher.logits, batch.targets, self.alpha, self.beta, self.temperature)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "dkd": linear_ramp(progress, self.warmup_epochs) * dkd,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="dkd",
            builder=DKD,
            description="Decoupled KD: α·target-class KD + β·non-target-class KD, ramped over 20 epochs",
            citation="Zhao, Cui, Song, Qiu & Liang, CVPR 2022 (arXiv:2203.08679)",
            defaults={"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0, "warmup_epochs": 20},
            family="logit",
        )
    ]
