"""ASKD: "Attribute Structure Knowledge Distillation" (Yunxiao Wang; code ``Crishawy/ASKD``, 2020).

No paper was found; the authors' code at commit ``7101921`` (equal, for the code, to its first commit
``898b37c``) is the only definition, and this module computes what it computes. Paths below are files of
that repository. The trainer is RepDistiller's with yacs configs; the loss (``helper/loops.py:148-177``) is

    L = γ·CE + α·KD_T + β·(w_rs·L_RS + w_cs·L_CS),   γ = 1, α = 0, β = 1, w_rs = 5, w_cs = 14.

Both terms compare *distance structures* with RKD's recipe, but between scalars:

- ``pd(e)`` (``distiller_zoo/ASKD.py:27-38`` and ``:75-86``) gives, for the M scalars of the last axis,
  the M×M matrix ``sqrt(clamp(e_i² + e_j² − 2·e_i·e_j, 1e-12))`` with a zero diagonal: |e_i − e_j|, written
  with the a² + b² − 2ab formula (kept here, so the float32 rounding is the authors').
- Each distance tensor is divided by **one** scalar, the mean of its positive entries over the whole batch
  tensor (``ASKD.py:18-22``, ``:67-71``): the teacher's under ``no_grad``, the student's not detached.
- The two are compared by smooth-L1 (β = 1, mean over every entry, diagonal zeros included;
  ``ASKD.py:23``, ``:72``).
- **L_CS** (class similarity, ``ASKD.py:12-25``): per sample, the distances between its C raw logits
  (no temperature, no softmax): an N×C×C tensor.
- **L_RS** (regional similarity, ``ASKD.py:47-73``): the student's last spatial stage map (RepDistiller's
  ``feat[-2]``, ``preact=False``; ``loops.py:153-155``, group ``res_last``) goes through a trained 1×1 conv
  **with bias**, no BN or activation, to the teacher's channels (``train_student.py:145-157``). Each map is
  average-pooled with kernel H // r into r×r region means per channel; the distances are between the region
  means of the same channel (an N×C_t×r²×r² tensor), not between region vectors. ``r`` is first clamped to
  ``min(r, H_s, H_t)`` (``ASKD.py:57-58``): MobileNetV2's 2×2 map turns its r = 4 into 2.

Defaults, from ``configs/kds/ours/resnet32x4_resnet8x4.yaml`` (the same in all 11 shipped configs but r):
CE weight 1 (``gamma``, ``:28``), region weight 5 (``w_rs``, ``:37``), class weight 14 (``w_cs``, ``:41``),
r = 2 (``:38``), with ``beta: 1`` (``:30``) folded into the two weights. r is 2 for the same-family pairs and
4 for the cross-family ones (e.g. ``configs/kds/ours/res32x4_shufflenetv1.yaml:38``); suites set it per pair.

Where this differs, and why:

- KD is left out: ``alpha: 0`` (``resnet32x4_resnet8x4.yaml:29``) in every config multiplies it away, so
  its ``kd_T: 4`` (``:31``) is inert.
- The positive means are sums over counts (no boolean indexing, hence no host sync): the same value, summed
  in another order (differences of float32 rounding only).
- The r clamp is applied when the method is built, from the maps' shapes (the authors overwrite ``self.r``
  at the first batch: the same value). Pairs the authors' code would crash on are refused with a reason:
  non-square maps (their ``assert``), 1×1 maps (one region: a mean over no positive distance, NaN there),
  and maps pooled into different region counts (H not divisible by r).
- The distance maths runs in float32 under bf16 autocast; the conv runs as the models do.
"""

from __future__ import annotations

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

__all__ = [
    "ASKD",
    "class_similarity_loss",
    "normalised_scalar_distances",
    "region_means",
    "regional_similarity_loss",
    "scalar_distances",
]


def scalar_distances(values: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return the (..., M, M) distances |v_i − v_j| between the M scalars of the last axis, zero diagonal.

    Computed as ``sqrt(clamp(v_i² + v_j² − 2·v_i·v_j, eps))`` (ASKD's ``pdist``): off the diagonal no
    distance is below √eps = 1e-6, and no gradient flows where the clamp holds.
    """
    column, row = values.unsqueeze(-1), values.unsqueeze(-2)
    squared = (column.pow(2) + row.pow(2) - 2 * (column * row)).clamp(min=eps)
    size = values.shape[-1]
    off_diagonal = 1 - torch.eye(size, dtype=values.dtype, device=values.device)
    return squared.sqrt() * off_diagonal


def normalised_scalar_distances(values: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return :func:`scalar_distances` divided by the mean of its positive entries over the whole tensor."""
    distances = scalar_distances(values, eps)
    positive = (distances > 0).sum().clamp(min=1)
    return distances / (distances.sum() / positive)


def class_similarity_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Return ASKD's L_CS: smooth-L1 between the normalised per-sample distances of the raw logits (N×C×C).

    The teacher's side is detached; the student's normalising mean carries gradient. Float32 at least.
    """
    student = normalised_scalar_distances(at_least_float32(student_logits))
    teacher = normalised_scalar_distances(at_least_float32(teacher_logits.detach()))
    return F.smooth_l1_loss(student, teacher)


def region_means(feature: torch.Tensor, regions: int) -> torch.Tensor:
    """Return the N×C×R region means of a square N×C×H×H map average-pooled with kernel H // regions."""
    return F.avg_pool2d(feature, feature.shape[-1] // regions).flatten(2)


def regional_similarity_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, r: int) -> torch.Tensor:
    """Return ASKD's L_RS for a student map already mapped to the teacher's channels.

    ``r`` is clamped to ``min(r, H_s, H_t)``; each map is pooled into region means per channel
    (:func:`region_means`); smooth-L1 compares the normalised distances between the regions of each
    (sample, channel), N×C×R×R entries. The teacher's side is detached. Float32 at least.
    """
    regions = min(r, student_map.shape[-1], teacher_map.shape[-1])
    student = normalised_scalar_distances(region_means(at_least_float32(student_map), regions))
    teacher = normalised_scalar_distances(region_means(at_least_float32(teacher_map.detach()), regions))
    return F.smooth_l1_loss(student, teacher)


def _region_count(shape: torch.Size, r: int, side: str) -> int:
    """Return the regions per side a square map of ``shape`` pools into, refusing non-square maps."""
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise KdbenchError(f"ASKD needs a square N×C×H×H last stage map; the {side}'s is {tuple(shape)}")
    return shape[-1] // (shape[-1] // r)


class ASKD(Distiller):
    """Match the distance structure of the logits (per sample) and of the last map's region means (per channel)."""

    student_signals = frozenset({"logits", "feats"})
    teacher_signals = frozenset({"logits", "feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        rs_weight: float = 5.0,
        cs_weight: float = 14.0,
        r: int = 2,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("ASKD needs both models' feature shapes")
        s_shape, t_shape = context.student_shapes.feats[-1].shape, context.teacher_shapes.feats[-1].shape
        if r < 1:
            raise KdbenchError(f"ASKD's r must be a positive number of regions per side, not {r}")
        self.r = min(r, s_shape[-1], t_shape[-1])
        s_regions, t_regions = _region_count(s_shape, self.r, "student"), _region_count(t_shape, self.r, "teacher")
        if s_regions != t_regions:
            raise KdbenchError(
                f"ASKD with r={self.r} pools the student's {s_shape[-1]}×{s_shape[-1]} map into {s_regions}² regions "
                f"but the teacher's {t_shape[-1]}×{t_shape[-1]} into {t_regions}²; pick an r dividing both sizes"
            )
        if s_regions < 2:
            raise KdbenchError(f"ASKD needs at least 2×2 regions; the last stage maps give {s_regions}×{s_regions}")
        self.ce_weight = ce_weight
        self.rs_weight = rs_weight
        self.cs_weight = cs_weight
        self.conv = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1)  # bias, as train_student.py:155

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, regional-similarity and class-similarity terms."""
        assert teacher is not None
        mapped = self.conv(student.feats[-1])
        with torch.autocast(student.logits.device.type, enabled=False):
            region = regional_similarity_loss(mapped, teacher.feats[-1], self.r)
            similarity = class_similarity_loss(student.logits, teacher.logits)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "askd_region": self.rs_weight * region,
            "askd_class": self.cs_weight * similarity,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="askd",
            builder=ASKD,
            description=(
                "Attribute structure KD: smooth-L1 between mean-normalised distances of each sample's logits and "
                "of each channel's region means (last map, 1×1 conv)"
            ),
            citation="Wang, Attribute Structure Knowledge Distillation, code only: github.com/Crishawy/ASKD @ 7101921",
            family="feature",
        )
    ]
