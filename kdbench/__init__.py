"""kdbench: a plugin-based benchmark harness for knowledge distillation and pruning.

Only the names below are public; everything else may change between releases.
"""

from __future__ import annotations

from kdbench._api import (
    create_model,
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
from kdbench.errors import KdbenchError
from kdbench.features import FeatureCapture, FeatureTaps, Signals, feature_parameters
from kdbench.hookspecs import hookimpl
from kdbench.records import EpochRecord, RunInfo, RunResult
from kdbench.specs import (
    AugmentSpec,
    DatasetSpec,
    DistillerSpec,
    ImageData,
    ModelSpec,
    PairSpec,
    PrunerSpec,
    Recipe,
    SuiteSpec,
    TeacherSpec,
)
from kdbench.suites import load_suite_file

__version__ = "0.1.0"

__all__ = [
    "AugmentSpec",
    "Batch",
    "DatasetSpec",
    "DistillContext",
    "Distiller",
    "DistillerSpec",
    "EpochRecord",
    "FeatureCapture",
    "FeatureTaps",
    "ImageData",
    "KdbenchError",
    "ModelSpec",
    "OptimizerSettings",
    "PairSpec",
    "Phase",
    "PluginHost",
    "Progress",
    "PrunerSpec",
    "Recipe",
    "RunInfo",
    "RunResult",
    "Signals",
    "SuiteSpec",
    "TeacherSpec",
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
]
