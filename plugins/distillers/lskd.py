"""LSKD: Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024.

Teacher and student logits are each z-scored per sample (mean 0, standard
deviation 1) before the temperature softmax of KD, so the student matches the
teacher's logit *relations* rather than their range: the effective temperature
of each sample is its logit standard deviation times a shared base temperature.

Registered as ``lskd``: KD with logit standardisation. CIFAR defaults are the
authors' (``sunshangquan/logit-standardization-KD``: ``tools/train.py`` with
``--logit-stand --base-temp 2 --kd-weight 9``, the CE weight 1 of that
repository's ``CFG.KD.LOSS.CE_WEIGHT``); the standardisation matches their
``normalize``: unbiased standard deviation, ε = 1e-7 added to it. The released
logs use base temperature 3 for some pairs (vgg13 → vgg8 among them); suites
set it per pair.
"""

from __future__ import annotations

import torch
from kdbench_plugins.distillers.kd import KD

from kdbench import DistillContext, DistillerSpec, at_least_float32, hookimpl
from kdbench.losses import kd_loss

__all__ = ["LSKD", "lskd_loss", "standardize_logits"]


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Return ``(z − mean(z)) / (ε + std(z))`` per row, with the unbiased (n − 1) standard deviation."""
    logits = at_least_float32(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def lskd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return KD's T²·KL at base temperature T between the z-scored teacher and student logits."""
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits), temperature)


class LSKD(KD):
    """KD on z-scored logits: KD's terms with the soft-target loss replaced."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext | None,
        temperature: float = 2.0,
        ce_weight: float = 1.0,
        kd_weight: float = 9.0,
    ):
        super().__init__(student, teacher, context, temperature, ce_weight, kd_weight)

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Return the standardised-logit KD term."""
        return lskd_loss(student_logits, teacher_logits, self.temperature)


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="lskd",
            builder=LSKD,
            description="KD after per-sample z-score standardisation of teacher and student logits",
            citation="Sun, Ren, Li, Wang & Cao, CVPR 2024 (arXiv:2403.01427)",
            family="logit",
        )
    ]
