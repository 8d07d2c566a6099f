"""SKD: Jeong, Lee & Choi, "Streamlined Knowledge Distillation", CVPR 2026 (code ``HyunJunSik/StreamLined``).

Only the abstract of the paper could be read; this module computes what the authors' code computes in
``Distiller/SKD.py`` at commit ``e4ab795`` (May 2025; unchanged in ``4681da2``), the code behind the
reference table of that date. With logits z_s, z_t (N×C) and the teacher under ``no_grad``:

    L = w_ce·CE + w_kd·(ρ_N·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + ρ_C·L_DIR)

- The instance term (``SKD.py:8-16``) is Hinton's KD, batch mean, T² (``kdbench.losses.kd_loss``).
- The direction term ``L_DIR`` (``SKD.py:18-41``): rows L2-normalised (eps 1e-12; ``:23-24``), Gram matrices
  divided by C (``:27-28``), D = G_s − G_t (N×N); Σ = ``torch.cov`` of D's rows as observations (divisor
  N − 1, centred) + λ·I (``:34``); P = Σ⁻¹ by ``cholesky`` + ``cholesky_inverse`` (``:36-37``), with the
  gradient flowing through Σ; ``L_DIR = mean_b sqrt(D_b P D_bᵀ)`` over the uncentred rows (``:40-41``).
- **The ρ "masks" are scalar fractions.** ``SKD.py:61-74`` builds a boolean mask over the batch (teacher
  confidence max_k softmax(z_t)_k at or below its median, ``np.percentile(·, 50)``) and one over the classes
  (the teacher's probabilities summed over the batch, at or below their median). But ``:77-87`` multiplies
  each mask by a loss that ``kd_loss`` / ``SKD_loss`` have *already reduced to a scalar*, then takes
  ``.mean()``: nothing is masked per sample or per class, each term is only scaled by the fraction of True
  entries. ρ is 0.5 exactly for an even count without ties, more with ties (e.g. when over half the batch's
  teacher confidences are exactly 1.0 in float32). This module reproduces those scalars, not a masking the
  code does not do.

Defaults are those of ``SKD.__init__`` at ``e4ab795``, ``Distiller/SKD.py:48``:
``temp=4, tik=1e-1, ce=0.5, kd=0.5``; ``CIFAR-100/Utils/distillation_train.py:222`` builds
``SKD(model_student, model_teacher)`` with them for every pair. Since ``40ff8fd`` (March 2026) the code
defaults to ce 0.1 / kd 0.9, "optimal per pair" with per-pair values that are not published; its docstring
gives "temp:4, tik=1e-1, ce=0.5, ce=0.5" (the second presumably kd) for resnet32x4 → resnet8x4.

Where this differs, and why:

- The medians are ``torch.quantile(·, 0.5)`` on the device (linear interpolation, numpy's default), not a
  host copy and ``np.percentile`` at every step: the same thresholds without a device-to-host sync.
- ρ·loss is computed as ``loss·ρ``, not as the mean of N copies of the loss and zeros: float32 rounding only.
- The Cholesky factor comes from ``cholesky_ex`` (the same factor, without the error check that waits for the
  device): Σ is positive definite by construction, and non-finite logits give a non-finite loss, which the
  engine reports as a diverged run, instead of an exception.
- The instance KL takes the teacher's log-probabilities from ``log_softmax`` rather than ``log(softmax)``
  (``kd_loss``, shared with KD): the same value up to rounding.
- Everything runs in float32, also under bf16 autocast (no half-precision Cholesky exists).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32, hookimpl
from kdbench.losses import kd_loss

__all__ = ["SKD", "direction_loss", "fraction_at_or_below_median", "mask_fractions"]


def fraction_at_or_below_median(values: torch.Tensor) -> torch.Tensor:
    """Return the fraction of the entries of 1-D ``values`` that are ≤ their median (linear interpolation)."""
    threshold = torch.quantile(values, 0.5)
    return (values <= threshold).to(values.dtype).mean()


def mask_fractions(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (ρ_N, ρ_C): what SKD's sample and class confidence masks reduce to (scalar tensors, no grad).

    ρ_N is the fraction of samples whose teacher confidence (max softmax probability at T = 1) is at or
    below the batch median, ρ_C the fraction of classes whose probability summed over the batch is at or
    below the class median.
    """
    probabilities = torch.softmax(at_least_float32(teacher_logits.detach()), dim=1)
    return (
        fraction_at_or_below_median(probabilities.amax(dim=1)),
        fraction_at_or_below_median(probabilities.sum(dim=0)),
    )


def direction_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tikhonov: float) -> torch.Tensor:
    """Return SKD's direction term: the mean Mahalanobis norm of the rows of the Gram difference D.

    ``D = (u_s u_sᵀ − u_t u_tᵀ) / C`` for the row-normalised logits u, ``Σ = cov(D) + tikhonov·I`` (rows as
    observations, divisor N − 1), and the result is ``mean_b sqrt(D_b Σ⁻¹ D_bᵀ)``, Σ inverted through its
    Cholesky factor with the gradient through Σ. Always float32 at least, autocast or not.
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        student = F.normalize(at_least_float32(student_logits), p=2, dim=1)
        teacher = F.normalize(at_least_float32(teacher_logits), p=2, dim=1)
        classes = student.shape[1]
        difference = student @ student.t() / classes - teacher @ teacher.t() / classes
        size = difference.shape[0]
        identity = torch.eye(size, dtype=difference.dtype, device=difference.device)
        covariance = torch.cov(difference.t()) + tikhonov * identity
        precision = torch.cholesky_inverse(torch.linalg.cholesky_ex(covariance).L)
        squared = torch.einsum("bi,ij,bj->b", difference, precision, difference)
        return squared.sqrt().mean()


class SKD(Distiller):
    """Cross-entropy plus an instance-wise KL and a direction-wise Mahalanobis term, each scaled by a ρ factor."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        temperature: float = 4.0,
        tikhonov: float = 0.1,
        ce_weight: float = 0.5,
        kd_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.tikhonov = tikhonov
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, instance (KL) and direction (Mahalanobis) terms."""
        assert teacher is not None
        rho_samples, rho_classes = mask_fractions(teacher.logits)
        instance = kd_loss(student.logits, teacher.logits, self.temperature)
        direction = direction_loss(student.logits, teacher.logits.detach(), self.tikhonov)
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "skd_instance": self.kd_weight * rho_samples * instance,
            "skd_direction": self.kd_weight * rho_classes * direction,
        }


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="skd",
            builder=SKD,
            description=(
                "Streamlined KD: T²·KL plus the Mahalanobis norm of the normalised-logit Gram difference "
                "(Tikhonov λ, Cholesky), each scaled by a median-confidence fraction"
            ),
            citation=(
                "Jeong, Lee & Choi, Streamlined Knowledge Distillation, CVPR 2026; "
                "code github.com/HyunJunSik/StreamLined @ e4ab795"
            ),
            family="logit",
        )
    ]
