"""ReviewKD: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

CIFAR defaults: CE weight 1, review loss weight 5 ramped linearly over 20
epochs, max mid channel 512 — MDistiller's ``REVIEWKD`` config
(``configs/cifar100/reviewkd.yaml`` sets the weight 5 for resnet32x4→resnet8x4)
and the authors' ``CIFAR-100/script/reviewKD.sh``, whose weight differs per
pair (see the suites).

The student's stage features after the stem plus its pooled embedding (as a
1×1 map) run deepest first through a chain of attention-based fusion (ABF)
modules: each maps its level to ``mid`` channels (conv1×1 + BN), fuses it with
the deeper level's fused map (nearest-resized to this level) through a
two-channel sigmoid attention (conv1×1 on the concatenation), resizes the result
to the teacher's spatial size (passing it on to the next level) and maps it to
the teacher's channels (conv3×3 + BN). Each output is compared with
the teacher's pre-activation stage feature (and its pooled embedding) by the
hierarchical context loss (HCL). The level lists (channels, spatial sizes) are
read from the models' signal shapes; for the architectures of the CIFAR
benchmark they reproduce the per-architecture tables of the authors' code.

Student features are post-ReLU (MDistiller's ``STU_PREACT: False``).
Deviations from MDistiller, on purpose: the mid channels are
``min(max_mid_channel, student embedding channels)``, the setting's meaning
(MDistiller reads ``MAX_MID_CHANNEL`` but always uses 512, as does the authors'
CIFAR code; their ImageNet code passes it explicitly: 512 for ResNet18, 256 for
MobileNet); with the default 512 all agree. The ramp is MDistiller's ``min(epoch / 20, 1)`` with
its 1-based epoch, i.e. ``min((progress.epoch + 1) / 20, 1)``; the authors'
``train.py`` and Streamlined KD's trainer pass the 0-based epoch (weight 0 in
the first epoch): ``warmup_first_epoch=0`` (off by default, and then left out of
run configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, KdbenchError, Progress, Signals, hookimpl
from kdbench.losses import linear_ramp

__all__ = ["ABF", "ReviewKD", "hcl_loss"]


def hcl_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Return the hierarchical context loss summed over levels.

    Per level: ``(MSE(fs, ft) + Σ_l w_l · MSE(pool_l(fs), pool_l(ft))) / (1 + Σ_l w_l)``
    where ``pool_l`` is adaptive average pooling to l×l for l in (4, 2, 1) with
    l smaller than the map's height, and the weights halve from ½ in that order.
    """
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student_feats, teacher_feats, strict=True):
        height = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight, weights = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion: one level of the review chain."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output at the teacher's size and channels, the fused map at that size for the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def _levels(feats: list[torch.Tensor], embedding: torch.Tensor | None, who: str) -> list[tuple[int, tuple[int, int]]]:
    """Return (channels, spatial size) of each level: the stages after the stem, then the pooled embedding."""
    if embedding is None or len(feats) < 2:
        raise KdbenchError(f"ReviewKD needs the {who}'s stage features and pooled embedding")
    return [(f.shape[1], (f.shape[2], f.shape[3])) for f in feats[1:]] + [(embedding.shape[1], (1, 1))]


class ReviewKD(Distiller):
    """Fuse student stages deepest first (ABF chain) and match the teacher's pre-activation stages with HCL."""

    student_signals = frozenset({"logits", "feats", "embedding"})
    teacher_signals = frozenset({"preact", "embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        review_weight: float = 5.0,
        warmup_epochs: int = 20,
        max_mid_channel: int = 512,
        warmup_first_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("ReviewKD needs both models' signal shapes")
        s_levels = _levels(context.student_shapes.feats, context.student_shapes.embedding, "student")
        t_levels = _levels(context.teacher_shapes.preact, context.teacher_shapes.embedding, "teacher")
        if len(s_levels) != len(t_levels):
            raise KdbenchError(
                f"ReviewKD pairs levels one to one: student has {len(s_levels)}, teacher {len(t_levels)}"
            )
        self.ce_weight = ce_weight
        self.review_weight = review_weight
        self.warmup_epochs = warmup_epochs
        self.first_epoch = 1 if warmup_first_epoch is None else warmup_first_epoch
        self.out_sizes = [size for _, size in t_levels]
        mid = min(max_mid_channel, s_levels[-1][0])
        last = len(s_levels) - 1
        # Kept shallowest first (as the levels); the chain runs them in reverse.
        self.abfs = nn.ModuleList(
            ABF(s_channels, mid, t_channels, fuse=index < last)
            for index, ((s_channels, _), (t_channels, _)) in enumerate(zip(s_levels, t_levels))
        )

    def review(self, feats: list[torch.Tensor], embedding: torch.Tensor) -> list[torch.Tensor]:
        """Return the chain's outputs, shallowest first, from the student's stages after the stem and embedding."""
        levels = [*feats[1:], embedding.flatten(1)[:, :, None, None]]
        outputs: list[torch.Tensor] = []
        residual = None
        for index in reversed(range(len(levels))):
            out, residual = self.abfs[index](levels[index], residual, self.out_sizes[index])
            outputs.insert(0, out)
        return outputs

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and (ramped) review terms."""
        assert teacher is not None and student.embedding is not None and teacher.embedding is not None
        outputs = self.review(student.feats, student.embedding)
        targets = [t.detach() for t in (*teacher.preact[1:], teacher.embedding.flatten(1)[:, :, None, None])]
        weight = self.review_weight * linear_ramp(progress, self.warmup_epochs, self.first_epoch)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "review": weight * hcl_loss(outputs, targets),
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="reviewkd",
            builder=ReviewKD,
            description="Knowledge review: ABF fusion of student stages matched to teacher stages by HCL",
            citation="Chen, Liu, Zhao & Jia, Distilling Knowledge via Knowledge Review, CVPR 2021 (arXiv:2104.09044)",
            family="feature",
        )
    ]
