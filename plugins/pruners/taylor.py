"""First-order Taylor importance: Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019.

A filter's importance is the squared first-order change of the loss when it is
removed, ``(Σ_s g_s w_s)²`` over its weights (the paper's eq. 4). With
``multivariable=True`` (default) torch-pruning's ``TaylorImportance`` scores
``|Σ_s g_s w_s|``, which ranks identically; ``False`` gives ``Σ_s |g_s w_s|``.
Gradients are those the calibration callable accumulated over its batches (the
paper averages per-batch importances instead). Scores of coupled layers are
averaged per channel group, as in ``l1``.
"""

from __future__ import annotations

from typing import Any

from kdbench import PrunerSpec, hookimpl
from kdbench.pruning import GROUP_REDUCTIONS, NORMALIZERS, Pruner, check_choice

__all__ = ["TaylorPruner"]


class TaylorPruner(Pruner):
    """Remove the channels whose removal changes the loss least to first order (needs calibration gradients)."""

    needs_gradients = True

    def __init__(
        self, multivariable: bool = True, group_reduction: str = "mean", normalizer: str | None = "mean"
    ) -> None:
        self.multivariable = bool(multivariable)
        self.group_reduction = check_choice("group_reduction", group_reduction, GROUP_REDUCTIONS)
        self.normalizer = check_choice("normalizer", normalizer, NORMALIZERS)

    def importance(self) -> Any:
        """Return torch-pruning's TaylorImportance (reads each weight's ``.grad``)."""
        import torch_pruning as tp

        return tp.importance.TaylorImportance(
            group_reduction=self.group_reduction, normalizer=self.normalizer, multivariable=self.multivariable
        )


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="taylor",
            builder=TaylorPruner,
            description="First-order Taylor |Σ g·w| per channel from calibration gradients (needs calibration)",
            citation="Molchanov, Mallya, Tyree, Frosio & Kautz, CVPR 2019 (arXiv:1906.10771)",
        )
    ]
