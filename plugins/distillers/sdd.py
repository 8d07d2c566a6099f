"""SDD: Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024.

Each model's pooled map (the map its classifier input is the spatial mean of,
the ``pooled_map`` signal) is average-pooled on grids of M×M cells for each
scale M (e.g. 1, 2, 4), and the model's own classifier turns every cell into
"local logits": 1 + 4 + 16 regions for scales (1, 2, 4), the first being the
ordinary global logits. A logit loss (KD or DKD) is applied region by region. A
region is *consistent* when the teacher's prediction on it is right exactly when
its prediction on region 0 (the global one, for scales starting at 1) is, and
*complementary* otherwise; complementary regions get weight 2 (the paper's β),
consistent ones and region 0 weight 1, and the weighted losses are averaged over
all regions and samples.

Follows the authors' code (``shicaiwei123/SDD-CVPR2024``: ``SPP`` in
``mdistiller/models/cifar/utils.py``, ``sdd_kd_loss`` in
``mdistiller/distillers/KD.py``, ``multi_dkd`` in ``SDD_DKD.py``). The student's
classifier is trained through its local logits; the teacher's is used without
gradient. Two registrations:

- ``sdd_kd`` (SD-KD): CE 0.1 + 0.9·SDD-KD, T = 4 (MDistiller's KD defaults, no
  ramp);
- ``sdd_dkd`` (SD-DKD): CE 1 + SDD-DKD with DKD's α = 1, β = 8, T = 4, ramped by
  ``min(epoch / 20, 1)`` (``train_origin.py --warmup 20``). The "SDD" row of the
  Streamlined KD table is this variant as that repository re-implemented it
  (``CIFAR-100/Utils/SDD_distillation_train.py`` builds only ``SDD_DKD``), with
  its own settings: see the ``cifar100-streamlined`` suite (which also ramps
  over 0-based epochs, ``warmup_first_epoch=0``; off by default and then left
  out of run configs).

The scales are per pair in the authors' scripts: (1, 2) for resnet32x4 →
resnet8x4 and vgg13 → vgg8, (1, 2, 4) otherwise. We pool each scale straight
from the map; the authors pool 2×2 and 1×1 from the 4×4 pooling, which is the
same whenever the map's side is a multiple of 4 (CIFAR: 8×8, 4×4) or 2×2.
The authors' models pool the map their classifier averages (after a WRN's final
BN + ReLU, after MobileNetV2's and ShuffleNetV2's 1×1 head), which is what the
``pooled_map`` tap gives for every architecture.

The scales may come in any order; region 0 is the one every other region's
correctness is compared with. The authors list (1, 2, 4), so region 0 is the
global region. Streamlined KD's copy of their pyramid concatenates the 4×4
cells first while keeping the authors' loss, so its reference region is the
top-left cell of the 4×4 grid: ``scales=(4, 2, 1)`` reproduces that.
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
    """Return B×R weights: ``complementary_weight`` where the teacher's correctness differs from region 0's, else 1.

    Region 0 is the reference region (the global one when the scales start at 1); it always gets weight 1.
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
    """Raise unless the model's pooled map has as many channels as its classifier input."""
    if shapes is None or shapes.pooled_map is None or shapes.embedding is None:
        raise KdbenchError(f"SDD needs the pooled map and embedding shapes of {name!r}")
    if shapes.pooled_map.dim() != 4 or shapes.pooled_map.shape[1] != shapes.embedding.shape[1]:
        raise KdbenchError(
            f"SDD pools the map the classifier input is averaged from, but {name!r}'s pooled map "
            f"{tuple(shapes.pooled_map.shape[1:])} does not match its embedding {tuple(shapes.embedding.shape[1:])}; "
            "its feature_taps.pooled_map must name the global pooling module"
        )


class _SDDBase(Distiller):
    """Shared parts: the two classifiers (held by reference, never registered) and the region logits."""

    student_signals = frozenset({"logits", "pooled_map"})
    teacher_signals = frozenset({"logits", "pooled_map"})

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, context: DistillContext | None, scales: Sequence[int]
    ) -> None:
        super().__init__()
        if not scales or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in scales):
            raise KdbenchError(f"SDD's scales must be positive grid sizes such as (1, 2, 4), got {list(scales)}")
        self.scales = list(scales)
        if context is not None:
            _check_pooled_map(context.student_shapes, context.student_name)
            _check_pooled_map(context.teacher_shapes, context.teacher_name)
        # A tuple keeps nn.Module from registering the models' classifiers as this distiller's submodules.
        self._classifiers = (_classifier(student), _classifier(teacher)) if teacher is not None else None

    def regions(self, student: Signals, teacher: Signals) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the student's and (without gradient) the teacher's B×R×C region logits."""
        assert self._classifiers is not None, "SDD needs a teacher"
        student_classifier, teacher_classifier = self._classifiers
        assert student.pooled_map is not None and teacher.pooled_map is not None
        student_regions = multi_scale_logits(student.pooled_map, student_classifier, self.scales)
        with torch.no_grad():
            teacher_regions = multi_scale_logits(teacher.pooled_map, teacher_classifier, self.scales)
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
        warmup_first_epoch: int | None = None,
    ):
        super().__init__(student, teacher, context, scales)
        self.first_epoch = 1 if warmup_first_epoch is None else warmup_first_epoch
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
            "sdd": linear_ramp(progress, self.warmup_epochs, self.first_epoch) * sdd,
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
