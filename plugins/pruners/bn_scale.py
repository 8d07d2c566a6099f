"""BN scaling factors (network slimming): Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017.

A channel's importance is the magnitude ``|γ|`` of the BatchNorm scale that
follows it (torch-pruning's ``BNScaleImportance``; several BNs coupled to one
channel are averaged). Only the criterion is provided: the paper first trains with
an L1 penalty λ·Σ|γ| (λ of order 1e-5 to 1e-4) so that the scales become sparse;
without that sparsity training this is plain γ-magnitude pruning. Groups without a
BatchNorm are left unpruned.
"""

from __future__ import annotations

from typing import Any

from kdbench import PrunerSpec, hookimpl
from kdbench.pruning import GROUP_REDUCTIONS, NORMALIZERS, Pruner, check_choice

__all__ = ["BNScalePruner"]


class BNScalePruner(Pruner):
    """Remove the channels whose BatchNorm scale ``|γ|`` is smallest."""

    def __init__(self, group_reduction: str = "mean", normalizer: str | None = "mean") -> None:
        self.group_reduction = check_choice("group_reduction", group_reduction, GROUP_REDUCTIONS)
        self.normalizer = check_choice("normalizer", normalizer, NORMALIZERS)

    def importance(self) -> Any:
        """Return torch-pruning's BNScaleImportance."""
        import torch_pruning as tp

        return tp.importance.BNScaleImportance(group_reduction=self.group_reduction, normalizer=self.normalizer)


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="bn_scale",
            builder=BNScalePruner,
            description="Network slimming criterion: |γ| of the BatchNorm after each channel (no sparsity training)",
            citation="Liu, Li, Shen, Huang, Yan & Zhang, ICCV 2017 (arXiv:1708.06519)",
        )
    ]
