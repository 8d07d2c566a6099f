"""Random channel pruning: the baseline every pruning criterion must beat.

Each channel gets a uniform random score from a generator seeded by ``seed``, so a
given model, settings and seed always remove the same channels (torch-pruning's own
``RandomImportance`` draws from the global RNG). A randomly pruned network recovers
much of its accuracy with fine-tuning (Mittal et al., "Recovering from Random
Pruning: On the Plasticity of Deep Convolutional Neural Networks", WACV 2018).
"""

from __future__ import annotations

from typing import Any

import torch

from kdbench import PrunerSpec, hookimpl
from kdbench.pruning import Pruner

__all__ = ["RandomPruner", "SeededRandomImportance"]


class SeededRandomImportance:
    """torch-pruning importance: ``importance(group)`` returns one uniform random score per channel of the group."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: Any) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)


class RandomPruner(Pruner):
    """Remove channels chosen uniformly at random (seeded)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def importance(self) -> SeededRandomImportance:
        """Return a freshly seeded random importance."""
        return SeededRandomImportance(self.seed)


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="random",
            builder=RandomPruner,
            description="Uniformly random channels, seeded (baseline)",
            citation="baseline; cf. Mittal, Bhardwaj, Khapra & Ravindran, WACV 2018 (arXiv:1801.10447)",
        )
    ]
