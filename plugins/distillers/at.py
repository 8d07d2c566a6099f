"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

Each stage's spatial attention map is the channel mean of F^p, flattened and
L2-normalised; the loss is, per stage, the mean squared difference of the two
maps, summed over stages 1..K (``feats[1:]``, every post-ReLU stage after the
stem, pairs taken in order up to the shorter model). The larger map is first
average-pooled to the smaller size. This is the formulation of the CRD benchmark
(RepDistiller ``distiller_zoo/AT.py``) and MDistiller's ``AT``, and the loss
of the authors' code (szagoruyko/attention-transfer ``at_loss``). CIFAR
defaults (p = 2, CE 1, AT weight 1000) are RepDistiller's
``--distill attention -a 0 -b 1000`` and MDistiller's ``AT`` config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl
from kdbench.losses import match_spatial_size

__all__ = ["AT", "at_loss", "attention_map"]


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """Return the (N, H·W) L2-normalised spatial attention: the channel mean of ``feature``^p, flattened."""
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], p: float) -> torch.Tensor:
    """Return Σ over stage pairs of mean((a_s − a_t)²), the attention maps compared at the smaller spatial size."""
    total = student_feats[0].new_zeros(())
    for f_s, f_t in zip(student_feats, teacher_feats):
        f_s, f_t = match_spatial_size(f_s, f_t)
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    return total


class AT(Distiller):
    """Match the normalised spatial attention maps of every stage after the stem."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        p: float = 2.0,
        ce_weight: float = 1.0,
        at_weight: float = 1000.0,
    ) -> None:
        super().__init__()
        self.p = p
        self.ce_weight = ce_weight
        self.at_weight = at_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and attention-transfer terms."""
        assert teacher is not None
        with torch.autocast(student.logits.device.type, enabled=False):
            at = at_loss(
                [at_least_float32(f) for f in student.feats[1:]],
                [at_least_float32(f) for f in teacher.feats[1:]],
                self.p,
            )
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "at": self.at_weight * at,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="at",
            builder=AT,
            description="Attention transfer: match L2-normalised channel-mean F^p maps of every stage",
            citation="Zagoruyko & Komodakis, ICLR 2017 (arXiv:1612.03928)",
            family="feature",
        )
    ]
