"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

CIFAR defaults are those of the authors' RepDistiller (``train_student.py`` and
``scripts/run_cifar_distill.sh``): embeddings of dimension 128, 16384 negatives
per sample, NCE temperature 0.07, memory momentum 0.5, CE weight 1 (``-r 1``),
CRD weight 0.8 (``-b 0.8``); ``crd`` uses no KD term (``-a 0``), ``crd_kd``
adds KD with weight 1 at T=4 (``-a 1``, ``--kd_T 4``). MDistiller's CRD config
uses the same numbers.

What follows the reference exactly: two linear embeddings (student and teacher
pooled embedding → 128, L2-normalised, both trained); two memory banks N×128,
initialised uniformly on ±1/√(128/3); the NCE loss of ``crd/criterion.py``
(``ContrastLoss``) on both anchors; the normalisation constant Z of each side
estimated once, on the first batch, as ``mean(exp(s/τ))·N``; after each step the
banks' rows of the batch move to ``m·row + (1−m)·embedding`` and are
re-normalised. Negatives are drawn as in RepDistiller's ``mode='exact'``: the
positive is the sample itself and its ``nce_k`` negatives are drawn uniformly
**without replacement** from the samples of the *other* classes, independently
per sample.

Where it differs, and why:

- Negatives are drawn on the device from the engine's per-epoch generator (one
  uniform key per train sample, own class masked, the ``k`` smallest kept), not
  by NumPy in the data loader; nothing requires CUDA (both RepDistiller defects).
- The banks are initialised from ``torch.Generator().manual_seed(0)`` (fixed, no
  global RNG), so every run starts from the same banks; Z is a buffer, so a
  resumed run is exact.
- Scores are computed as ``embedding @ bankᵀ`` followed by a gather, not by
  gathering B×(K+1)×128 bank rows: the same dot products at a fraction of the
  memory. The contrastive part runs in float32 even under bf16 autocast.
- Small datasets: RepDistiller samples *with* replacement when ``nce_k`` exceeds
  the number of other-class samples. Here the number of negatives is capped at
  the smallest other-class count (N − largest class size) and always drawn
  without replacement; ``nce_k`` is a parameter a suite may lower. On CIFAR-100
  (49,500 other-class samples per class) the cap never applies.
"""

from __future__ import annotations

import functools
import math

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
from kdbench.losses import kd_loss

__all__ = ["CRD", "contrast_loss", "crd_memory_init", "draw_negatives", "momentum_update"]

_EPS = 1e-7
"""The constant RepDistiller adds to the NCE denominators."""


def contrast_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """Return the NCE loss of RepDistiller's ``ContrastLoss`` (CRD paper, eq. 18) for B×(K+1) scores.

    ``scores[:, 0]`` are the positives' normalised scores ``exp(s/τ)/Z``, the
    other K columns the negatives'. With noise probability ``Pn = 1/num_data``
    and ``c = K·Pn`` the loss is
    ``−(Σ_b log(P_b0 / (P_b0 + c + ε)) + Σ_b Σ_k log(c / (P_bk + c + ε))) / B``.
    """
    batch, negatives = scores.shape[0], scores.shape[1] - 1
    noise = negatives / float(num_data)
    positive = scores[:, 0]
    log_d1 = torch.log(positive / (positive + noise + _EPS))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + _EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


def momentum_update(rows: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """Return ``momentum·rows + (1 − momentum)·new`` with every row rescaled to unit L2 norm."""
    mixed = rows * momentum + new * (1.0 - momentum)
    return mixed / mixed.pow(2).sum(dim=1, keepdim=True).sqrt()


def draw_negatives(labels: torch.Tensor, targets: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Return B×count train indices: per row, distinct samples whose label differs from that row's target.

    Each row is a uniformly random ``count``-subset of the other-class samples
    (one uniform key per train sample, own class masked, the ``count`` smallest
    keys kept), drawn on ``generator``'s device.
    """
    keys = torch.rand((targets.shape[0], labels.shape[0]), generator=generator, device=generator.device)
    keys = keys.to(labels.device).masked_fill(labels.unsqueeze(0) == targets.unsqueeze(1), math.inf)
    return keys.topk(count, dim=1, largest=False, sorted=False).indices


def crd_memory_init(num_data: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Return a num_data×dim bank uniform on ±1/√(dim/3) (RepDistiller's initialisation: rows of about unit norm)."""
    bound = 1.0 / math.sqrt(dim / 3.0)
    return torch.rand(num_data, dim, generator=generator).mul_(2 * bound).sub_(bound)


class _Embed(nn.Module):
    """Linear map to the contrastive space followed by L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the unit-norm embedding of the flattened input."""
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def _negative_cap(labels: torch.Tensor, nce_k: int) -> int:
    counts = torch.bincount(labels.cpu())
    available = int(labels.shape[0] - counts.max())
    if available < 1:
        raise KdbenchError("CRD needs at least two classes in the train set (negatives come from other classes)")
    return min(nce_k, available)


class CRD(Distiller):
    """Contrast student and teacher embeddings of each sample against other-class samples held in memory banks."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"logits", "embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 1.0,
        crd_weight: float = 0.8,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
    ) -> None:
        super().__init__()
        if context.train_labels is None or context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("CRD needs the train labels and both models' signal shapes")
        s_embedding, t_embedding = context.student_shapes.embedding, context.teacher_shapes.embedding
        if s_embedding is None or t_embedding is None:
            raise KdbenchError("CRD needs both models' pooled embeddings")
        self.ce_weight = ce_weight
        self.crd_weight = crd_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.nce_t = nce_t
        self.nce_m = nce_m
        labels = context.train_labels.detach().to(torch.int64)
        self.num_data = int(labels.shape[0])
        self.nce_k = _negative_cap(labels, nce_k)
        self.embed_student = _Embed(s_embedding.shape[1], feat_dim)
        self.embed_teacher = _Embed(t_embedding.shape[1], feat_dim)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("memory_student", crd_memory_init(self.num_data, feat_dim, generator))
        self.register_buffer("memory_teacher", crd_memory_init(self.num_data, feat_dim, generator))
        # Z of the student-anchored and the teacher-anchored scores; negative = not estimated yet.
        self.register_buffer("normalizer", torch.full((2,), -1.0))
        self.register_buffer("labels", labels.clone(), persistent=False)

    def _normalised_scores(
        self, anchor: torch.Tensor, bank: torch.Tensor, contrast: torch.Tensor, side: int
    ) -> torch.Tensor:
        """Return exp(anchor·bank[contrast]/τ)/Z as B×(K+1), setting Z from this batch if it is still unset."""
        scores = torch.exp((anchor @ bank.t()).gather(1, contrast) / self.nce_t)
        estimate = scores.detach().mean() * self.num_data
        z = torch.where(self.normalizer[side] < 0, estimate, self.normalizer[side])
        self.normalizer[side] = z
        return scores / z

    def crd_loss(self, student: Signals, teacher: Signals, batch: Batch) -> torch.Tensor:
        """Return the (unweighted) CRD loss of the batch and update the memory banks."""
        if batch.generator is None:
            raise KdbenchError("CRD draws its negatives from batch.generator; the batch has none")
        assert student.embedding is not None and teacher.embedding is not None
        indices = batch.indices.to(self.labels.device)
        with torch.autocast(student.embedding.device.type, enabled=False):
            f_s = self.embed_student(at_least_float32(student.embedding))
            f_t = self.embed_teacher(at_least_float32(teacher.embedding.detach()))
            negatives = draw_negatives(self.labels, self.labels[indices], self.nce_k, batch.generator)
            contrast = torch.cat([indices.unsqueeze(1), negatives], dim=1)
            # Student anchor vs the teacher bank, teacher anchor vs the student bank (RepDistiller's out_v1, out_v2).
            out_s = self._normalised_scores(f_s, self.memory_teacher, contrast, 0)
            out_t = self._normalised_scores(f_t, self.memory_student, contrast, 1)
            loss = contrast_loss(out_s, self.num_data) + contrast_loss(out_t, self.num_data)
        with torch.no_grad():
            # Out of place: the old banks are saved for the backward pass.
            rows_s = momentum_update(self.memory_student[indices], f_s.detach(), self.nce_m)
            rows_t = momentum_update(self.memory_teacher[indices], f_t.detach(), self.nce_m)
            self.memory_student = self.memory_student.index_copy(0, indices, rows_s)
            self.memory_teacher = self.memory_teacher.index_copy(0, indices, rows_t)
        return loss

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, CRD and (when ``kd_weight`` > 0) KD terms."""
        assert teacher is not None
        terms = {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "crd": self.crd_weight * self.crd_loss(student, teacher, batch),
        }
        if self.kd_weight:
            terms["kd"] = self.kd_weight * kd_loss(student.logits, teacher.logits.detach(), self.temperature)
        return terms


_CITATION = "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020 (arXiv:1910.10699)"


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="crd",
            builder=CRD,
            description="Contrastive (NCE) matching of embeddings against 16384 other-class negatives in memory banks",
            citation=_CITATION,
            family="feature",
        ),
        DistillerSpec(
            name="crd_kd",
            builder=functools.partial(CRD, kd_weight=1.0),
            description="CRD plus soft-target KD (T=4, weight 1), as CRD+KD in the CRD paper",
            citation=_CITATION,
            family="feature",
        ),
    ]
