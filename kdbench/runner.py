"""The runner: executes planned runs and walks a plan against a results store.

Executing a run means: build its objects through the one weights door
(:func:`kdbench.weights.create_model`), hand them to the engine, profile the model, and
write the run's result record — into its work directory (``result.json``, what a
driver collects from another process or host) and, when walking a plan, into the
results store. Each run kind has its executor; nothing is sniffed from a config.
What runs of one process share (loaded data, built teachers, profiles) lives in a
:class:`Workspace`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdbench
from kdbench._plugins import PluginHost
from kdbench.augment import num_views
from kdbench.cohort import CohortMember, train_cohort
from kdbench.distiller import Distiller
from kdbench.engine import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    EngineOptions,
    RunState,
    TrainedModel,
    calibration_batches,
    evaluate_top1,
    train,
)
from kdbench.errors import CheckpointError, KdbenchError, PluginError, ResultsStoreError
from kdbench.features import SIGNALS
from kdbench.files import atomic_write_text
from kdbench.locks import RunLock
from kdbench.plan import (
    BASELINE_METHOD,
    CheckpointWeights,
    Plan,
    PlannedRun,
    PruneRun,
    TeacherCheck,
    TrainRun,
    WeightsRef,
    plan_suite,
)
from kdbench.profile import device_name, profile_model
from kdbench.pruning import (
    ARCHITECTURE_FORMAT,
    PruneSettings,
    calibration_from_batches,
    describe_architecture,
    prune_model,
    save_pruned,
    sparsity,
)
from kdbench.records import RunInfo, RunResult
from kdbench.results import RESULT_FILE, RESULT_STATUSES, ResultsStore, read_result_file
from kdbench.schedule import MethodTraits, Schedule, ScheduleOptions, TableCost, make_schedule
from kdbench.specs import DatasetSpec, ImageData, ImageFiles, SuiteSpec
from kdbench.table import TeacherTable, build_table, table_key, weights_digest
from kdbench.weights import create_model

__all__ = [
    "PRUNED_NAME",
    "RESULT_NAME",
    "RunnerOptions",
    "SuiteReport",
    "Workspace",
    "data_digest",
    "execute_cohort",
    "execute_run",
    "import_run_directories",
    "kdbench_source",
    "method_traits",
    "pending_runs",
    "run_plan",
    "run_suite",
    "schedule_runs",
    "store_blocked",
    "stored_results",
    "train_state",
]

PRUNED_NAME = "pruned.pt"
#: The run's result record, written in its work directory when it ends (finished, diverged or failed).
RESULT_NAME = RESULT_FILE
#: Gradient importances (Taylor, SSA) are calibrated on this many train batches of this size.
CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 64


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """Where data, teachers, checkpoints and results live, and how runs execute."""

    data_root: Path = Path("data")
    teacher_root: Path = Path("teachers")
    work_root: Path = Path("runs")
    download: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    teacher_overrides: dict[str, str] = field(default_factory=dict)
    latency_batch_sizes: tuple[int, ...] = (1, 256)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    """Cohorts and teacher tables (how runs execute; never what they compute)."""


def _git(source: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def kdbench_source() -> tuple[str, str]:
    """Return (commit, state) of the kdbench code that runs: its own git checkout's HEAD, never the cwd's.

    ``state`` is ``clean`` or ``modified`` (tracked files of kdbench changed since the commit) for a git
    checkout, and ``installed`` (commit empty) for a package installed from elsewhere.
    """
    source = Path(kdbench.__file__).resolve().parents[1]
    top = _git(source, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != source or not (source / "pyproject.toml").is_file():
        return "", "installed"
    changed = _git(source, "status", "--porcelain", "--untracked-files=no", "--", "kdbench", "plugins")
    return _git(source, "rev-parse", "HEAD"), "modified" if changed else "clean"


def _versions(host: PluginHost) -> dict[str, Any]:
    plugins = {p.name: p.version for p in host.plugins if p.status == "loaded"}
    return {
        "kdbench": kdbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": dict(sorted(plugins.items())),
    }


def data_digest(data: ImageData | ImageFiles, root: Path | None = None) -> str:
    """Return the SHA-256 (first 16 hex digits) of a dataset as loaded: its pixels and labels, or, streamed,
    its file names (relative to ``root``) and labels."""
    digest = hashlib.sha256()
    if isinstance(data, ImageFiles):
        prefix = f"{Path(root).expanduser().resolve()}{os.sep}" if root is not None else ""
        for files in (data.train_files, data.test_files):
            names = (f.removeprefix(prefix) for f in files)
            digest.update("\n".join(names).encode() + b"\0")
        tensors = (data.train_labels, data.test_labels)
    else:
        tensors = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    for tensor in tensors:
        digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()[:16]


class Workspace:
    """What the runs of one process share: plugins, options, loaded data, built teachers, profiles."""

    def __init__(self, host: PluginHost, options: RunnerOptions) -> None:
        self.host = host
        self.options = options
        self.device = options.engine.device
        self._data: dict[str, ImageData | ImageFiles] = {}
        self._teachers: dict[WeightsRef, TrainedModel] = {}
        self._profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self._provenance: dict[str, dict[str, Any]] = {}
        self._device_data: dict[str, ImageData | ImageFiles] = {}
        self._tables: dict[tuple[WeightsRef, str], TeacherTable] = {}
        self._sizes: dict[tuple[str, str], int] = {}
        self.schedule = Schedule()
        self.commit, source = kdbench_source()
        self.versions = {**_versions(host), "kdbench_source": source}
        self.device_name = device_name(self.device)

    def dataset(self, name: str) -> DatasetSpec:
        """Return the spec of dataset ``name``."""
        return self.host.datasets.get(name)

    def data(self, name: str) -> ImageData | ImageFiles:
        """Return dataset ``name``, loaded once per process (missing data raises DataNotFoundError)."""
        if name not in self._data:
            spec = self.dataset(name)
            data = spec.loader(self.options.data_root, self.options.download)
            if isinstance(data, ImageFiles) != spec.streaming:
                raise PluginError(
                    f"dataset {name}: its loader returned {type(data).__name__}, which does not fit its "
                    f"{type(spec.augment).__name__} (ImageData goes with AugmentSpec, ImageFiles with "
                    "ResizedCropSpec); fix the plugin"
                )
            self._data[name] = data
            self._provenance[name] = {"digest": data_digest(data, self.options.data_root), "verified": data.verified}
        return self._data[name]

    def device_data(self, name: str) -> ImageData | ImageFiles:
        """Return dataset ``name`` on the training device, moved once per process (runs of a cohort share it).

        A streamed dataset keeps its files where they are; only its labels move.
        """
        if name not in self._device_data:
            data = self.data(name)
            if isinstance(data, ImageFiles):
                self._device_data[name] = replace(
                    data, train_labels=data.train_labels.to(self.device), test_labels=data.test_labels.to(self.device)
                )
                return self._device_data[name]
            self._device_data[name] = ImageData(
                train_images=data.train_images.to(self.device),
                train_labels=data.train_labels.to(self.device),
                test_images=data.test_images.to(self.device),
                test_labels=data.test_labels.to(self.device),
                verified=data.verified,
            )
        return self._device_data[name]

    def method_traits(self, method: str) -> MethodTraits:
        """Return whether method ``method`` can train in a cohort and what it reads of the teacher."""
        return method_traits(self.host.distillers.get(method).builder)

    def table_cost(self, run: TrainRun) -> TableCost:
        """Return the size of the teacher table ``run`` would read (views per image, bytes)."""
        spec, data = self.dataset(run.dataset), self.data(run.dataset)
        views = num_views(spec.augment.pad, spec.augment.flip)
        return TableCost(views, views * data.train_images.shape[0] * spec.num_classes * 4)

    def member_bytes(self, run: TrainRun) -> int:
        """Return what a run holds in a cohort besides activations: weights, gradients, momentum (×4 as slack)."""
        key = (run.dataset, _base_arch(run.model))
        if key not in self._sizes:
            model = create_model(key[1], self.dataset(run.dataset).num_classes, host=self.host)
            self._sizes[key] = sum(p.numel() for p in model.parameters()) * 4 * 4
        return self._sizes[key]

    def table(self, run: TrainRun) -> TeacherTable:
        """Return the table of ``run``'s teacher on its dataset, opened or built once (teacher cache)."""
        assert run.teacher is not None
        key = (run.teacher, run.dataset)
        if key not in self._tables:
            teacher, data, spec = (
                self.teacher(run.teacher, run.dataset),
                self.data(run.dataset),
                self.dataset(run.dataset),
            )
            name = table_key(weights_digest(teacher.module), self._provenance[run.dataset]["digest"], spec)
            root = self.options.teacher_root / "tables"
            self._tables[key] = build_table(teacher.module, data.train_images, spec, root, name, device=self.device)
        return self._tables[key]

    def weights_file(self, ref: WeightsRef, missing: str = "it must finish first") -> str | Path:
        """Return what ``create_model(weights=…)`` reads for ``ref``; a run's weights must exist already."""
        if isinstance(ref, CheckpointWeights):
            return ref.source
        path = self.options.work_root / ref.run / FINAL_NAME
        if not path.is_file():
            raise CheckpointError(f"run {ref.run} ({ref.arch}) has no weights at {path}; {missing}")
        return path

    def model(self, ref: WeightsRef, dataset: str, missing: str = "it must finish first") -> nn.Module:
        """Return a new model holding the weights ``ref`` names (a pruned model keeps its architecture)."""
        return create_model(
            _base_arch(ref.arch),
            self.dataset(dataset).num_classes,
            weights=self.weights_file(ref, missing),
            teacher_root=self.options.teacher_root,
            host=self.host,
        )

    def teacher(self, ref: WeightsRef, dataset: str) -> TrainedModel:
        """Return the frozen teacher ``ref`` names on the device, built once per process."""
        if ref not in self._teachers:
            module = self.model(ref, dataset).to(self.device).eval().requires_grad_(False)
            self._teachers[ref] = TrainedModel(ref.arch, module)
        return self._teachers[ref]

    def profile(self, model: nn.Module, dataset: str, extra_params: int, cache_as: str | None = None) -> dict[str, Any]:
        """Return the profile of ``model`` (a copy is measured); with ``cache_as``, measured once per name."""
        key = (dataset, cache_as or "")
        if cache_as is None or key not in self._profiles:
            measured = profile_model(
                copy.deepcopy(model),
                self.dataset(dataset).image_size,
                device=self.device,
                batch_sizes=self.options.latency_batch_sizes,
            )
            if cache_as is None:
                return {**measured.to_dict(), "extra_params": extra_params}
            self._profiles[key] = measured.to_dict()
        return {**self._profiles[key], "extra_params": extra_params}

    def registry_profile(self, arch: str, dataset: str, extra_params: int) -> dict[str, Any]:
        """Return the profile of registered architecture ``arch`` (a fresh model, measured once per process)."""
        if (dataset, arch) not in self._profiles:
            model = create_model(arch, self.dataset(dataset).num_classes, host=self.host)
            return self.profile(model, dataset, extra_params, cache_as=arch)
        return {**self._profiles[(dataset, arch)], "extra_params": extra_params}

    def environment(self, dataset: str) -> dict[str, Any]:
        """Return what produced a run besides its config: versions, kdbench's source, CPU threads, the data."""
        environment = {**self.versions, "threads": torch.get_num_threads()}
        if dataset in self._provenance:
            environment["data"] = dict(self._provenance[dataset])
        return environment

    def record(
        self,
        suite: str,
        run: PlannedRun,
        result: RunResult,
        profile: dict[str, Any] | None,
        execution: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Return the result record of ``run`` (the store's row, complete with provenance).

        ``execution`` (how it ran: its cohort's size, the teacher table it read) goes into its environment.
        """
        return {
            "run_id": run.run_id,
            "suite": suite,
            "kind": run.role,
            "status": result.status,
            "config": run.to_config(),
            "best_top1": result.best_top1,
            "last_top1": result.last_top1,
            "best_epoch": result.best_epoch,
            "curve": [
                {
                    "epoch": e.epoch,
                    "lr": e.lr,
                    "losses": dict(e.losses),
                    "test_top1": e.test_top1,
                    "seconds": e.seconds,
                    "phase": e.phase,
                    **({"throughput": dict(e.throughput)} if e.throughput else {}),
                }
                for e in result.curve
            ],
            "profile": profile,
            "wall_seconds": round(result.wall_seconds, 3),
            "versions": {**self.environment(run.dataset), **({"execution": execution} if execution else {})},
            "device": self.device_name,
            "git_commit": self.commit,
            "error": result.error,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def method_traits(builder: Any) -> MethodTraits:
    """Return what a distiller builder's class says of lockstep training and teacher signals.

    A builder that is a :class:`~kdbench.Distiller` subclass (or a ``functools.partial`` of one)
    is read from its class: lockstep when it overrides neither ``prepare_batch`` nor ``phases``.
    Any other builder is taken as not lockstep (it trains alone, which is always exact).
    """
    while isinstance(builder, functools.partial):
        builder = builder.func
    if not (isinstance(builder, type) and issubclass(builder, Distiller)):
        return MethodTraits(lockstep=False, teacher_signals=SIGNALS)
    lockstep = builder.prepare_batch is Distiller.prepare_batch and builder.phases is Distiller.phases
    signals = builder.teacher_signals if builder.signals is Distiller.signals else SIGNALS
    return MethodTraits(lockstep=lockstep, teacher_signals=frozenset(signals))


def _base_arch(arch: str) -> str:
    """Return the registered architecture a (possibly derived) model is built from."""
    from kdbench.derived import parse_derived

    derived = parse_derived(arch)
    return derived.base if derived else arch


def _info(run: PlannedRun, workspace: Workspace) -> RunInfo:
    return RunInfo(run.run_id, run.to_config(), workspace.options.work_root / run.run_id, workspace.device_name)


# ---------------------------------------------------------------------------------------------------------------------
# One executor per run kind


Outcome = tuple[RunResult, "dict[str, Any] | None"]


def _check_teacher(run: TeacherCheck, workspace: Workspace) -> Outcome:
    """Evaluate the checkpoint (students wait for this: it fails exactly when loading it would)."""
    teacher = workspace.teacher(run.weights, run.dataset)
    dataset, data = workspace.dataset(run.dataset), workspace.data(run.dataset)
    top1 = evaluate_top1(teacher.module, dataset, data, _options(workspace))
    result = RunResult(status="finished", best_top1=top1, last_top1=top1, best_epoch=None)
    return result, workspace.registry_profile(run.model, run.dataset, result.extra_params)


def _options(workspace: Workspace) -> EngineOptions:
    return workspace.options.engine


def _initial_student(run: TrainRun, workspace: Workspace) -> tuple[nn.Module, dict[str, Any] | None]:
    """Return the run's initial student (seeded as the engine expects) and what its final weights need beside them.

    The global RNG is seeded with the run's seed right before the student is built (so
    the distiller the engine builds next continues from there); a student loaded from a
    pruned model is followed by a fresh seed instead (its loading draws nothing the run uses).
    """
    classes = workspace.dataset(run.dataset).num_classes
    if run.init is None:
        torch.manual_seed(run.seed)
        return create_model(run.model, classes, host=workspace.host), None
    path = workspace.options.work_root / run.init.prune_run / PRUNED_NAME
    if not path.is_file():
        raise CheckpointError(f"derived student {run.model}: no pruned model at {path}")
    base = _base_arch(run.model)
    door = functools.partial(create_model, base, classes, host=workspace.host)
    if run.init.weights == "scratch":
        torch.manual_seed(run.seed)
        student = door(architecture=path)
    else:
        student = door(weights=path)
    torch.manual_seed(run.seed)
    extras = {"format": ARCHITECTURE_FORMAT, "arch": base, "num_classes": classes}
    return student, {**extras, "architecture": describe_architecture(student)}


def train_state(run: TrainRun, workspace: Workspace) -> tuple[RunState, dict[str, Any] | None]:
    """Return the engine state of ``run`` (its teacher, seeded student and distiller, data, recipe).

    Also returns what the final weights need beside them (a derived student's pruned architecture).
    """
    teacher = workspace.teacher(run.teacher, run.dataset) if run.teacher else None
    table = workspace.table(run) if run.run_id in workspace.schedule.table_runs else None
    student, extras = _initial_student(run, workspace)
    spec = workspace.host.distillers.get(run.method)
    state = RunState(
        student,
        functools.partial(spec.builder, **run.params),
        teacher,
        run.recipe,
        run.seed,
        workspace.dataset(run.dataset),
        workspace.device_data(run.dataset),
        _options(workspace),
        student_name=run.model,
        identity=run.to_config(),
        teacher_table=table,
    )
    return state, extras


def _train(run: TrainRun, workspace: Workspace) -> Outcome:
    state, extras = train_state(run, workspace)
    label = f"{run.method}:{run.model} s{run.seed}"
    result = train(_info(run, workspace), state, workspace.host, extras, label=label)
    return result, _student_profile(run, state, workspace, result.extra_params)


def _student_profile(run: TrainRun, state: RunState, workspace: Workspace, extra_params: int) -> dict[str, Any]:
    """Return the profile of a trained student: its registered architecture's, or (derived) its own."""
    if run.init is None:
        return workspace.registry_profile(run.model, run.dataset, extra_params)
    return workspace.profile(state.student, run.dataset, extra_params)


def _keep_zeros(model: nn.Module) -> None:
    """Mask the gradients of pruned (zero) conv/linear weights so fine-tuning keeps them at zero.

    With plain SGD (weight decay and momentum included) a weight whose gradient is
    always zero stays exactly zero, so an unstructured pruning survives fine-tuning.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = (module.weight.detach() != 0).to(module.weight.dtype)
            module.weight.register_hook(lambda grad, mask=mask: grad * mask)


def _source_model(run: PruneRun, workspace: Workspace) -> nn.Module:
    """Return a trainable copy of the model the run prunes (a checked teacher, or a trained run's weights)."""
    if isinstance(run.source, CheckpointWeights):
        return copy.deepcopy(workspace.teacher(run.source, run.dataset).module).requires_grad_(True)
    return workspace.model(run.source, run.dataset, missing="delete its stored result to train it again")


def _prune(run: PruneRun, workspace: Workspace) -> Outcome:
    """Prune the run's source model, evaluate it, fine-tune it if asked; return the result and its profile."""
    options, dataset, data = _options(workspace), workspace.dataset(run.dataset), workspace.data(run.dataset)
    torch.manual_seed(run.seed)
    model = _source_model(run, workspace).to(workspace.device)
    before = {"top1": evaluate_top1(model, dataset, data, options), "profile": workspace.profile(model, run.dataset, 0)}
    example = torch.zeros(1, *dataset.image_size, device=workspace.device)
    batches = calibration_batches(data, dataset, options, CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE)
    calibration = calibration_from_batches(batches, F.cross_entropy)
    settings = PruneSettings(**run.settings)
    model = prune_model(workspace.host, model, run.pruner, run.params, example, settings, calibration)
    info = _info(run, workspace)
    info.work_dir.mkdir(parents=True, exist_ok=True)
    save_pruned(model, run.base_arch, dataset.num_classes, info.work_dir / PRUNED_NAME)
    after_prune = evaluate_top1(model, dataset, data, options)
    result = RunResult(status="finished", best_top1=after_prune, last_top1=after_prune)
    if not workspace.host.pruners.get(run.pruner).structured:
        _keep_zeros(model)
    if run.finetune_epochs > 0:
        torch.manual_seed(run.seed)
        baseline = workspace.host.distillers.get(BASELINE_METHOD)
        factory = functools.partial(baseline.builder, **baseline.defaults)
        recipe = run.finetune_recipe
        state = RunState(
            model, factory, None, recipe, run.seed, dataset, data, options, student_name=run.model,
            identity=run.to_config(),
        )  # fmt: skip
        extras = {"format": ARCHITECTURE_FORMAT, "arch": run.base_arch, "num_classes": dataset.num_classes}
        extras["architecture"] = describe_architecture(model)
        result = train(info, state, workspace.host, extras, label=f"finetune:{run.model} s{run.seed}")
    pruning = {"top1_before": before["top1"], "top1_after_prune": after_prune, "before": before["profile"]}
    pruning["sparsity"] = round(sparsity(model), 6)
    return result, {**workspace.profile(model, run.dataset, 0), "pruning": pruning}


_EXECUTORS: dict[type, Callable[[Any, Workspace], Outcome]] = {
    TrainRun: _train,
    TeacherCheck: _check_teacher,
    PruneRun: _prune,
}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KdbenchError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def execute_run(run: PlannedRun, workspace: Workspace, suite: str, store: ResultsStore | None = None) -> dict[str, Any]:
    """Execute ``run`` (its required runs' outputs must be in the work root); return its result record.

    Failures are recorded, not raised (except KeyboardInterrupt). The record is written to
    ``WORK_ROOT/RUN_ID/result.json`` (and put in ``store`` if given); a run that did not
    fail then drops its resume checkpoint, and observers get ``kdbench_run_end``.
    """
    profile = None
    try:
        result, profile = _EXECUTORS[type(run)](run, workspace)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # isolate the failure: record it, let the suite go on
        result = RunResult(status="failed", error=_error_text(exc))
    return _conclude(run, result, profile, workspace, suite, store, _execution(run, workspace, 1))


def _execution(run: PlannedRun, workspace: Workspace, cohort: int) -> dict[str, Any] | None:
    """Return how ``run`` executed, for its record: its cohort's size and the teacher table it read (if any)."""
    execution: dict[str, Any] = {"cohort": cohort} if cohort > 1 else {}
    engine = workspace.options.engine
    switches = [name for name in ("bf16", "channels_last", "fused_sgd") if getattr(engine, name)]
    if switches:  # speed switches that change rounding (bf16 changes precision)
        execution["switches"] = switches
    if isinstance(run, TrainRun) and run.run_id in workspace.schedule.table_runs and run.teacher is not None:
        execution["teacher_table"] = workspace.table(run).path.stem
    if engine.distributed:  # BatchNorm statistics per process: numbers differ from one process's
        execution["processes"] = engine.world_size
    if workspace.dataset(run.dataset).streaming:  # pixels differ between loaders by rounding
        execution["loader"] = engine.loader_name
    return execution or None


def _conclude(
    run: PlannedRun,
    result: RunResult,
    profile: dict[str, Any] | None,
    workspace: Workspace,
    suite: str,
    store: ResultsStore | None,
    execution: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the record of a run that ended (run directory, store), drop its resume checkpoints, notify."""
    record = workspace.record(suite, run, result, profile, execution)
    info = _info(run, workspace)
    if not workspace.options.engine.writes:  # another rank of a distributed run writes it
        return record
    info.work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(info.work_dir / RESULT_NAME, json.dumps(record, sort_keys=True, indent=1) + "\n")
    if store is not None:
        store.put(record)
    if result.status != "failed":  # the result is kept: no resume needed
        for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
            (info.work_dir / name).unlink(missing_ok=True)
    try:
        workspace.host.notify("kdbench_run_end", run=info, result=result)
    except PluginError as exc:  # the result is recorded: an observer's failure must not stop the suite
        print(f"kdbench: warning: run {run.run_id}: {exc} (its result is stored)", file=sys.stderr)
    return record


def execute_cohort(
    runs: Sequence[TrainRun], workspace: Workspace, suite: str, store: ResultsStore | None = None
) -> list[dict[str, Any]]:
    """Train ``runs`` (one teacher, seed, dataset and recipe) as a cohort; return their records, in order.

    Each member is built as for a solo run (global RNG seeded right before its student), so
    each ends with its solo numbers; one that fails to build, raises or diverges does not
    stop the others. Records, run directories and notifications are as :func:`execute_run`'s.
    """
    members: list[tuple[TrainRun, CohortMember]] = []
    outcomes: dict[str, RunResult | BaseException] = {}
    for run in runs:
        try:
            state, extras = train_state(run, workspace)
            members.append((run, CohortMember(_info(run, workspace), state, extras)))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            outcomes[run.run_id] = exc
    if members:
        trained = train_cohort([member for _, member in members], workspace.host)
        outcomes.update({run.run_id: outcome for (run, _), outcome in zip(members, trained)})
    states = {run.run_id: member.state for run, member in members}
    records = []
    for run in runs:
        outcome, profile = outcomes[run.run_id], None
        if isinstance(outcome, BaseException):
            result = RunResult(status="failed", error=_error_text(outcome))
        else:
            result = outcome
            profile = _student_profile(run, states[run.run_id], workspace, result.extra_params)
        execution = _execution(run, workspace, len(runs))
        records.append(_conclude(run, result, profile, workspace, suite, store, execution))
    return records


@dataclass(frozen=True, slots=True)
class SuiteReport:
    """What a suite invocation did: run ids per outcome.

    ``elsewhere``: runs another process finished (or failed) while this one waited for them;
    ``imported``: results found in run directories (``result.json``) and added to the store.
    """

    skipped: tuple[str, ...]
    finished: tuple[str, ...]
    diverged: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    elsewhere: tuple[str, ...] = ()
    imported: tuple[str, ...] = ()
    waiting_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Failed run id → the runs that could not run because they need it (stored as failed too)."""


def _outputs_present(run: PlannedRun, work_root: Path) -> bool:
    """Return whether the files later runs read from ``run`` are in its work directory."""
    if isinstance(run, PruneRun):
        return (work_root / run.run_id / PRUNED_NAME).is_file()
    if isinstance(run, TrainRun):
        return (work_root / run.run_id / FINAL_NAME).is_file()
    return True


def _run_directory_result(run: PlannedRun, work_root: Path) -> dict[str, Any] | None:
    """Return the record ``run`` left in its work directory, or None (a malformed one is reported and ignored)."""
    try:
        return read_result_file(work_root / run.run_id)
    except ResultsStoreError as exc:
        print(f"kdbench: warning: {exc}; the run is treated as not run", file=sys.stderr)
        return None


def stored_results(plan: Plan, store: ResultsStore | None, work_root: Path) -> dict[str, dict[str, Any]]:
    """Return run id → record of every run of ``plan`` with a result (finished or diverged).

    Results come from the store and from the runs' work directories (``result.json``), so a lost or
    new store does not retrain what the run directories hold.
    """
    stored = {}
    for run in plan:
        record = store.get(run.run_id) if store is not None else None
        if record is None or record["status"] not in RESULT_STATUSES:
            record = _run_directory_result(run, work_root)
        if record is not None and record["status"] in RESULT_STATUSES:
            stored[run.run_id] = record
    return stored


def pending_runs(plan: Plan, done: set[str], work_root: Path) -> list[PlannedRun]:
    """Return the runs to execute, in plan order: those without a result, and the done runs whose files a
    pending run reads but that are missing (a teacher's weights after ``runs/`` was deleted).
    """
    by_id = {run.run_id: run for run in plan}
    pending = {run.run_id for run in plan if run.run_id not in done}
    frontier = list(pending)
    while frontier:
        for needed in by_id[frontier.pop()].requires:
            if needed in by_id and needed not in pending and not _outputs_present(by_id[needed], work_root):
                pending.add(needed)
                frontier.append(needed)
    return [run for run in plan if run.run_id in pending]


def store_blocked(
    run: PlannedRun,
    needed: str,
    why: str,
    workspace: Workspace,
    plan: Plan,
    store: ResultsStore,
    waiting_on: dict[str, list[str]],
) -> str:
    """Store ``run`` as failed because run ``needed`` failed (``why``), without running it; return the error.

    ``waiting_on`` (failed run → the runs that could not run because of it) gets ``run`` under the
    first failure of its chain, so a report names one root per failure.
    """
    result = RunResult(status="failed", error=f"needed run {needed} failed: {why}")
    store.put(workspace.record(plan.suite.name, run, result, None))
    root = next((origin for origin, runs in waiting_on.items() if needed == origin or needed in runs), needed)
    waiting_on.setdefault(root, []).append(run.run_id)
    return result.error


class _Walk:
    """One driver's walk over the pending runs of a plan, sharing store and run directories with others."""

    def __init__(self, plan: Plan, workspace: Workspace, store: ResultsStore, pending: list[PlannedRun]) -> None:
        self.plan, self.workspace, self.store = plan, workspace, store
        self.work_root = workspace.options.work_root
        self.waiting = list(pending)
        self.outcome: dict[str, list[Any]] = {"finished": [], "diverged": [], "failed": [], "elsewhere": []}
        self.unusable: dict[str, str] = {}  # run id → why runs needing it cannot go on
        self.waiting_on: dict[str, list[str]] = {}
        self.status: dict[str, str] = {}
        self.started_ns = time.time_ns()

    def ready(self) -> list[PlannedRun]:
        """Return the waiting runs whose required runs are all settled, in plan order."""
        waiting = {run.run_id for run in self.waiting}
        return [run for run in self.waiting if not any(needed in waiting for needed in run.requires)]

    def step(self, blocking: bool) -> list[PlannedRun]:
        """Settle one ready run whose lock is free (or wait for the first one's) with the ready runs of its
        cohort whose locks are free; return them (empty: nothing was ready)."""
        for run in self.ready():
            blocked = next((needed for needed in run.requires if needed in self.unusable), None)
            if blocked is not None:
                self._blocked(run, blocked)
                return [run]
            lock = RunLock(self.work_root / run.run_id)
            if not lock.acquire(blocking=blocking):
                continue  # another driver is on it: come back later
            group = [(run, lock), *self._cohort_mates(run)]
            try:
                self._settle([member for member, _ in group])
            finally:
                for _, member_lock in group:
                    member_lock.release()
            return [member for member, _ in group]
        return []

    def _cohort_mates(self, run: PlannedRun) -> list[tuple[PlannedRun, RunLock]]:
        """Return the other ready runs of ``run``'s cohort that no run failure blocks, with their locks taken."""
        cohort = set(self.workspace.schedule.cohort_of(run.run_id)) - {run.run_id}
        mates = []
        for mate in self.ready():
            if mate.run_id in cohort and not any(needed in self.unusable for needed in mate.requires):
                lock = RunLock(self.work_root / mate.run_id)
                if lock.acquire(blocking=False):
                    mates.append((mate, lock))
        return mates

    def _blocked(self, run: PlannedRun, needed: str) -> None:
        error = store_blocked(
            run, needed, self.unusable[needed], self.workspace, self.plan, self.store, self.waiting_on
        )
        self._done(run, "failed", error, count=False)

    def _settle(self, runs: list[PlannedRun]) -> None:
        """Execute ``runs`` (their locks held; several: a cohort), except those another driver settled meanwhile."""
        todo = []
        for run in runs:
            record = self._settled_elsewhere(run)
            if record is None:
                todo.append(run)
                continue
            self.store.put(record)
            self.outcome["elsewhere"].append(run.run_id)
            self._done(run, record["status"], record["error"], count=False)
        suite = self.plan.suite.name
        if len(todo) > 1:
            records = execute_cohort(todo, self.workspace, suite, self.store)  # type: ignore[arg-type]
        else:
            records = [execute_run(run, self.workspace, suite, self.store) for run in todo]
        for run, record in zip(todo, records):
            self._done(run, record["status"], record["error"])

    def _settled_elsewhere(self, run: PlannedRun) -> dict[str, Any] | None:
        """Return the record another process left for ``run`` since this walk started (a result or a failure)."""
        record = _run_directory_result(run, self.work_root)
        if record is None:
            return None
        if record["status"] in RESULT_STATUSES and _outputs_present(run, self.work_root):
            return record
        # A failure from before this walk is retried; one written by a driver running beside us is not.
        written = (self.work_root / run.run_id / RESULT_FILE).stat().st_mtime_ns
        return record if record["status"] == "failed" and written >= self.started_ns else None

    def _done(self, run: PlannedRun, status: str, error: str, count: bool = True) -> None:
        self.waiting.remove(run)
        self.status[run.run_id] = status
        if status != "finished":
            self.unusable[run.run_id] = error or status
        if count:
            self.outcome["failed" if status == "failed" else status].append(
                (run.run_id, error) if status == "failed" else run.run_id
            )


def schedule_runs(runs: Sequence[PlannedRun], workspace: Workspace, data_loaded: bool = True) -> Schedule:
    """Return how ``runs`` execute under the workspace's schedule options (cohorts, teacher tables).

    Teacher tables hold fp32 logits, so bf16 training reads none. Without ``data_loaded`` (a dry
    run) a table's size is not known and only its views count.
    """
    options = workspace.options.schedule
    if workspace.options.engine.bf16 and options.teacher_table != "off":
        options = replace(options, teacher_table="off")
    streamed = sorted({run.dataset for run in runs if workspace.dataset(run.dataset).streaming})
    if streamed and options.teacher_table != "off":
        if options.teacher_table == "on":
            raise KdbenchError(
                f"--teacher-table on: {', '.join(streamed)} streams from disk, and its random resized crops are "
                "too many views to tabulate; use --teacher-table auto or off"
            )
        options = replace(options, teacher_table="off")

    def table_cost(run: TrainRun) -> TableCost:
        if data_loaded:
            return workspace.table_cost(run)
        augment = workspace.dataset(run.dataset).augment
        return TableCost(num_views(augment.pad, augment.flip), 0)

    return make_schedule(runs, workspace.method_traits, options, workspace.member_bytes, table_cost)


def import_run_directories(plan: Plan, store: ResultsStore, work_root: Path) -> tuple[str, ...]:
    """Store the results run directories hold that the store lacks; return their run ids."""
    known = store.finished_ids()
    found = stored_results(plan, None, work_root)
    imported = []
    for run_id, record in found.items():
        if run_id not in known and store.put(record):
            imported.append(run_id)
    return tuple(imported)


def run_plan(
    plan: Plan,
    host: PluginHost,
    store: ResultsStore,
    options: RunnerOptions,
    on_run: Callable[[PlannedRun, str], None] | None = None,
) -> SuiteReport:
    """Execute every run of ``plan`` without a result, in DAG order; store each record; return what happened.

    Results in run directories the store lacks are imported first. Each run is executed under its
    run lock, so drivers sharing a store and work directory train every run once: a run locked by
    another driver is left for later, and waited for when nothing else is ready. The datasets are
    loaded before the first run, so missing data stops at once with one clear error. A run whose
    required run failed is stored as failed without running.
    """
    imported = import_run_directories(plan, store, options.work_root)
    done = set(stored_results(plan, store, options.work_root))
    pending = pending_runs(plan, done, options.work_root)
    workspace = Workspace(host, options)
    for dataset in dict.fromkeys(run.dataset for run in pending):
        workspace.data(dataset)
    workspace.schedule = schedule_runs(pending, workspace)
    pending_ids = {run.run_id for run in pending}
    walk = _Walk(plan, workspace, store, pending)
    from tqdm.auto import tqdm

    with tqdm(
        total=len(pending), desc=f"suite {plan.suite.name}", unit="run", disable=not options.engine.progress
    ) as bar:
        while walk.waiting:
            settled = walk.step(blocking=False) or walk.step(blocking=True)
            if not settled:  # pragma: no cover - every waiting run has a ready ancestor
                raise KdbenchError(f"plan {plan.suite.name}: runs {[r.run_id for r in walk.waiting]} can never run")
            for run in settled:
                bar.update(1)
                bar.set_postfix_str(run.label)
                if on_run:
                    on_run(run, walk.status[run.run_id])
    return SuiteReport(
        skipped=tuple(run.run_id for run in plan if run.run_id not in pending_ids),
        finished=tuple(walk.outcome["finished"]),
        diverged=tuple(walk.outcome["diverged"]),
        failed=tuple(walk.outcome["failed"]),
        elsewhere=tuple(walk.outcome["elsewhere"]),
        imported=imported,
        waiting_on={run_id: tuple(runs) for run_id, runs in walk.waiting_on.items()},
    )


def run_suite(
    suite: SuiteSpec,
    host: PluginHost,
    store: ResultsStore,
    options: RunnerOptions,
    runs: Sequence[PlannedRun] | Plan | None = None,
    on_run: Callable[[PlannedRun, str], None] | None = None,
) -> SuiteReport:
    """Plan ``suite`` (or take ``runs``) and execute every run not already stored (see :func:`run_plan`)."""
    if isinstance(runs, Plan):
        plan = runs
    else:
        plan = plan_suite(suite, host, options.teacher_overrides)
        if runs is not None:
            plan = plan.with_runs(runs)
    return run_plan(plan, host, store, options, on_run)
