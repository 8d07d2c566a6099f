"""VID: Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

For every stage after the stem (``feats[1:]``, pairs in order up to the shorter
model) a regressor conv1×1-ReLU-conv1×1-ReLU-conv1×1 (no biases; hidden and
output width = the teacher's channels) predicts the mean of a Gaussian over the
teacher's feature, with a per-channel variance σ²_c = softplus(α_c) + ε (eq. 4-5).
The loss is the Gaussian negative log-likelihood without its constant,
0.5 · mean((t − μ)² / σ² + log σ²), summed over stages; the larger map is
average-pooled to the smaller one first. α is initialised so that σ² starts at
5 and is **trained** with the regressors, as in the authors' code and
RepDistiller (MDistiller keeps α in a plain list, so its variances never train:
not copied). CIFAR defaults (CE 1, VID weight 1, σ²₀ = 5, ε = 1e-5) are
RepDistiller's ``--distill vid -a 0 -b 1`` and MDistiller's ``VID`` config.
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
from kdbench.losses import match_spatial_size

__all__ = ["VID", "VariationalRegressor", "vid_loss"]


def vid_loss(mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Return 0.5 · mean over N, C, H, W of ((target − mean)² / σ²_c + log σ²_c), σ²_c = softplus(α_c) + eps."""
    variance = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return 0.5 * ((target - mean).pow(2) / variance + variance.log()).mean()


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class VariationalRegressor(nn.Module):
    """One stage's Gaussian: the regressor giving its mean, and α giving its per-channel variance."""

    def __init__(self, student_channels: int, teacher_channels: int, init_variance: float, eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(student_channels, teacher_channels),
            nn.ReLU(),
            _conv1x1(teacher_channels, teacher_channels),
            nn.ReLU(),
            _conv1x1(teacher_channels, teacher_channels),
        )
        # softplus⁻¹(σ²₀ − ε), so that softplus(α) + ε starts at σ²₀.
        initial = math.log(math.expm1(init_variance - eps))
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), initial))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Return the predicted mean of the teacher's feature."""
        return self.regressor(feature)


def _stage_channels(feats: Sequence[torch.Tensor]) -> list[int]:
    return [f.shape[1] for f in feats[1:]]


class VID(Distiller):
    """Maximise a variational lower bound on the mutual information of student and teacher stage features."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        ce_weight: float = 1.0,
        vid_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("VID needs the student's and teacher's feature shapes in its DistillContext")
        self.eps = eps
        self.ce_weight = ce_weight
        self.vid_weight = vid_weight
        pairs = zip(_stage_channels(context.student_shapes.feats), _stage_channels(context.teacher_shapes.feats))
        self.stages = nn.ModuleList(VariationalRegressor(s, t, init_variance, eps) for s, t in pairs)

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and VID (summed per-stage Gaussian NLL) terms."""
        assert teacher is not None
        vid = student.logits.new_zeros((), dtype=torch.float32)
        for stage, f_s, f_t in zip(self.stages, student.feats[1:], teacher.feats[1:]):
            f_s, f_t = match_spatial_size(f_s, f_t)
            mean = stage(f_s)
            with torch.autocast(mean.device.type, enabled=False):
                vid = vid + vid_loss(at_least_float32(mean), at_least_float32(f_t), stage.log_scale, self.eps)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "vid": self.vid_weight * vid,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="vid",
            builder=VID,
            description="Variational information distillation: Gaussian NLL of teacher stages given regressed student",
            citation="Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019 (arXiv:1904.05835)",
            family="feature",
        )
    ]
