"""LAMP: Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021.

LAMP rescales each squared weight magnitude by the sum of the squared magnitudes
not smaller than it in the same layer, ``s_u = w_u² / Σ_{v ≥ u} w_v²``, so that
scores are comparable across layers and a single global threshold yields a
layer-adaptive sparsity. Here (torch-pruning's ``LAMPImportance``) the units are
channels with their group's L_p magnitude. Within one layer LAMP keeps the order of
the magnitudes, so it differs from ``l2`` only with ``global_pruning=True``, the
setting the paper uses.
"""

from __future__ import annotations

from typing import Any

from kdbench import KdbenchError, PrunerSpec, hookimpl
from kdbench.pruning import GROUP_REDUCTIONS, Pruner, check_choice

__all__ = ["LAMPPruner"]


class LAMPPruner(Pruner):
    """Remove the channels with the smallest LAMP score (use with global pruning)."""

    def __init__(self, p: int = 2, group_reduction: str = "mean") -> None:
        if p not in (1, 2):
            raise KdbenchError(f"LAMP uses p = 1 or 2, got {p!r}")
        self.p = p
        self.group_reduction = check_choice("group_reduction", group_reduction, GROUP_REDUCTIONS)

    def importance(self) -> Any:
        """Return torch-pruning's LAMPImportance."""
        import torch_pruning as tp

        return tp.importance.LAMPImportance(p=self.p, group_reduction=self.group_reduction)


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="lamp",
            builder=LAMPPruner,
            description="Layer-adaptive magnitude scores (LAMP); differs from l2 only with global pruning",
            citation="Lee, Park, Mo, Ahn & Shin, ICLR 2021 (arXiv:2010.07611)",
        )
    ]
