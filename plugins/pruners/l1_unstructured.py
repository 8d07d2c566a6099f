"""Global L1 unstructured pruning (seed 001's "L1 unstructured", distill-then-prune).

The fraction ``ratio`` of all conv and linear weights with the smallest absolute
value, ranked together across layers, is zeroed with ``torch.nn.utils.prune``
(``global_unstructured`` + ``L1Unstructured``; Han et al., "Learning both Weights
and Connections for Efficient Neural Networks", NIPS 2015) and made permanent
(``prune.remove``): the model keeps its shapes and its MACs, and later training can
revive the zeros unless the trainer masks them again. The classifier and the
modules named in ``PruneSettings.ignored`` stay dense.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from kdbench import KdbenchError, PrunerSpec, hookimpl
from kdbench.pruning import Calibration, Pruner, PruneSettings, classifier_of, modules_named

__all__ = ["L1UnstructuredPruner", "prunable_weights"]


def prunable_weights(model: nn.Module, ignored: Iterable[str] = ()) -> list[tuple[nn.Module, str]]:
    """Return ``(module, "weight")`` for every conv/linear layer outside the classifier and ``ignored``."""
    kept = {id(m) for owner in (classifier_of(model), *modules_named(model, ignored)) for m in owner.modules()}
    return [
        (module, "weight")
        for module in model.modules()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and id(module) not in kept
    ]


class L1UnstructuredPruner(Pruner):
    """Zero the globally smallest-magnitude weights of conv and linear layers."""

    structured = False

    def prune(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        settings: PruneSettings,
        calibration: Calibration | None = None,
    ) -> nn.Module:
        """Return ``model`` with ``settings.ratio`` of its prunable weights zeroed in place."""
        if settings.ratio is None:
            raise KdbenchError(
                "l1_unstructured zeroes weights and leaves MACs unchanged: give a `ratio` (fraction of weights "
                "zeroed), not a target MACs reduction"
            )
        targets = prunable_weights(model, settings.ignored)
        if not targets:
            raise KdbenchError(f"{type(model).__name__} has no conv/linear weight outside the classifier to prune")
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=settings.ratio)
        for module, name in targets:
            prune.remove(module, name)
        return model


@hookimpl
def kdbench_register_pruners() -> list[PrunerSpec]:
    return [
        PrunerSpec(
            name="l1_unstructured",
            builder=L1UnstructuredPruner,
            description="Global L1 unstructured: zero the smallest |w| across conv/linear layers (classifier dense)",
            citation="Han, Pool, Tran & Dally, NIPS 2015 (arXiv:1506.02626); seed 001 (distill-then-prune)",
            structured=False,
        )
    ]
