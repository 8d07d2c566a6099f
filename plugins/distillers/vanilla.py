"""Vanilla training: cross-entropy on the labels, no teacher (the "student" row of every KD table)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import Batch, Distiller, DistillerSpec, Progress, Signals, hookimpl

__all__ = ["Vanilla"]


class Vanilla(Distiller):
    """Train the student on the labels alone."""

    teacher_signals = frozenset()

    def __init__(
        self, student: torch.nn.Module, teacher: torch.nn.Module | None, context: object, ce_weight: float = 1.0
    ):
        super().__init__()
        self.ce_weight = ce_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return ``{"ce": ce_weight · CE(student logits, targets)}``."""
        return {"ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets)}


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="vanilla",
            builder=Vanilla,
            description="Cross-entropy on the labels only, no teacher (the baseline student row)",
            citation="standard supervised training",
            family="baseline",
            needs_teacher=False,
        )
    ]
