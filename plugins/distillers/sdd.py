"""SDD: Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024.

Each model's last feature map (the map its classifier input is average-pooled
from) is average-pooled on grids of M×M cells for each scale M (e.g. 1, 2, 4),
and the model's own classifier turns every cell into "local logits": 1 + 4 + 16
regions for scales (1, 2, 4), the first being the ordinary global logits. A
logit loss (KD or DKD) is applied region by region. A region is *consistent*
when the teacher's local prediction is right exactly when its global one is,
and *complementary* otherwise; complementary regions get weight 2 (the paper's
β), consistent ones and the global region weight 1, and the weighted losses are
averaged over all regions and samples.

Follows the authors' code (``shicaiwei123/SDD-CVPR2024``: ``SPP`` in
``mdistiller/models/cifar/utils.py``, ``sdd_kd_loss`` in
``mdistiller/distillers/KD.py``, ``multi_dkd`` in ``SDD_DKD.py``). The student's
classifier is trained through its local logits; the teacher's is used without
gradient. Two registrations:

- ``sdd_kd`` (SD-KD): CE 0.1 + 0.9·SDD-KD, T = 4 (MDistiller's KD defaults, no
  ramp); the "SDD" row of the Streamlined KD table is most likely this variant
  (its numbers sit just below the authors' SD-KD runs, well below SD-DKD's);
- ``sdd_dkd`` (SD-DKD): CE 1 + SDD-DKD with DKD's α = 1, β = 8, T = 4, ramped by
  ``min(epoch / 20, 1)`` (``train_origin.py --warmup 20``).

The scales are per pair in the authors' scripts: (1, 2) for resnet32x4 →
resnet8x4 and vgg13 → vgg8, (1, 2, 4) otherwise. We pool each scale straight
from the map; the authors pool 2×2 and 1×1 from the 4×4 pooling, which is the
same whenever the map's side is a multiple of 4 (CIFAR: 8×8, 4×4) or 2×2.
Architectures whose last stage tap is not the map the classifier's input is
pooled from (kdbench's MobileNetV2 and ShuffleV2 end with a 1×1 conv head after
their last stage) are refused at construction rather than approximated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, KdbenchError, Progress, Signals, hookimpl
from kdbench.losses import dkd_parts, linear_ramp

__all__ = ["SDDDKD", "SDDKD", "multi_scale_logits", "region_weights", "sdd_dkd_loss", "sdd_kd_loss"]


def multi_scale_logits(
    feature_map: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor], scales: Sequence[int]
) -> torch.Tensor:
    """Return B×R×C logits of the R = Σ M² pooled regions, scale by scale, cells in row-major order.

    Each cell of an M×M grid is the average of its part of the B×D×H×W map
    (adaptive average pooling); ``classifier`` maps the D-vectors to logits.
    """
    batch, channels = feature_map.shape[:2]
    pooled = [F.adaptive_avg_pool2d(feature_map, m).flatten(2) for m in scales]
    regions = torch.cat(pooled, dim=2).transpose(1, 2)
    logits = classifier(regions.reshape(-1, channels))
    return logits.view(batch, regions.shape[1], -1)


def region_weights(
    teacher_regions: torch.Tensor, target: torch.Tensor, complementary_weight: float = 2.0
) -> torch.Tensor:
    """Return B×R weights: ``complementary_weight`` where the teacher's local and global correctness differ, else 1.

    Region 0 must be the global (scale-1) region; it always gets weight 1.
    """
    correct = teacher_regions.argmax(dim=2) == target.view(-1, 1)
    complementary = correct != correct[:, :1]
    ones = torch.ones_like(correct, dtype=teacher_regions.dtype)
    return torch.where(complementary, ones * complementary_weight, ones)


def _kd_per_row(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def sdd_kd_loss(
    student_regions: torch.Tensor,
    teacher_regions: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    complementary_weight: float = 2.0,
) -> torch.Tensor:
    """Return the mean over samples and regions of weight × T²·KL(teacher ‖ student) of the regions' logits."""
    student_regions, teacher_regions = _float(student_regions), _float(teacher_regions)
    kd = _kd_per_row(student_regions, teacher_regions, temperature)
    return (region_weights(teacher_regions, target, complementary_weight) * kd).mean()


def sdd_dkd_loss(
    student_regions: torch.Tensor,
    teacher_regions: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
    complementary_weight: float = 2.0,
) -> torch.Tensor:
    """Return the mean over samples and regions of weight × (α·TCKD + β·NCKD) of the regions' logits."""
    batch, regions, classes = student_regions.shape
    targets = target.view(-1, 1).expand(batch, regions).reshape(-1)
    tckd, nckd = dkd_parts(
        student_regions.reshape(-1, classes), teacher_regions.reshape(-1, classes), targets, temperature
    )
    dkd = (alpha * tckd + beta * nckd).view(batch, regions)
    return (region_weights(_float(teacher_regions), target, complementary_weight) * dkd).mean()


def _classifier(model: nn.Module) -> nn.Module:
    return model.get_submodule(model.feature_taps.classifier)


def _check_pooled_map(shapes: Signals | None, name: str | None) -> None:
    """Raise unless the last stage tap has as many channels as the classifier input (the map it is pooled from)."""
    if shapes is None or not shapes.feats or shapes.embedding is None:
        raise KdbenchError(f"SDD needs the last feature map and embedding shapes of {name!r}")
    if shapes.feats[-1].dim() != 4 or shapes.feats[-1].shape[1] != shapes.embedding.shape[1]:
        raise KdbenchError(
            f"SDD pools the map the classifier input is averaged from, but {name!r} ends with a layer after its "
            f"last stage tap ({tuple(shapes.feats[-1].shape[1:])} vs embedding {tuple(shapes.embedding.shape[1:])}); "
            "SDD cannot run faithfully on it"
        )


class _SDDBase(Distiller):
    """Shared parts: the two classifiers (held by reference, never registered) and the region logits."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"logits", "feats"})

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, context: DistillContext | None, scales: Sequence[int]
    ) -> None:
        super().__init__()
        if not scales or int(scales[0]) != 1:
            raise KdbenchError(f"SDD's scales must start with the global scale 1, got {list(scales)}")
        self.scales = [int(m) for m in scales]
        if context is not None:
            _check_pooled_map(context.student_shapes, context.student_name)
            _check_pooled_map(context.teacher_shapes, context.teacher_name)
        # A tuple keeps nn.Module from registering the models' classifiers as this distiller's submodules.
        self._classifiers = (_classifier(student), _classifier(teacher)) if teacher is not None else None

    def regions(self, student: Signals, teacher: Signals) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the student's and (without gradient) the teacher's B×R×C region logits."""
        assert self._classifiers is not None, "SDD needs a teacher"
        student_classifier, teacher_classifier = self._classifiers
        student_regions = multi_scale_logits(student.feats[-1], student_classifier, self.scales)
        with torch.no_grad():
            teacher_regions = multi_scale_logits(teacher.feats[-1], teacher_classifier, self.scales)
        return student_regions, teacher_regions


class SDDKD(_SDDBase):
    """Cross-entropy plus scale-decoupled KD."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext | None,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        scales: Sequence[int] = (1, 2, 4),
        complementary_weight: float = 2.0,
    ):
        super().__init__(student, teacher, context, scales)
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.complementary_weight = complementary_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE (global logits) and SDD-KD (all regions) terms."""
        assert teacher is not None
        s_regions, t_regions = self.regions(student, teacher)
        sdd = sdd_kd_loss(s_regions, t_regions, batch.targets, self.temperature, self.complementary_weight)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "sdd": self.kd_weight * sdd,
        }


class SDDDKD(_SDDBase):
    """Cross-entropy plus scale-decoupled DKD, ramped in over the first epochs."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext | None,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
        scales: Sequence[int] = (1, 2, 4),
        complementary_weight: float = 2.0,
    ):
        super().__init__(student, teacher, context, scales)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.complementary_weight = complementary_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE (global logits) and ramped SDD-DKD (all regions) terms."""
        assert teacher is not None
        s_regions, t_regions = self.regions(student, teacher)
        sdd = sdd_dkd_loss(
            s_regions, t_regions, batch.targets, self.alpha, self.beta, self.temperature, self.complementary_weight
        )
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "sdd": linear_ramp(progress, self.warmup_epochs) * sdd,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    citation = "Wei, Luo & Luo, CVPR 2024 (arXiv:2403.13512)"
    return [
        DistillerSpec(
            name="sdd_kd",
            builder=SDDKD,
            description="Scale-decoupled KD: KD on multi-scale pooled local logits, complementary regions ×2",
            citation=citation,
            family="logit",
        ),
        DistillerSpec(
            name="sdd_dkd",
            builder=SDDDKD,
            description="Scale-decoupled DKD: DKD on multi-scale pooled local logits, complementary regions ×2",
            citation=citation,
            family="logit",
        ),
    ]
