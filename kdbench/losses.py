"""Losses and loss helpers that several distiller plugins share.

- :func:`kd_loss`: Hinton et al.'s soft-target loss (KD, and the KD term of DOT,
  MLKD, LSKD, CRD+KD);
- :func:`dkd_parts`: DKD's per-sample target-class and non-target-class KL terms
  (DKD, and SDD's region-wise DKD);
- :func:`linear_ramp`: MDistiller's linear warm-up of a distillation term's weight;
- :func:`match_spatial_size`: two feature maps brought to the smaller spatial size
  by adaptive average pooling, as the CRD benchmark's AT, NST, VID and FT losses do.

Each is computed exactly as the plugins that first defined it did, so moving
a method onto these functions changes none of its numbers. Half-precision inputs
of the logit losses are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.distiller import Progress, at_least_float32

__all__ = ["dkd_parts", "kd_loss", "linear_ramp", "match_spatial_size"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return T² · mean over the batch of KL(softmax(t/T) ‖ softmax(s/T)).

    The T² factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al. 2015, section 2). The same operations as RepDistiller's
    ``DistillKL`` and MDistiller's ``kd_loss``. Half-precision inputs are
    computed in float32.
    """
    log_p_student = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return kl.mean() * temperature**2


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
    NCKD is KL(p̂_t ‖ p̂_s) with p̂ the softmax over the non-target logits only
    (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022). Both are
    computed from log-sum-exps, so neither saturates for confident models.
    Half-precision inputs are computed in float32.
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


def linear_ramp(progress: Progress, warmup_epochs: int, first_epoch: int = 1) -> float:
    """Return ``min((epoch + first_epoch) / warmup_epochs, 1)`` for the 0-based ``progress.epoch``.

    The weight of a distillation term warmed up linearly (DKD, ReviewKD, SDD);
    1 when ``warmup_epochs`` is not positive. ``first_epoch`` is the number the
    reference code gives the first epoch: 1 in MDistiller (weight 1/20 in the
    first epoch of a 20-epoch ramp), 0 in code that passes 0-based epochs, such
    as Streamlined KD's (weight 0 in the first epoch).
    """
    if warmup_epochs <= 0:
        return 1.0
    return min((progress.epoch + first_epoch) / warmup_epochs, 1.0)


def match_spatial_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return both maps at the smaller of their spatial sizes (the larger one adaptive-average-pooled).

    Which map is larger is decided by height alone; maps of equal height are
    returned unchanged.
    """
    s_size, t_size = student.shape[-2:], teacher.shape[-2:]
    if s_size[0] > t_size[0]:
        student = F.adaptive_avg_pool2d(student, tuple(t_size))
    elif s_size[0] < t_size[0]:
        teacher = F.adaptive_avg_pool2d(teacher, tuple(s_size))
    return student, teacher
