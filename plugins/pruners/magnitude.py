"""L1 / L2 filter magnitude: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.

Li et al. rank a convolution's filters by the L1 norm of their weights. On
torch-pruning's dependency graph a channel is shared by coupled layers (a residual
stream is written by several convolutions and read by several more), so by default a
channel is scored by the sum of ``|w|^p`` over its slice in every coupled conv,
linear and BN layer, averaged over those layers and divided by the group's mean
(torch-pruning's ``MagnitudeImportance``, the group criterion of Fang et al.,
"DepGraph: Towards Any Structural Pruning", CVPR 2023). ``group_reduction="first"``
with ``normalizer=None`` scores only the group's root filters, Li et al.'s own
criterion. The normaliser matters only with ``global_pruning``.
"""

from __future__ import annotations

import functools
from typing import Any

from kdbench import KdbenchError, PrunerSpec, hookimpl
from kdbench.pruning import GROUP_REDUCTIONS, NORMALIZERS, Pruner, check_choice

__all__ = ["MagnitudePruner"]

_CITATION = "Li, Kadav, Durdanovic, Samet & Graf, ICLR 2017 (arXiv:1608.08710); group form: Fang et al., CVPR 2023"


class MagnitudePruner(Pruner):
    """Remove the channels with the smallest weight magnitude (sum of ``|w|^p``)."""

    def __init__(self, p: int = 1, group_reduction: str = "mean", normalizer: str | None = "mean") -> None:
        if p not in (1, 2):
            raise KdbenchError(f"magnitude pruning uses p = 1 or 2, got {p!r}")
        self.p = p
        self.group_reduction = check_choice("group_reduction", group_reduction, GROUP_REDUCTIONS)
        self.normalizer = check_choice("normalizer", normalizer, NORMALIZERS)

    def importance(self) -> Any:
        """Return torch-pruning's MagnitudeImportance with this pruner's p, reduction and normaliser."""
        import torch_pruning as tp

        return tp.importance.MagnitudeImportance(
            p=self.p, group_reduction=self.group_reduction, normalizer=self.normalizer
        )


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="l1",
            builder=MagnitudePruner,
            description="Filter L1 norm (Li et al.), summed over coupled layers of each channel group",
            citation=_CITATION,
        ),
        PrunerSpec(
            name="l2",
            builder=functools.partial(MagnitudePruner, p=2),
            description="Filter squared L2 norm, summed over coupled layers of each channel group",
            citation=_CITATION,
        ),
    ]
