"""Pruning: structured channel pruning on torch-pruning's dependency graph, unstructured pruning, and saving both.

Method-agnostic machinery; the criteria are pruner plugins (``kdbench_register_pruners``).
Only the names below are public; the private modules behind them may change.

- **Structured** pruners score channels with a torch-pruning importance
  (:meth:`Pruner.importance`) and :func:`prune_structured` removes them through
  ``torch_pruning.pruner.BasePruner`` over the DependencyGraph, so coupled layers
  (residual sums, concatenations, depthwise convolutions, the classifier's inputs)
  shrink together. The classifier named by ``model.feature_taps.classifier``
  (:func:`classifier_of`) always keeps its outputs (torch-pruning may still remove
  its *inputs* with the embedding channels); modules named in
  :attr:`PruneSettings.ignored` are not changed at all.
- Channel groups that torch-pruning 1.6 would prune *incorrectly* are left alone:
  groups through a channel transpose/permute (a channel shuffle, which its graph maps
  as the identity), through a constant slice or split (``x[:, :k]`` keeps its Python
  constant), and groups that would remove channels unevenly from a grouped (not
  depthwise) convolution. A model where nothing else is prunable (ShuffleV1) raises
  :class:`~kdbench.errors.KdbenchError` instead of coming back unpruned.
- **Unstructured** pruners override :meth:`Pruner.prune` (``structured = False``);
  :func:`sparsity` reports the fraction of weights they zeroed.
- **MACs** are counted with :func:`kdbench.profile.count_macs` (fvcore, batch 1, one
  multiply-add = 1), the convention of every kdbench profile; reductions are
  ``MACs(original) / MACs(pruned)``.
- **Saving**: a pruned model no longer matches its class's constructor, so
  :func:`save_pruned` stores the architecture name, the hyper-parameters of every
  shape-carrying module (:func:`describe_architecture`) and an ordinary state_dict,
  atomically (:func:`kdbench.files.atomic_torch_save`); :func:`load_pruned` rebuilds
  the base model from the registry (:func:`rebuild`), swaps those modules for fresh
  ones of the recorded shapes (names, hence ``feature_taps``, unchanged) and loads
  the weights strictly with ``torch.load(weights_only=True)``.

Pruning replaces parameter objects: build the optimizer after pruning.
torch-pruning is imported on first use (it pulls in timm and torchvision, ~2 s).
"""

from __future__ import annotations

from kdbench.pruning._archive import (
    ARCHITECTURE_FORMAT,
    describe_architecture,
    load_pruned,
    model_from_archive,
    rebuild,
    save_pruned,
)
from kdbench.pruning._contract import (
    DEFAULT_TARGET_STEPS,
    GROUP_REDUCTIONS,
    NORMALIZERS,
    Calibration,
    Pruner,
    PruneSettings,
    calibration_from_batches,
    check_choice,
    prune_model,
    sparsity,
)
from kdbench.pruning._structured import classifier_of, modules_named, prune_structured

__all__ = [
    "ARCHITECTURE_FORMAT",
    "DEFAULT_TARGET_STEPS",
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "Calibration",
    "PruneSettings",
    "Pruner",
    "calibration_from_batches",
    "check_choice",
    "classifier_of",
    "describe_architecture",
    "load_pruned",
    "model_from_archive",
    "modules_named",
    "prune_model",
    "prune_structured",
    "rebuild",
    "save_pruned",
    "sparsity",
]
