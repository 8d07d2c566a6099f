"""AB: Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019 (arXiv:1811.03233).

The student learns the teacher's activation boundaries (which neurons fire) with a
hinge-like squared loss on the pre-ReLU responses of stages 1..K, through a
connector, in an initialisation stage of 30 epochs; the main training is then
cross-entropy only. CIFAR defaults and every detail below follow the CRD
benchmark (Tian et al., ICLR 2020, RepDistiller ``distiller_zoo/AB.py``,
``helper/pretrain.py``, ``train_student.py``), which the CIFAR-100 tables report:

- features: pre-ReLU outputs of stages 1..K (the stem excluded);
- connector per stage: identity when student and teacher shapes agree, else a
  convolution that maps the student's shape to the teacher's (1×1 when the sizes
  agree, 3×3 stride 2 to halve, 4×4 transposed stride 2 to double) plus BatchNorm;
- loss: margin 1, per-stage weights 2^(k−K) (the last stage 1, the one before ½, …),
  summed over positions and averaged over the batch, times 3/1000 (the authors'
  ``loss / 1000 * 3``);
- the init stage trains the connectors and the student's feature layers (all but
  the classifier) with the recipe's base LR and the student in train mode, so its
  BatchNorm statistics move — RepDistiller's ``helper/pretrain.py`` (lines 12-14) sets
  ``model_s.eval()`` and then ``init_modules.train()``, and ``init_modules`` holds the
  connector and ``model_s.get_feat_modules()`` (``train_student.py`` lines 232-236);
  the teacher's features are detached; the main stage is CE only (β multiplies zero
  in the reference, so it has no default here).

Known difference: RepDistiller's WRN ``get_feat_modules`` leaves out the final
``bn1`` (whose output is the last stage's preact), so during its init stage that BN
keeps its initial affine parameters and, in eval mode, its initial statistics;
kdbench trains every parameter but the classifier's (:func:`kdbench.feature_parameters`)
with the whole student in train mode. The original authors'
code uses a 1×1 conv + BN connector even where shapes agree; RepDistiller (and
therefore the tables) uses the identity there, as here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import (
    Batch,
    DistillContext,
    Distiller,
    DistillerSpec,
    KdbenchError,
    Phase,
    Progress,
    Signals,
    at_least_float32,
    feature_parameters,
    hookimpl,
)

__all__ = ["AB", "ab_loss", "ab_stage_weights", "build_connector"]


def ab_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Return the activation-boundary loss of one stage: a sum over positions, averaged over the batch.

    Where the teacher's neuron is off (``target <= 0``) the student is pushed below
    ``-margin`` by ``(source + margin)²`` while ``source > -margin``; where it is on
    (``target > 0``) the student is pushed above ``margin`` by ``(source - margin)²``
    while ``source <= margin`` (Heo et al. 2019, eq. 6, the "alternative L2" loss).
    """
    source, target = at_least_float32(source), at_least_float32(target)
    off = (target <= 0) & (source > -margin)
    on = (target > 0) & (source <= margin)
    loss = (source + margin).pow(2) * off + (source - margin).pow(2) * on
    return loss.sum() / source.shape[0]


def ab_stage_weights(count: int) -> list[float]:
    """Return the per-stage weights 2^(k−K+1) for k = 0..K−1: 1 for the last stage, halving towards the input."""
    return [2.0 ** (k - count + 1) for k in range(count)]


def build_connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """Return the module mapping a student feature (N, C, H, W) to the teacher's shape (RepDistiller's rule).

    Identity when channels and height agree; otherwise a convolution chosen by the
    heights (3×3 stride 2 to halve, 4×4 transposed stride 2 to double, a valid
    (1+ΔH)×(1+ΔW) kernel to shrink or keep) followed by BatchNorm, no ReLU.
    """
    _, s_c, s_h, s_w = student_shape
    _, t_c, t_h, t_w = teacher_shape
    if s_c == t_c and s_h == t_h:
        return nn.Identity()
    if s_h == 2 * t_h:
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif 2 * s_h == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise KdbenchError(f"no connector from a {s_h}×{s_w} student feature to a {t_h}×{t_w} teacher feature")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c))


def _stage_shapes(shapes: Signals | None, side: str) -> list[torch.Size]:
    if shapes is None:
        raise KdbenchError(f"AB needs the {side}'s signal shapes in the DistillContext")
    return [t.shape for t in shapes.preact[1:]]


class AB(Distiller):
    """Initialise the student's stages on the teacher's activation boundaries, then train on the labels."""

    student_signals = frozenset({"preact"})
    teacher_signals = frozenset({"preact"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        margin: float = 1.0,
        ab_weight: float = 3e-3,
        init_epochs: int = 30,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        s_shapes = _stage_shapes(context.student_shapes, "student")
        t_shapes = _stage_shapes(context.teacher_shapes, "teacher")
        if len(s_shapes) != len(t_shapes):
            raise KdbenchError(
                f"AB pairs stages 1..K one to one: {context.student_name} has {len(s_shapes)}, "
                f"{context.teacher_name} has {len(t_shapes)}"
            )
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in zip(s_shapes, t_shapes))
        self.stage_weights = ab_stage_weights(len(s_shapes))
        self.margin = margin
        self.ab_weight = ab_weight
        self.init_epochs = init_epochs
        self.ce_weight = ce_weight

    def phases(self) -> tuple[Phase, ...]:
        """Return the connector initialisation stage (recipe base LR, the student in train mode as RepDistiller)."""
        return (Phase("init", epochs=self.init_epochs, lr=None, student_mode="train"),) if self.init_epochs else ()

    def phase_parameters(self, phase: Phase, student: nn.Module) -> Iterable[nn.Parameter]:
        """Return the connectors' and the student's feature layers' parameters."""
        return [*self.connectors.parameters(), *feature_parameters(student)]

    def boundary_loss(self, student: Signals, teacher: Signals) -> torch.Tensor:
        """Return the stage-weighted AB loss between connected student preacts and teacher preacts."""
        pairs = zip(self.connectors, student.preact[1:], teacher.preact[1:], self.stage_weights)
        losses = [w * ab_loss(connector(s), t.detach(), self.margin) for connector, s, t, w in pairs]
        return torch.stack(losses).sum()

    def phase_terms(
        self, phase: Phase, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"ab": ab_weight · Σ_k 2^(k−K+1) · AB_k}``."""
        assert teacher is not None
        return {"ab": self.ab_weight * self.boundary_loss(student, teacher)}

    def signals(self, phase: Phase | None) -> tuple[frozenset[str], frozenset[str]]:
        """Return the init stage's signals; the main training is CE only and needs no teacher pass."""
        if phase is None:
            return frozenset({"logits"}), frozenset()
        return self.student_signals, self.teacher_signals

    def main_parameters(self) -> Iterable[nn.Parameter]:
        """Return nothing: the connectors are not used after the init stage."""
        return []

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the main stage's only term, ``{"ce": ce_weight · CE}``."""
        return {"ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets)}


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="ab",
            builder=AB,
            description="Activation boundaries: 30 epochs matching the teacher's pre-ReLU on/off pattern, then CE",
            citation="Heo, Lee, Yun & Choi, AAAI 2019 (arXiv:1811.03233)",
            family="feature",
        )
    ]
