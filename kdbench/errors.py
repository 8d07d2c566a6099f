"""Errors a user can cause. The CLI prints them in one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataNotFoundError",
    "DuplicateNameError",
    "KdbenchError",
    "PlanError",
    "PluginError",
    "ResultsStoreError",
    "SuiteError",
    "UnknownNameError",
]


class KdbenchError(Exception):
    """Base class of every error kdbench reports to a user without a traceback."""


class PluginError(KdbenchError):
    """A plugin failed to import, broke the hook contract, or raised in a hook."""


class DuplicateNameError(KdbenchError):
    """Two plugins registered the same name in one registry."""


class UnknownNameError(KdbenchError):
    """A model, distiller, dataset, suite or teacher name is not registered."""


class SuiteError(KdbenchError):
    """A suite file or definition is malformed."""


class PlanError(KdbenchError):
    """A serialised plan (or a run config in it) is malformed, edited by hand, or from another version."""


class DataNotFoundError(KdbenchError):
    """A dataset is not on disk and cannot be downloaded, or one of its files cannot be read."""


class CheckpointError(KdbenchError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class ResultsStoreError(KdbenchError):
    """The results database is corrupt, foreign or unwritable."""
