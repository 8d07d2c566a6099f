"""OFD: Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019
(arXiv:1904.01866).

The student's pre-ReLU stage features, through a 1×1 conv + BN connector, regress
the teacher's pre-ReLU features with a *partial* L2 loss: where the teacher is
negative, the student is only pushed down to a margin — the expected value of the
teacher's negative responses, read from the teacher's BatchNorm before the ReLU —
and not penalised once below it. Details follow the authors' CIFAR-100 code
(``clovaai/overhaul-distillation``, ``CIFAR-100/distiller.py``) and MDistiller's
``OFD`` (DKD authors), whose CIFAR-100 config gives the defaults:

- features: pre-ReLU outputs of stages 1..K (the stem excluded); where student and
  teacher have different stage counts, the last min(K_s, K_t) of each are paired
  (MDistiller); the teacher feature is average-pooled to the student's size;
- connector per stage: conv1×1 (no bias, He-normal init) + BN, student → teacher
  channels (86,912 parameters for resnet32x4→resnet8x4);
- margin per teacher channel, from the BN's γ, β (its output taken as N(β, γ²)):
  E[x | x < 0] = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|) when Φ(−β/|γ|) > 0.001, else −3|γ|;
- loss: Σ over positions of the partial L2, averaged over the batch, stage k of K
  weighted 1/2^(K−k), times 1e-3 (the authors' ``/ 1000``; MDistiller ``FEAT_WEIGHT``),
  plus CE with weight 1.

Deliberate difference: both the authors' training loop and MDistiller put the
teacher in train mode (its BN then normalises with batch statistics and its running
statistics drift); kdbench keeps the teacher frozen in eval mode. MDistiller also
pairs margins with stages before aligning the stage lists; kdbench aligns them.
The margins need the BN feeding each stage's last ReLU: models without one
(ShuffleV2, whose stage output concatenates an untouched half) cannot be OFD
teachers, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

__all__ = ["OFD", "bn_margin", "ofd_loss", "ofd_stage_weights"]


def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return per channel the expected negative response E[x | x < 0] of x ~ N(bias, weight²).

    That is ``bias − |weight|·φ(bias/|weight|) / Φ(−bias/|weight|)``, or ``−3·|weight|``
    where Φ(−bias/|weight|) ≤ 0.001 (almost never negative); computed in float64
    (Heo et al. 2019, section 3.3, the authors' ``get_margin_from_BN``).
    """
    std = weight.detach().double().abs().clamp_min(1e-12)
    mean = bias.detach().double()
    ratio = mean / std
    negative_mass = torch.special.ndtr(-ratio)
    density = torch.exp(-0.5 * ratio.pow(2)) / math.sqrt(2 * math.pi)
    expected = mean - std * density / negative_mass.clamp_min(1e-300)
    return torch.where(negative_mass > 1e-3, expected, -3 * std)


def ofd_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Return the partial L2 distance of one stage: a sum over positions, averaged over the batch.

    ``margin`` has one value per channel (shape (C,)). The target is raised to the
    margin (``max(target, margin)``), and a position counts unless the student is
    already at or below a non-positive target: (s − max(t, m))² where s > max(t, m)
    or t > 0 (Heo et al. 2019, eq. 4).
    """
    source, target = at_least_float32(source), at_least_float32(target)
    raised = torch.maximum(target, margin.to(target).view(1, -1, 1, 1))
    counted = (source > raised) | (target > 0)
    return ((source - raised).pow(2) * counted).sum() / source.shape[0]


def ofd_stage_weights(count: int) -> list[float]:
    """Return the per-stage weights 1/2^(K−1−k) for k = 0..K−1 (the last stage 1, halving towards the input)."""
    return [1.0 / 2 ** (count - 1 - k) for k in range(count)]


def _connector(s_channels: int, t_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


def _teacher_bns(teacher: nn.Module | None, context: DistillContext) -> list[nn.BatchNorm2d]:
    if teacher is None:
        raise KdbenchError("OFD needs a teacher")
    taps = getattr(teacher, "feature_taps", None)
    names: Sequence[str] = taps.bn_before_relu if taps is not None else ()
    if not names:
        raise KdbenchError(
            f"OFD cannot use {context.teacher_name} as a teacher: its feature taps name no BatchNorm before each "
            "stage's last ReLU (`bn_before_relu`), which OFD's margins are computed from"
        )
    if len(names) != len(taps.stages):
        raise KdbenchError(
            f"{context.teacher_name}: bn_before_relu names {len(names)} BNs for {len(taps.stages)} stages"
        )
    modules = [teacher.get_submodule(name) for name in names]
    if not all(isinstance(m, nn.BatchNorm2d) and m.affine for m in modules):
        raise KdbenchError(f"{context.teacher_name}: bn_before_relu must name affine BatchNorm2d modules")
    return modules


class OFD(Distiller):
    """Regress the teacher's pre-ReLU features with a margin-aware partial L2 through connectors."""

    student_signals = frozenset({"preact"})
    teacher_signals = frozenset({"preact"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ofd_weight: float = 1e-3,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("OFD needs the student's and teacher's signal shapes in the DistillContext")
        bns = _teacher_bns(teacher, context)[1:]
        s_channels = [t.shape[1] for t in context.student_shapes.preact[1:]]
        t_channels = [t.shape[1] for t in context.teacher_shapes.preact[1:]]
        self.stages = min(len(s_channels), len(t_channels))
        s_channels, t_channels, bns = s_channels[-self.stages :], t_channels[-self.stages :], bns[-self.stages :]
        self.connectors = nn.ModuleList(_connector(s, t) for s, t in zip(s_channels, t_channels))
        for k, (bn, channels) in enumerate(zip(bns, t_channels)):
            if bn.num_features != channels:
                raise KdbenchError(
                    f"{context.teacher_name}: a BN before a stage's ReLU has {bn.num_features} channels, "
                    f"the stage {channels}"
                )
            self.register_buffer(f"margin{k}", bn_margin(bn.weight, bn.bias).float())
        self.stage_weights = ofd_stage_weights(self.stages)
        self.ofd_weight = ofd_weight
        self.ce_weight = ce_weight

    def margins(self) -> list[torch.Tensor]:
        """Return the per-channel margins of the paired teacher stages."""
        return [getattr(self, f"margin{k}") for k in range(self.stages)]

    def distill_loss(self, student: Signals, teacher: Signals) -> torch.Tensor:
        """Return Σ_k w_k · partial L2(connector_k(student preact_k), pooled teacher preact_k)."""
        s_feats, t_feats = student.preact[1:][-self.stages :], teacher.preact[1:][-self.stages :]
        losses = []
        for connector, s, t, margin, w in zip(self.connectors, s_feats, t_feats, self.margins(), self.stage_weights):
            source = connector(s)
            target = F.adaptive_avg_pool2d(t.detach(), source.shape[-2:])
            losses.append(w * ofd_loss(source, target, margin))
        return torch.stack(losses).sum()

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"ce": ce_weight · CE, "ofd": ofd_weight · Σ_k w_k · partial L2_k}``."""
        assert teacher is not None
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "ofd": self.ofd_weight * self.distill_loss(student, teacher),
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="ofd",
            builder=OFD,
            description="Overhaul of feature distillation: pre-ReLU partial L2 to BN-derived margins via connectors",
            citation="Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019 (arXiv:1904.01866)",
            family="feature",
        )
    ]
