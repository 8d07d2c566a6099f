"""The kdbench hook specifications: every way a plugin can extend kdbench.

A plugin is a module (or object) with functions marked ``@kdbench.hookimpl``
whose names are the hooks below. Installed distributions expose plugins
through entry points in group ``kdbench``; first-party plugins use the same
door. Registration hooks are called once per process and return a list of
spec objects; the lifecycle hooks are called by the engine for every run so
that loggers and trackers can be plugins.

Hook versions: every hook below is part of contract version 1
(:data:`CONTRACT_VERSION`); a change of argument names bumps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from kdbench.executors import ExecutorSpec
    from kdbench.records import EpochRecord, RunInfo, RunResult
    from kdbench.specs import DatasetSpec, DistillerSpec, ModelSpec, PrunerSpec, SuiteSpec, TeacherSpec
    from kdbench.stream import LoaderSpec

__all__ = ["CONTRACT_VERSION", "PROJECT", "hookimpl", "hookspec"]

PROJECT = "kdbench"
CONTRACT_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kdbench_register_models() -> list[ModelSpec]:
    """Return architectures usable as teacher or student.

    Each :class:`kdbench.ModelSpec` names a builder ``builder(num_classes=...)``
    that returns an ``nn.Module`` carrying ``feature_taps``.
    """


@hookspec
def kdbench_register_distillers() -> list[DistillerSpec]:
    """Return training methods (distillers) with their published defaults and citation."""


@hookspec
def kdbench_register_datasets() -> list[DatasetSpec]:
    """Return datasets with their loader, normalisation and train augmentation."""


@hookspec
def kdbench_register_pruners() -> list[PrunerSpec]:
    """Return pruning methods (importance criteria on torch-pruning, or unstructured pruners)."""


@hookspec
def kdbench_register_teachers() -> list[TeacherSpec]:
    """Return trained teachers available as checkpoint files (path, hash, reported top-1)."""


@hookspec
def kdbench_register_suites() -> list[SuiteSpec]:
    """Return benchmark suites (usually parsed from TOML files the plugin ships)."""


@hookspec
def kdbench_register_executors() -> list[ExecutorSpec]:
    """Return executors: where and how a plan's runs are started (local processes, Slurm, Ray, …).

    Each :class:`kdbench.executors.ExecutorSpec` names a builder ``builder(options)``
    returning a :class:`kdbench.executors.Executor`; ``kdbench run --executor NAME`` uses it.
    """


@hookspec
def kdbench_register_loaders() -> list[LoaderSpec]:
    """Return loaders: ways of reading a streaming dataset's batches onto the device (PIL workers, GPU decode, DALI).

    Each :class:`kdbench.stream.LoaderSpec` has ``load(request)`` yielding one uint8 batch tensor
    per batch of a :class:`kdbench.stream.StreamRequest`, transformed as the request's keys say;
    ``kdbench run --loader NAME`` (default ``auto``) picks one.
    """


@hookspec
def kdbench_run_start(run: RunInfo) -> None:
    """Called before a run trains (also when it resumes from a checkpoint)."""


@hookspec
def kdbench_epoch_end(run: RunInfo, epoch: EpochRecord) -> None:
    """Called after every epoch of a run, with that epoch's losses and test top-1."""


@hookspec
def kdbench_run_end(run: RunInfo, result: RunResult) -> None:
    """Called once a run has finished, diverged or failed."""
