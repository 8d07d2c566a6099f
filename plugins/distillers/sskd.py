"""SSKD: Xu, Liu, Li & Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020.

CIFAR defaults are those of the authors' code (``student.py`` argument defaults,
which ``command.sh`` does not override): CE 0.1, KD 0.9 (T=4), transformed-view
KD 2.7 (T=4, keep ratio 1.0), self-supervision KL 10 (T=0.5, keep ratio 0.75);
the teacher's self-supervision head is trained first for 60 epochs at LR 0.05,
×0.1 at epochs 30 and 45 (``--t-epoch``, ``--t-lr``, ``--t-milestones``).

Each batch is expanded on the device to four views per image, sample-major as
in the authors' loader (image i → rows 4i..4i+3 at 0°, 90°, 180°, 270°): the
image is flipped once (shared by its four views, when the dataset flips), each
rotation ``rot90(img, k)`` gets its own zero-padded random crop, then the
dataset's normalisation. Both models see all 4B images (the student in train
mode, so its BatchNorm statistics span all views, as in the authors' code).

Self-supervision heads are MLPs ``Linear(d, d) → ReLU → Linear(d, d)`` on the
pooled embedding (the authors' ``wrapper``); the similarity matrix of a batch is
the cosine similarity between the heads' outputs of the 3B rotated rows and the
B unrotated rows. Phase ``teacher_ss`` (and its LR steps ``teacher_ss_2``,
``teacher_ss_3``) trains only the teacher's head, with the teacher's backbone
frozen and the student untouched, by cross-entropy of that matrix (no
temperature) against each rotated row's own image. Main training, with the
teacher's head frozen:

- ``ce``: CE on the unrotated rows;
- ``kd``: T²·KL(teacher ‖ student) on the unrotated rows;
- ``tf``: the same on the rotated rows kept by error-level ranking of the
  teacher's class prediction (all correct rows plus the best-ranked
  ``floor(ratio·wrong)`` wrong ones; the authors' default ratio 1.0 keeps every
  row, so "error correction" only acts on ``ss`` unless a suite lowers it);
- ``ss``: T²·KL between the row-softmaxed similarity matrices (T=0.5) on the
  rows kept by ranking the teacher's matrix the same way (ratio 0.75).

Deviations: the LR steps of the head's 60 epochs are three phases, so SGD's
momentum buffer restarts at epochs 30 and 45 (right after each LR drop; with
momentum 0.9 that changes a few of the ~47,000 steps). Ties in the error-level
ranking (a target whose score equals another's) count in the target's favour
and equal ranks keep row order, where the authors' ``argsort`` leaves both
unspecified.
The engine also runs the student's forward pass during the head phases, whose
result is unused.
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
    Phase,
    Progress,
    Signals,
    at_least_float32,
    hookimpl,
)

__all__ = [
    "SSKD",
    "draw_view_params",
    "error_rank_keep",
    "rotation_views",
    "similarity_matrix",
    "soft_kl_rows",
    "ss_head_loss",
]

VIEWS = 4
"""Rotations per image: 0°, 90°, 180°, 270°."""


def draw_view_params(
    batch: int, pad: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (flip bits per image (B,), crop top offsets (4B,), crop left offsets (4B,)) drawn on the generator."""
    device = generator.device
    if flip:
        flips = torch.rand(batch, generator=generator, device=device) < 0.5
    else:
        flips = torch.zeros(batch, dtype=torch.bool, device=device)
    dy = torch.randint(0, 2 * pad + 1, (VIEWS * batch,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (VIEWS * batch,), generator=generator, device=device)
    return flips, dy, dx


def rotation_views(
    raw: torch.Tensor, flips: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int
) -> torch.Tensor:
    """Return the 4B×C×H×W views of square images: flip, ``rot90(·, k)`` for k = 0..3, zero-padded crop.

    Row ``4i + k`` is image i rotated by k·90° (``torch.rot90`` over H, W, the
    direction of ``numpy.rot90`` on H×W×C), cropped at (dy, dx) of its
    ``pad``-padded version. Works for any dtype.
    """
    channels, height, width = raw.shape[1:]
    device = raw.device
    images = torch.where(flips.to(device)[:, None, None, None], raw.flip(-1), raw)
    views = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(VIEWS)], dim=1).flatten(0, 1)
    if pad == 0:
        return views.contiguous()
    padded = F.pad(views, (pad, pad, pad, pad))
    rows = dy.to(device)[:, None] + torch.arange(height, device=device)
    cols = dx.to(device)[:, None] + torch.arange(width, device=device)
    sample = torch.arange(views.shape[0], device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[sample, channel, rows[:, None, :, None], cols[:, None, None, :]].contiguous()


def similarity_matrix(rep: torch.Tensor) -> torch.Tensor:
    """Return the 3B×B cosine similarities between the rotated rows and the unrotated rows of 4B sample-major rows.

    Entry (r, j) compares rotated row r (image r // 3, rotation r % 3 + 1) with
    the unrotated row of image j.
    """
    grouped = rep.view(-1, VIEWS, rep.shape[1])
    normal = grouped[:, 0]
    rotated = grouped[:, 1:].flatten(0, 1)
    return F.cosine_similarity(rotated.unsqueeze(1), normal.unsqueeze(0), dim=2)


def _rotated_owner(batch: int, device: torch.device) -> torch.Tensor:
    """Return, for each of the 3B rotated rows, the index of its image."""
    return torch.arange(batch, device=device).repeat_interleave(VIEWS - 1)


def ss_head_loss(rep: torch.Tensor) -> torch.Tensor:
    """Return the head's self-supervision loss: CE of the similarity matrix rows against their own image."""
    simi = similarity_matrix(at_least_float32(rep))
    return F.cross_entropy(simi, _rotated_owner(simi.shape[1], simi.device))


def soft_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return per row T² · KL(softmax(t/T) ‖ softmax(s/T)), computed in float32 or wider."""
    log_p_student = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1) * temperature**2


def error_rank_keep(scores: torch.Tensor, targets: torch.Tensor, ratio: float) -> torch.Tensor:
    """Return a boolean mask of the rows SSKD's error-level ranking keeps.

    A row's rank is the number of entries scoring above its target; rows of
    rank 0 (correct) are all kept, and of the others the ``floor(ratio · wrong)``
    of smallest rank (row order among equal ranks). No host synchronisation.
    """
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores > target_scores).sum(dim=1)
    wrong = (rank > 0).sum()
    keep_count = (rank == 0).sum() + torch.floor(wrong.double() * ratio).long()
    order = torch.argsort(rank, stable=True)
    position = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    return position < keep_count


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


class SSKD(Distiller):
    """Distil class predictions and self-supervised similarity structure over four rotations of each image."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"logits", "embedding"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        context: DistillContext,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        tf_weight: float = 2.7,
        ss_weight: float = 10.0,
        kd_temperature: float = 4.0,
        tf_temperature: float = 4.0,
        ss_temperature: float = 0.5,
        tf_keep_ratio: float = 1.0,
        ss_keep_ratio: float = 0.75,
        head_epochs: int = 60,
        head_lr: float = 0.05,
        head_milestones: tuple[int, ...] | list[int] = (30, 45),
        head_lr_decay: float = 0.1,
    ) -> None:
        super().__init__()
        if context.student_shapes is None or context.teacher_shapes is None:
            raise KdbenchError("SSKD needs both models' signal shapes")
        s_embedding, t_embedding = context.student_shapes.embedding, context.teacher_shapes.embedding
        if s_embedding is None or t_embedding is None:
            raise KdbenchError("SSKD needs both models' pooled embeddings")
        if context.input_size[1] != context.input_size[2]:
            raise KdbenchError(f"SSKD rotates images by 90°: they must be square, got {context.input_size}")
        self.weights = {"ce": ce_weight, "kd": kd_weight, "tf": tf_weight, "ss": ss_weight}
        self.kd_temperature = kd_temperature
        self.tf_temperature = tf_temperature
        self.ss_temperature = ss_temperature
        self.tf_keep_ratio = tf_keep_ratio
        self.ss_keep_ratio = ss_keep_ratio
        self.pad = context.augment.pad if context.augment is not None else 0
        self.flip = context.augment.flip if context.augment is not None else False
        channels = context.input_size[0]
        mean = torch.tensor(context.mean or (0.0,) * channels, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(context.std or (1.0,) * channels, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.student_head = _head(s_embedding.shape[1])
        self.teacher_head = _head(t_embedding.shape[1])
        self._phases = (
            (
                Phase(
                    "teacher_ss",
                    epochs=head_epochs,
                    lr=head_lr,
                    lr_milestones=tuple(head_milestones),
                    lr_gamma=head_lr_decay,
                ),
            )
            if head_epochs > 0
            else ()
        )

    def prepare_batch(self, batch: Batch) -> Batch:
        """Return the batch with its images replaced by the four augmented rotations of each raw image."""
        if batch.raw is None or batch.generator is None:
            raise KdbenchError("SSKD makes its views from batch.raw with batch.generator (device-resident data)")
        flips, dy, dx = draw_view_params(batch.raw.shape[0], self.pad, self.flip, batch.generator)
        views = rotation_views(batch.raw, flips, dy, dx, self.pad)
        images = views.to(torch.float32).div(255).sub(self.mean).div(self.std)
        if batch.images.is_contiguous(memory_format=torch.channels_last) and not batch.images.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        return Batch(images, batch.targets, batch.indices, batch.raw, batch.generator, extras={"views": VIEWS})

    def signals(self, phase: Phase | None) -> tuple[frozenset[str], frozenset[str]]:
        """Return the signals of a phase: the head phases need only the teacher's embedding, nothing of the student."""
        if phase is None:
            return self.student_signals, self.teacher_signals
        return frozenset(), frozenset({"embedding"})

    def phases(self) -> tuple[Phase, ...]:
        """Return the teacher head's training (60 epochs, LR ×0.1 at epochs 30 and 45, as SSKD's teacher.py)."""
        return self._phases

    def phase_parameters(self, phase: Phase, student: nn.Module) -> list[nn.Parameter]:
        """Return the teacher head's parameters (the only ones the phases train)."""
        return list(self.teacher_head.parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        """Return the student head's parameters (the teacher head is frozen after its phases)."""
        return list(self.student_head.parameters())

    def phase_terms(
        self, phase: Phase, student: Signals | None, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the teacher head's self-supervision loss on the frozen teacher's embeddings."""
        assert teacher is not None and teacher.embedding is not None
        return {"ss_head": ss_head_loss(self.teacher_head(teacher.embedding.detach().flatten(1)))}

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE, KD, transformed-view KD and self-supervision terms."""
        assert teacher is not None and student.embedding is not None and teacher.embedding is not None
        s_logits = student.logits.view(-1, VIEWS, student.logits.shape[1])
        t_logits = teacher.logits.detach().view(-1, VIEWS, teacher.logits.shape[1])
        s_rot, t_rot = s_logits[:, 1:].flatten(0, 1), t_logits[:, 1:].flatten(0, 1)
        rot_targets = batch.targets.repeat_interleave(VIEWS - 1)
        tf_keep = error_rank_keep(t_rot, rot_targets, self.tf_keep_ratio)
        s_simi = similarity_matrix(at_least_float32(self.student_head(student.embedding.flatten(1))))
        with torch.no_grad():
            t_simi = similarity_matrix(at_least_float32(self.teacher_head(teacher.embedding.detach().flatten(1))))
        ss_keep = error_rank_keep(t_simi, _rotated_owner(t_simi.shape[1], t_simi.device), self.ss_keep_ratio)
        values = {
            "ce": F.cross_entropy(at_least_float32(s_logits[:, 0]), batch.targets),
            "kd": soft_kl_rows(s_logits[:, 0], t_logits[:, 0], self.kd_temperature).mean(),
            "tf": _masked_mean(soft_kl_rows(s_rot, t_rot, self.tf_temperature), tf_keep),
            "ss": _masked_mean(soft_kl_rows(s_simi, t_simi, self.ss_temperature), ss_keep),
        }
        return {name: self.weights[name] * value for name, value in values.items()}


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="sskd",
            builder=SSKD,
            description="KD on 4 rotations plus the teacher's self-supervised similarity structure, error-ranked",
            citation="Xu, Liu, Li & Loy, Knowledge Distillation Meets Self-Supervision, ECCV 2020 (arXiv:2006.07114)",
            family="feature",
        )
    ]
