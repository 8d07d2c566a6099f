"""FT: Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018
(arXiv:1802.04977).

A paraphraser (a convolutional auto-encoder with compression rate k) is first
trained to reconstruct the teacher's last-stage feature; its code is the teacher's
"factor". The student then learns, through a translator, to produce the same factor,
with an L1 loss on L2-normalised factors, beside cross-entropy. CIFAR defaults and
details follow the CRD benchmark (Tian et al., ICLR 2020, RepDistiller
``distiller_zoo/FT.py``, ``models/util.py``, ``helper/pretrain.py``,
``train_student.py``), which the CIFAR-100 tables report:

- feature: the last stage feature on both sides (``feats[-1]``, the reference's ``feat[-2]``);
- paraphraser: three 3×3 convs (C→C→kC→kC, bias, no BN, LeakyReLU 0.1) and three
  3×3 transposed convs back (kC→kC→C→C, LeakyReLU 0.1 after each), k = 0.5;
  translator: three 3×3 convs (C_s→C_s→kC→kC) with BN and LeakyReLU 0.1;
- init stage: 30 epochs training the paraphraser alone on MSE(reconstruction,
  teacher feature), student and teacher frozen, at LR 0.01 (RepDistiller uses 0.01
  for ResNet and WRN students and the recipe's base LR otherwise, i.e. 0.05 for VGG
  students: that is the ``init_lr`` override of the vgg8 pairs);
- main stage: CE (weight 1) + 200 · factor loss; the translator trains with the
  student, the paraphraser is frozen;
- factor loss: where the maps differ in size the larger is average-pooled to the
  smaller; p = 1, i.e. the mean absolute difference of the L2-normalised factors.

Factor form. The paper normalises the whole flattened factor (kC·H·W values).
RepDistiller — the code behind the published CIFAR-100 FT numbers, for which the
weight 200 was set — first reduces each factor over channels to mean_c(F²) (an
attention-like H·W map) and normalises that. ``factor_form`` selects between them:
``"channel_mean_square"`` (default, RepDistiller) or ``"flatten"`` (the paper).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

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
    hookimpl,
)
from kdbench.losses import match_spatial_size

__all__ = ["FACTOR_FORMS", "FT", "Paraphraser", "Translator", "factor_transfer_loss", "factor_vector"]

#: How a factor (N, C, H, W) becomes the vector that is L2-normalised and compared.
FACTOR_FORMS = ("channel_mean_square", "flatten")


def factor_vector(factor: torch.Tensor, form: str = "channel_mean_square") -> torch.Tensor:
    """Return the L2-normalised per-sample vector of a factor map (N, C, H, W), shape (N, D).

    ``"flatten"``: all C·H·W values (the paper); ``"channel_mean_square"``: the H·W
    values of mean over channels of F² (RepDistiller).
    """
    factor = at_least_float32(factor)
    if form == "channel_mean_square":
        factor = factor.pow(2).mean(dim=1)
    elif form != "flatten":
        raise KdbenchError(f"unknown factor form {form!r}; known: {FACTOR_FORMS}")
    flat = factor.reshape(factor.shape[0], -1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def factor_transfer_loss(
    student_factor: torch.Tensor, teacher_factor: torch.Tensor, p: float = 1.0, form: str = "channel_mean_square"
) -> torch.Tensor:
    """Return mean over samples and entries of |v_s − v_t|^p for the normalised factor vectors v.

    The larger of the two maps is first adaptive-average-pooled to the smaller's size.
    """
    student_factor, teacher_factor = match_spatial_size(student_factor, teacher_factor)
    difference = factor_vector(student_factor, form) - factor_vector(teacher_factor, form)
    return difference.abs().pow(p).mean()


def _conv_stack(channels: tuple[int, int, int, int], batch_norm: bool, transposed: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for c_in, c_out in pairwise(channels):
        layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Convolutional auto-encoder of the teacher's feature: ``encoder`` gives the factor, ``decoder`` rebuilds."""

    def __init__(self, channels: int, rate: float = 0.5) -> None:
        super().__init__()
        factor_channels = int(channels * rate)
        self.encoder = _conv_stack((channels, channels, factor_channels, factor_channels), False, False)
        self.decoder = _conv_stack((factor_channels, factor_channels, channels, channels), False, True)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (factor, reconstruction) of a feature map."""
        factor = self.encoder(feature)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Convolutional encoder mapping the student's feature to a factor with the teacher factor's channels."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float = 0.5) -> None:
        super().__init__()
        factor_channels = int(teacher_channels * rate)
        self.encoder = _conv_stack((student_channels, student_channels, factor_channels, factor_channels), True, False)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Return the student's factor."""
        return self.encoder(feature)


def _last_channels(shapes: Signals | None, side: str) -> int:
    if shapes is None:
        raise KdbenchError(f"FT needs the {side}'s signal shapes in the DistillContext")
    return shapes.feats[-1].shape[1]


class FT(Distiller):
    """Pre-train a paraphraser on the teacher, then match its factor through a student-side translator."""

    student_signals = frozenset({"feats"})
    teacher_signals = frozenset({"feats"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ft_weight: float = 200.0,
        paraphrase_rate: float = 0.5,
        p: float = 1.0,
        factor_form: str = "channel_mean_square",
        init_epochs: int = 30,
        init_lr: float | None = 0.01,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        if factor_form not in FACTOR_FORMS:
            raise KdbenchError(f"unknown factor_form {factor_form!r}; known: {FACTOR_FORMS}")
        s_channels = _last_channels(context.student_shapes, "student")
        t_channels = _last_channels(context.teacher_shapes, "teacher")
        self.paraphraser = Paraphraser(t_channels, paraphrase_rate)
        self.translator = Translator(s_channels, t_channels, paraphrase_rate)
        self.ft_weight = ft_weight
        self.p = p
        self.factor_form = factor_form
        self.init_epochs = init_epochs
        self.init_lr = init_lr
        self.ce_weight = ce_weight

    def phases(self) -> tuple[Phase, ...]:
        """Return the paraphraser's pre-training stage."""
        if not self.init_epochs:
            return ()
        return (Phase("init", epochs=self.init_epochs, lr=self.init_lr, student_mode="eval"),)

    def phase_parameters(self, phase: Phase, student: nn.Module) -> Iterable[nn.Parameter]:
        """Return the paraphraser's parameters (the student is not trained in this stage)."""
        return self.paraphraser.parameters()

    def phase_terms(
        self, phase: Phase, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"reconstruction": MSE(paraphraser(teacher feature), teacher feature)}``."""
        assert teacher is not None
        feature = at_least_float32(teacher.feats[-1].detach())
        _, reconstruction = self.paraphraser(feature)
        return {"reconstruction": F.mse_loss(at_least_float32(reconstruction), feature)}

    def main_parameters(self) -> Iterable[nn.Parameter]:
        """Return the translator's parameters; the paraphraser stays as the init stage left it."""
        return self.translator.parameters()

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"ce": ce_weight · CE, "ft": ft_weight · factor loss(translator(f_s), paraphraser(f_t))}``."""
        assert teacher is not None
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher.feats[-1])
        student_factor = self.translator(student.feats[-1])
        factor = factor_transfer_loss(student_factor, teacher_factor, self.p, self.factor_form)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "ft": self.ft_weight * factor,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="ft",
            builder=FT,
            description="Factor transfer: paraphraser pre-trained 30 epochs on the teacher, student matches its factor",
            citation="Kim, Park & Kwak, NeurIPS 2018 (arXiv:1802.04977)",
            family="feature",
        )
    ]
