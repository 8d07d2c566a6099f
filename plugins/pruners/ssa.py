"""SSA-KD importance: θ·Taylor + (1−θ)·magnitude, each normalised per layer (seed 000).

Lu, Zhang, Guan, Zhao, Yang & Xu, "SSA-KD: Self-Structure-Aware Knowledge
Distillation for Convolutional Neural Networks" (2024; code: ``pruneutil.py`` of
motinwing/AFIE-distillation-SSA-KD). The student is the teacher pruned at PR = 0.5
with this score, then distilled with KD at T = 3. For the filters ``c`` of one conv
(or rows of one linear) layer with weights ``w_c`` and accumulated loss gradients
``g_c``::

    T_c = Σ_i |w_ci · g_ci|                   first-order Taylor
    M_c = (Σ_i |w_ci|^p)^p                    magnitude; the authors' k = p = 2 gives ‖w_c‖₂⁴
    s_c = θ · T_c / ‖T‖₂ + (1 − θ) · M_c / ‖M‖₂

where ‖T‖₂, ‖M‖₂ are the L2 norms of the layer's vectors of scores. Why L2: it is
what the authors' ``taylor_criteria`` divides by, and it puts both terms at unit
scale whatever their raw sizes (Taylor products are orders of magnitude smaller than
weight norms), so θ really is the mixing weight. ``normalizer="max"`` or ``"sum"``
are offered for ablations. Their code accumulates cross-entropy gradients over two
batches of 128 training images in eval mode (``calibration_from_batches``).

On torch-pruning's graph a channel may be produced by several coupled layers (a
residual stream); ``s`` is computed for every conv/linear layer whose *outputs* are
the group's channels and averaged (``group_reduction="mean"``); consumers' input
weights and BatchNorm γ are not scored, as in the authors' code. Not reproduced:
the AFIE rule that sets each layer's own ratio; ratios come from ``PruneSettings``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdbench import KdbenchError, PrunerSpec, hookimpl
from kdbench.pruning import Pruner, check_choice

__all__ = ["SSA_NORMALIZERS", "SSAImportance", "SSAPruner", "normalise_scores", "ssa_scores"]

#: Per-layer normalisations of the two terms (None: raw scores).
SSA_NORMALIZERS = ("l2", "max", "sum", None)


def normalise_scores(scores: torch.Tensor, normalizer: str | None) -> torch.Tensor:
    """Return ``scores`` divided by their L2 norm, max or sum (unchanged for None or an all-zero vector)."""
    if normalizer is None:
        return scores
    scale = {"l2": torch.linalg.vector_norm, "max": torch.max, "sum": torch.sum}[normalizer](scores)
    return scores / scale if scale > 0 else scores


def ssa_scores(
    weight: torch.Tensor, grad: torch.Tensor, theta: float = 0.5, p: float = 2.0, normalizer: str | None = "l2"
) -> torch.Tensor:
    """Return one layer's SSA score per output channel (dim 0): θ·T/‖T‖ + (1−θ)·M/‖M‖."""
    w = weight.detach().flatten(1).float()
    g = grad.detach().flatten(1).float()
    taylor = (w * g).abs().sum(1)
    magnitude = w.abs().pow(p).sum(1).pow(p)
    return theta * normalise_scores(taylor, normalizer) + (1.0 - theta) * normalise_scores(magnitude, normalizer)


def _output_major(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Return a weight-shaped tensor with output channels first (transposed convolutions store them second)."""
    return tensor.transpose(0, 1) if getattr(module, "transposed", False) else tensor


class SSAImportance:
    """torch-pruning importance: ``importance(group)`` returns the SSA score of each channel of the group.

    Reads ``.grad`` of the producing layers' weights (run a calibration first).
    """

    def __init__(
        self, theta: float = 0.5, p: float = 2.0, normalizer: str | None = "l2", group_reduction: str = "mean"
    ) -> None:
        self.theta = theta
        self.p = p
        self.normalizer = normalizer
        self.group_reduction = group_reduction

    def _layer_scores(self, group: Any) -> list[tuple[torch.Tensor, list[int]]]:
        """Return (scores, root indices) for each conv/linear layer whose outputs are the group's channels."""
        found = []
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            if getattr(handler, "__name__", "") != "prune_out_channels" or any(r is None for r in item.root_idxs):
                continue
            if module.weight.grad is None:
                raise KdbenchError("SSA importance needs loss gradients: run a calibration before scoring")
            idxs = list(item.idxs)
            weight = _output_major(module, module.weight)[idxs]
            grad = _output_major(module, module.weight.grad)[idxs]
            found.append((ssa_scores(weight, grad, self.theta, self.p, self.normalizer), list(item.root_idxs)))
        return found

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        layers = self._layer_scores(group)
        if not layers:
            return None
        if self.group_reduction == "first":
            layers = layers[:1]
        total = torch.zeros(len(group[0].idxs))
        for scores, root_idxs in layers:
            total.index_add_(0, torch.tensor(root_idxs), scores.cpu())
        return total / len(layers) if self.group_reduction == "mean" else total


class SSAPruner(Pruner):
    """Remove the channels with the smallest SSA-KD score (needs calibration gradients)."""

    needs_gradients = True

    def __init__(
        self, theta: float = 0.5, p: float = 2.0, normalizer: str | None = "l2", group_reduction: str = "mean"
    ) -> None:
        if not 0.0 <= theta <= 1.0:
            raise KdbenchError(f"SSA theta must lie in [0, 1], got {theta}")
        if p <= 0:
            raise KdbenchError(f"SSA magnitude power p must be positive, got {p}")
        self.theta = float(theta)
        self.p = float(p)
        self.normalizer = check_choice("normalizer", normalizer, SSA_NORMALIZERS)
        self.group_reduction = check_choice("group_reduction", group_reduction, ("mean", "sum", "first"))

    def importance(self) -> SSAImportance:
        """Return the SSA importance with this pruner's θ, p, normaliser and reduction."""
        return SSAImportance(self.theta, self.p, self.normalizer, self.group_reduction)


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="ssa",
            builder=SSAPruner,
            description="SSA-KD: θ·Σ|w·g| + (1−θ)·‖w‖₂⁴ per filter, each L2-normalised per layer (needs calibration)",
            citation="Lu, Zhang, Guan, Zhao, Yang & Xu, SSA-KD (2024), seed 000",
        )
    ]
