"""kdbench: a plugin-based benchmark harness for knowledge distillation and pruning.

The public API is the names below, plus these modules' ``__all__``: ``kdbench.augment``
(device augmentation), ``kdbench.errors``, ``kdbench.files`` (atomic writes),
``kdbench.losses`` (reusable losses), ``kdbench.pruning`` (the pruner contract),
``kdbench.executors`` (the executor contract) and
``kdbench.testing`` (the plugin kit). Everything else may change between releases.

Names are imported on first use, so ``import kdbench`` is cheap and torch is loaded
only by what needs it (rendering and checking leaderboards never does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → the module defining it
_EXPORTS: dict[str, str] = {
    # what plugins return from the registration hooks
    "AugmentSpec": "kdbench.specs",
    "DatasetSpec": "kdbench.specs",
    "DistillerSpec": "kdbench.specs",
    "ImageData": "kdbench.specs",
    "ImageFiles": "kdbench.specs",
    "ResizedCropSpec": "kdbench.specs",
    "ModelSpec": "kdbench.specs",
    "PairSpec": "kdbench.specs",
    "PrunerSpec": "kdbench.specs",
    "Recipe": "kdbench.specs",
    "SuiteSpec": "kdbench.specs",
    "TeacherSpec": "kdbench.specs",
    "load_suite_file": "kdbench.suites",
    # the distiller contract
    "Batch": "kdbench.distiller",
    "DistillContext": "kdbench.distiller",
    "Distiller": "kdbench.distiller",
    "OptimizerSettings": "kdbench.distiller",
    "Phase": "kdbench.distiller",
    "Progress": "kdbench.distiller",
    "at_least_float32": "kdbench.distiller",
    "FeatureCapture": "kdbench.features",
    "FeatureTaps": "kdbench.features",
    "Signals": "kdbench.features",
    "feature_parameters": "kdbench.features",
    # what the lifecycle hooks receive
    "EpochRecord": "kdbench.records",
    "RunInfo": "kdbench.records",
    "RunResult": "kdbench.records",
    # plugins and registries
    "KdbenchError": "kdbench.errors",
    "PluginHost": "kdbench._plugins",
    "create_plugin_host": "kdbench._plugins",
    "hookimpl": "kdbench.hookspecs",
    "get_dataset": "kdbench._api",
    "get_distiller": "kdbench._api",
    "get_suite": "kdbench._api",
    "list_datasets": "kdbench._api",
    "list_distillers": "kdbench._api",
    "list_models": "kdbench._api",
    "list_suites": "kdbench._api",
    "create_model": "kdbench.weights",
    # plans and running them
    "Plan": "kdbench.plan",
    "PlannedRun": "kdbench.plan",
    "PruneRun": "kdbench.plan",
    "TeacherCheck": "kdbench.plan",
    "TrainRun": "kdbench.plan",
    "plan_suite": "kdbench.plan",
    "EngineOptions": "kdbench.engine",
    "RunnerOptions": "kdbench.runner",
    "run_suite": "kdbench.runner",
    "ResultsStore": "kdbench.results",
}

__all__ = [
    "AugmentSpec",
    "Batch",
    "DatasetSpec",
    "DistillContext",
    "Distiller",
    "DistillerSpec",
    "EngineOptions",
    "EpochRecord",
    "FeatureCapture",
    "FeatureTaps",
    "ImageData",
    "ImageFiles",
    "KdbenchError",
    "ModelSpec",
    "OptimizerSettings",
    "PairSpec",
    "Phase",
    "Plan",
    "PlannedRun",
    "PluginHost",
    "Progress",
    "PruneRun",
    "PrunerSpec",
    "Recipe",
    "ResizedCropSpec",
    "ResultsStore",
    "RunInfo",
    "RunResult",
    "RunnerOptions",
    "Signals",
    "SuiteSpec",
    "TeacherCheck",
    "TeacherSpec",
    "TrainRun",
    "__version__",
    "at_least_float32",
    "create_model",
    "create_plugin_host",
    "feature_parameters",
    "get_dataset",
    "get_distiller",
    "get_suite",
    "hookimpl",
    "list_datasets",
    "list_distillers",
    "list_models",
    "list_suites",
    "load_suite_file",
    "plan_suite",
    "run_suite",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what static tools see; at run time the names above load on first use
    from kdbench._api import (
        get_dataset,
        get_distiller,
        get_suite,
        list_datasets,
        list_distillers,
        list_models,
        list_suites,
    )
    from kdbench._plugins import PluginHost, create_plugin_host
    from kdbench.distiller import (
        Batch,
        DistillContext,
        Distiller,
        OptimizerSettings,
        Phase,
        Progress,
        at_least_float32,
    )
    from kdbench.engine import EngineOptions
    from kdbench.errors import KdbenchError
    from kdbench.features import FeatureCapture, FeatureTaps, Signals, feature_parameters
    from kdbench.hookspecs import hookimpl
    from kdbench.plan import Plan, PlannedRun, PruneRun, TeacherCheck, TrainRun, plan_suite
    from kdbench.records import EpochRecord, RunInfo, RunResult
    from kdbench.results import ResultsStore
    from kdbench.runner import RunnerOptions, run_suite
    from kdbench.specs import (
        AugmentSpec,
        DatasetSpec,
        DistillerSpec,
        ImageData,
        ImageFiles,
        ModelSpec,
        PairSpec,
        PrunerSpec,
        Recipe,
        ResizedCropSpec,
        SuiteSpec,
        TeacherSpec,
    )
    from kdbench.suites import load_suite_file
    from kdbench.weights import create_model
