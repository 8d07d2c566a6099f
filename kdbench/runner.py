"""The runner: expands a suite into runs with stable ids, trains what is missing, stores every result."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import inspect
import json
import platform
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdbench
from kdbench._plugins import PluginHost
from kdbench.augment import normalize
from kdbench.derived import parse_derived
from kdbench.engine import CHECKPOINT_NAME, FINAL_NAME, EngineOptions, TrainedModel, evaluate, load_state, train_run
from kdbench.errors import CheckpointError, KdbenchError, PluginError, UnknownNameError
from kdbench.profile import device_name, profile_model
from kdbench.pruning import (
    PruneSettings,
    describe_architecture,
    load_pruned,
    prune_model,
    rebuild,
    save_pruned,
    sparsity,
)
from kdbench.records import RunInfo, RunResult
from kdbench.results import ResultsStore
from kdbench.specs import DatasetSpec, ImageData, PairSpec, Recipe, SuiteSpec

__all__ = ["PlannedRun", "RunnerOptions", "SuiteReport", "plan_suite", "run_id_of", "run_suite", "select_runs"]

CONFIG_VERSION = 1
PRUNED_NAME = "pruned.pt"


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """One run of a suite: its id, role (teacher, student, prune), resolved config and the runs it needs."""

    run_id: str
    kind: str
    config: Mapping[str, Any]
    pair: PairSpec | None = None
    requires: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Return a human label: ``method student←teacher seed=N``."""
        teacher = self.config.get("teacher") or {}
        arrow = f"←{teacher['arch']}" if teacher else ""
        role = f"{self.kind} " if self.kind != "student" else ""
        seed = f" seed={self.config['seed']}" if "seed" in self.config else ""
        return f"{role}{self.config['distiller']} {self.config['student']}{arrow}{seed}"


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """Where data, teachers, checkpoints and results live, and how runs execute."""

    data_root: Path = Path("data")
    teacher_root: Path = Path("teachers")
    work_root: Path = Path("runs")
    download: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    teacher_overrides: Mapping[str, str] = field(default_factory=dict)
    latency_batch_sizes: tuple[int, ...] = (1, 256)


def run_id_of(config: Mapping[str, Any]) -> str:
    """Return the stable id of a resolved config: the first 16 hex digits of its canonical JSON's SHA-256."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return {
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "nesterov": recipe.nesterov,
        "lr_milestones": list(recipe.lr_milestones),
        "lr_gamma": recipe.lr_gamma,
        "lr_overrides": dict(recipe.lr_overrides),
        "eval_batch_size": recipe.eval_batch_size,
    }


def student_recipe(recipe: Recipe, student: str) -> dict[str, Any]:
    """Return the recipe as a run sees it: the student's own base LR folded in, other overrides dropped."""
    resolved = _recipe_dict(recipe)
    resolved["lr"] = recipe.base_lr(student)
    resolved["lr_overrides"] = {}
    return resolved


def _teacher_source(suite: SuiteSpec, arch: str, host: PluginHost, overrides: Mapping[str, str]) -> str | None:
    source = overrides.get(arch) or suite.teachers.get(arch)
    if source and source in host.teachers and host.teachers.get(source).model != arch:
        raise KdbenchError(f"teacher {source!r} is a {host.teachers.get(source).model}, not a {arch}")
    return source


def _config(
    suite: SuiteSpec, student: str, distiller: str, params: Mapping[str, Any], seed: int, recipe: Recipe
) -> dict[str, Any]:
    return {
        "kdbench_config": CONFIG_VERSION,
        "dataset": suite.dataset,
        "student": student,
        "teacher": None,
        "distiller": distiller,
        "params": dict(params),
        "seed": seed,
        "recipe": student_recipe(recipe, student),
    }


def _distiller_names(suite: SuiteSpec, host: PluginHost) -> list[str]:
    names: list[str] = []
    for pattern in suite.distillers:
        matched = host.distillers.names(pattern) if any(c in pattern for c in "*?[") else [pattern]
        for name in matched:
            host.distillers.get(name)
            if name not in names:
                names.append(name)
    return names


def _check_names(suite: SuiteSpec, host: PluginHost) -> None:
    where = f"suite {suite.name!r}"
    try:
        host.datasets.get(suite.dataset)
        for pair in suite.pairs:
            host.models.get(pair.teacher)
            derived = parse_derived(pair.student)
            if derived is None:
                host.models.get(pair.student)
                continue
            host.pruners.get(derived.pruner)
            if derived.base != pair.teacher:
                raise KdbenchError(f"{where}: {pair.student} must prune the pair's teacher {pair.teacher}")
        for stage in suite.prune_after:
            host.pruners.get(stage["pruner"])
    except UnknownNameError as exc:
        raise UnknownNameError(f"{where}: {exc}") from None


def _accepted_params(builder: Callable[..., Any]) -> set[str] | None:
    """Return the hyper-parameters a distiller builder accepts (after student, teacher, context); None: any."""
    try:
        parameters = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters[3:] if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _check_params(suite: SuiteSpec, host: PluginHost) -> None:
    """Refuse parameters a method does not take before any run starts (not as one failed run per seed)."""
    running = set(_distiller_names(suite, host))
    tables = [(f"[distiller_params.{name}]", name, values) for name, values in suite.distiller_params.items()]
    for index, pair in enumerate(suite.pairs):
        tables += [(f"pairs[{index}].params.{name}", name, values) for name, values in pair.params.items()]
    for where, name, values in tables:
        if name not in running:
            continue
        spec = host.distillers.get(name)
        accepted = _accepted_params(spec.builder)
        if accepted is None:  # the builder takes **kwargs: anything goes
            continue
        unknown = sorted(set(values) - set(spec.defaults) - accepted)
        if unknown:
            known = ", ".join(sorted(set(spec.defaults) | accepted)) or "none"
            raise KdbenchError(
                f"suite {suite.name!r}: {where} sets {', '.join(unknown)}, which {name} does not take; "
                f"its parameters: {known}"
            )


def _prune_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    keys = {"ratio": "ratio", "macs": "target_macs_reduction", "round_to": "round_to", "global": "global_pruning"}
    return {keys[key]: value for key, value in values.items() if key in keys}


def _prune_config(
    suite: SuiteSpec, host: PluginHost, label: str, source: Mapping[str, Any], pruner: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    """Return the config of a run that prunes ``source`` (and fine-tunes it ``finetune_epochs`` epochs)."""
    spec = host.pruners.get(pruner)
    return {
        "kdbench_config": CONFIG_VERSION,
        "dataset": suite.dataset,
        "student": label,
        "teacher": None,
        "distiller": "prune",
        "seed": details["seed"],
        "prune": {
            "source": dict(source),
            "pruner": pruner,
            "params": {**spec.defaults, **details.get("params", {})},
            "settings": dict(details["settings"]),
            "finetune_epochs": details.get("finetune_epochs", 0),
            "finetune_lr": details.get("finetune_lr", 0.0),
        },
    }


def _add(planned: dict[str, PlannedRun], run: PlannedRun) -> None:
    # A run can be reached twice (e.g. a vanilla student shared by pairs); a teacher role wins.
    if run.run_id not in planned or (planned[run.run_id].kind == "teacher" and run.kind != "teacher"):
        if run.run_id in planned:
            run = PlannedRun(run.run_id, "teacher", run.config, run.pair, run.requires)
        planned[run.run_id] = run


def plan_suite(
    suite: SuiteSpec, host: PluginHost, teacher_overrides: Mapping[str, str] | None = None
) -> list[PlannedRun]:
    """Return every run of ``suite`` in execution order: teachers, derived students, students, prune stages."""
    _check_names(suite, host)
    _check_params(suite, host)
    overrides = teacher_overrides or {}
    teacher_recipe = suite.teacher_recipe or suite.recipe
    vanilla_defaults = host.distillers.get("vanilla").defaults if "vanilla" in host.distillers else {}
    planned: dict[str, PlannedRun] = {}
    teacher_refs: dict[str, tuple[dict[str, Any], str]] = {}
    for arch in dict.fromkeys(pair.teacher for pair in suite.pairs):
        source = _teacher_source(suite, arch, host, overrides)
        if source:
            config = {
                "kdbench_config": CONFIG_VERSION,
                "dataset": suite.dataset,
                "student": arch,
                "teacher": None,
                "distiller": "pretrained",
                "evaluate_checkpoint": source,
            }
            run_id = run_id_of(config)
            _add(planned, PlannedRun(run_id, "teacher", config))
            # Students wait for the checkpoint's evaluation: it fails exactly when loading it would.
            teacher_refs[arch] = ({"arch": arch, "checkpoint": source}, run_id)
            continue
        config = _config(suite, arch, "vanilla", vanilla_defaults, suite.teacher_seed, teacher_recipe)
        run_id = run_id_of(config)
        _add(planned, PlannedRun(run_id, "teacher", config))
        teacher_refs[arch] = ({"arch": arch, "run": run_id}, run_id)
    derivations: dict[str, str] = {}
    for pair in suite.pairs:
        derived = parse_derived(pair.student)
        if derived is None:
            continue
        ref, teacher_run = teacher_refs[pair.teacher]
        details = {"seed": suite.teacher_seed, "settings": derived.settings, "params": derived.params}
        config = _prune_config(suite, host, derived.architecture_label, ref, derived.pruner, details)
        run_id = run_id_of(config)
        _add(planned, PlannedRun(run_id, "prune", config, pair, (teacher_run,)))
        derivations[pair.student] = run_id
    students: list[PlannedRun] = []
    for pair in suite.pairs:
        for name in _distiller_names(suite, host):
            if name in pair.skip:
                continue
            spec = host.distillers.get(name)
            params = {**spec.defaults, **suite.distiller_params.get(name, {}), **pair.params.get(name, {})}
            recipe = suite.recipe_for(pair, name)
            for seed in suite.seeds:
                config = _config(suite, pair.student, name, params, seed, recipe)
                requires: tuple[str, ...] = ()
                if pair.student in derivations:
                    init = parse_derived(pair.student).init  # type: ignore[union-attr]
                    config["init"] = {"prune_run": derivations[pair.student], "weights": init}
                    requires += (derivations[pair.student],)
                if spec.needs_teacher:
                    config["teacher"], teacher_run = teacher_refs[pair.teacher]
                    requires += (teacher_run,)
                run = PlannedRun(run_id_of(config), "student", config, pair if spec.needs_teacher else None, requires)
                _add(planned, run)
                students.append(planned[run.run_id])
    for stage in suite.prune_after:
        methods = stage["methods"]
        for run in {run.run_id: run for run in students}.values():
            if run.kind != "student" or not any(fnmatch.fnmatchcase(run.config["distiller"], m) for m in methods):
                continue
            details = {**stage, "seed": run.config["seed"], "settings": _prune_settings(stage)}
            source = {"arch": run.config["student"], "run": run.run_id}
            label = f"{run.config['student']}+{stage['pruner']}"
            config = _prune_config(suite, host, label, source, stage["pruner"], details)
            config["after"] = {"distiller": run.config["distiller"]}
            _add(planned, PlannedRun(run_id_of(config), "prune", config, run.pair, (run.run_id,)))
    return list(planned.values())


def _label_tokens(run: PlannedRun) -> set[str]:
    tokens = set(run.label.split())
    return tokens | {part for token in tokens for part in token.split("←")} | {run.run_id}


def _matches(run: PlannedRun, pattern: str) -> bool:
    """Return whether every word of ``pattern`` names (or glob-matches) a word of the run's label or its id."""
    tokens = _label_tokens(run)
    if run.run_id.startswith(pattern) and len(pattern) >= 4:
        return True
    return all(any(fnmatch.fnmatchcase(token, word) for token in tokens) for word in pattern.split())


def select_runs(plan: list[PlannedRun], patterns: Iterable[str]) -> list[PlannedRun]:
    """Return the runs matching any pattern, plus the teacher runs they need.

    A pattern is words that must each name a word of a run's label
    (``kd resnet8x4←resnet32x4 seed=0``; ``resnet8x4`` and ``resnet32x4`` count as
    words too; globs allowed, e.g. ``sdd_*``), or a prefix of its run id.
    """
    patterns = list(patterns)
    if not patterns:
        return plan
    chosen = {run.run_id for run in plan if any(_matches(run, p) for p in patterns)}
    by_id = {run.run_id: run for run in plan}
    pending = list(chosen)
    while pending:  # the runs the chosen ones need, transitively
        for needed in by_id[pending.pop()].requires:
            if needed not in chosen:
                chosen.add(needed)
                pending.append(needed)
    return [run for run in plan if run.run_id in chosen]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _versions(host: PluginHost) -> dict[str, Any]:
    plugins = {p.name: p.version for p in host.plugins if p.status == "loaded"}
    return {
        "kdbench": kdbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": dict(sorted(plugins.items())),
    }


class _SuiteExecution:
    """Executes a plan against a store: shares data, teachers and profiles between runs."""

    def __init__(self, suite: SuiteSpec, host: PluginHost, store: ResultsStore, options: RunnerOptions) -> None:
        self.suite = suite
        self.host = host
        self.store = store
        self.options = options
        self.dataset: DatasetSpec = host.datasets.get(suite.dataset)
        self.data: ImageData | None = None
        self.teachers: dict[str, TrainedModel] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.commit = _git_commit()
        self.versions = _versions(host)
        self.device_name = device_name(options.engine.device)

    def load_data(self) -> ImageData:
        if self.data is None:
            self.data = self.dataset.loader(self.options.data_root, self.options.download)
        return self.data

    def teacher_for(self, config: Mapping[str, Any]) -> TrainedModel | None:
        ref = config.get("teacher")
        if not ref:
            return None
        key = json.dumps(ref, sort_keys=True)
        if key not in self.teachers:
            self.teachers[key] = self._load_teacher(ref)
        return self.teachers[key]

    def _load_teacher(self, ref: Mapping[str, Any]) -> TrainedModel:
        arch = ref["arch"]
        if "run" in ref:
            path, state_key = self.options.work_root / ref["run"] / FINAL_NAME, "model"
            if not path.is_file():
                raise CheckpointError(
                    f"teacher run {ref['run']} ({arch}) has no weights at {path}; it must finish first"
                )
        else:
            path, state_key = self._teacher_file(ref["checkpoint"])
        state = load_state(path, advice=f"check the checkpoint given for teacher {arch}")
        weights = state.get(state_key, state) if state_key else state
        model = self.host.models.get(arch).builder(num_classes=self.dataset.num_classes)
        try:
            model.load_state_dict(weights, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"teacher checkpoint {path} does not fit {arch}: {str(exc).splitlines()[0]}"
            ) from None
        model.to(self.options.engine.device).eval().requires_grad_(False)
        return TrainedModel(arch, model)

    def _teacher_file(self, source: str) -> tuple[Path, str]:
        if source in self.host.teachers:
            spec = self.host.teachers.get(source)
            path = self.options.teacher_root / spec.path
            if not path.is_file():
                raise CheckpointError(
                    f"teacher {source!r} not found at {path}; download it from {spec.url or 'its source'} "
                    f"and extract it under --teacher-root {self.options.teacher_root}"
                )
            return path, spec.state_key
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"teacher checkpoint {path} not found (not a file, nor a registered teacher name)")
        return path, "model"

    def profile(self, arch: str, extra_params: int) -> dict[str, Any]:
        if arch not in self.profiles:
            model = self.host.models.get(arch).builder(num_classes=self.dataset.num_classes)
            profile = profile_model(
                model,
                self.dataset.image_size,
                device=self.options.engine.device,
                batch_sizes=self.options.latency_batch_sizes,
            )
            self.profiles[arch] = profile.to_dict()
        return {**self.profiles[arch], "extra_params": extra_params}

    def record(self, run: PlannedRun, result: RunResult, profile: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "run_id": run.run_id,
            "suite": self.suite.name,
            "kind": run.kind,
            "status": result.status,
            "config": dict(run.config),
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
                }
                for e in result.curve
            ],
            "profile": profile,
            "wall_seconds": round(result.wall_seconds, 3),
            "versions": self.versions,
            "device": self.device_name,
            "git_commit": self.commit,
            "error": result.error,
        }

    def _evaluate_checkpoint(self, config: Mapping[str, Any], data: ImageData) -> RunResult:
        teacher = self.teacher_for(
            {"teacher": {"arch": config["student"], "checkpoint": config["evaluate_checkpoint"]}}
        )
        assert teacher is not None
        device = self.options.engine.device
        top1 = evaluate(
            teacher.module,
            data.test_images.to(device),
            data.test_labels.to(device),
            self.dataset,
            1000,
            self.options.engine.bf16,
        )
        value = round(float(top1), 4)
        return RunResult(status="finished", best_top1=value, last_top1=value, best_epoch=None)

    def _top1(self, model: nn.Module, data: ImageData) -> float:
        device = self.options.engine.device
        images, labels = data.test_images.to(device), data.test_labels.to(device)
        top1 = evaluate(model.to(device), images, labels, self.dataset, 1000, self.options.engine.bf16)
        return round(float(top1), 4)

    def _weights_of(self, source: Mapping[str, Any]) -> nn.Module:
        """Return a fresh copy of the model a prune run starts from (a teacher, or a trained student)."""
        if "checkpoint" in source:
            teacher = self.teacher_for({"teacher": dict(source)})
            assert teacher is not None
            return copy.deepcopy(teacher.module).requires_grad_(True)
        path = self.options.work_root / source["run"] / FINAL_NAME
        if not path.is_file():
            raise CheckpointError(
                f"run {source['run']} ({source['arch']}) has no weights at {path}; "
                "delete its stored result to train it again"
            )
        state = load_state(path)
        if "architecture" in state:
            return load_pruned(path, self.host)
        model = self.host.models.get(source["arch"]).builder(num_classes=self.dataset.num_classes)
        model.load_state_dict(state["model"])
        return model

    def _calibration(self, data: ImageData) -> Callable[[nn.Module], None]:
        """Return a function accumulating CE gradients over a few train batches (for gradient importances)."""
        device = self.options.engine.device

        def calibrate(model: nn.Module) -> None:
            generator = torch.Generator().manual_seed(0)
            order = torch.randperm(data.train_images.shape[0], generator=generator)[: 4 * 64]
            for index in order.split(64):
                images = normalize(data.train_images[index].to(device), self.dataset.mean, self.dataset.std)
                F.cross_entropy(model(images), data.train_labels[index].to(device)).backward()

        return calibrate

    def _prune(self, run: PlannedRun, info: RunInfo, data: ImageData) -> tuple[RunResult, dict[str, Any]]:
        """Prune the run's source model, evaluate it, fine-tune it if asked; return the result and its profile."""
        details = run.config["prune"]
        torch.manual_seed(int(run.config["seed"]))
        model = self._weights_of(details["source"]).to(self.options.engine.device)
        base = _base_arch(details["source"]["arch"])
        before = {"top1": self._top1(model, data), "profile": self._profile_of(model, 0)}
        example = torch.zeros(1, *self.dataset.image_size, device=self.options.engine.device)
        settings = PruneSettings(**details["settings"])
        model = prune_model(
            self.host, model, details["pruner"], details["params"], example, settings, self._calibration(data)
        )
        info.work_dir.mkdir(parents=True, exist_ok=True)
        save_pruned(model, base, self.dataset.num_classes, info.work_dir / PRUNED_NAME)
        after_prune = self._top1(model, data)
        result = RunResult(status="finished", best_top1=after_prune, last_top1=after_prune)
        epochs = int(details["finetune_epochs"])
        if not self.host.pruners.get(details["pruner"]).structured:
            _keep_zeros(model)
        if epochs > 0:
            config = _finetune_config(run.config, epochs, float(details["finetune_lr"]), self.host)
            tune = RunInfo(run.run_id, config, info.work_dir, info.device)
            extras = {"format": "kdbench-pruned-1", "arch": base, "num_classes": self.dataset.num_classes}
            extras["architecture"] = describe_architecture(model)
            result = train_run(tune, self.host, self.dataset, data, None, self.options.engine, model, extras)
        pruning = {"top1_before": before["top1"], "top1_after_prune": after_prune, "before": before["profile"]}
        pruning["sparsity"] = round(sparsity(model), 6)
        return result, {**self._profile_of(model, 0), "pruning": pruning}

    def _initial_student(self, config: Mapping[str, Any]) -> tuple[nn.Module | None, dict[str, Any] | None]:
        """Return the run's initial student and the extras its final weights need, if it is a derived student."""
        init = config.get("init")
        if not init:
            return None, None
        path = self.options.work_root / init["prune_run"] / PRUNED_NAME
        if not path.is_file():
            raise CheckpointError(f"derived student {config['student']}: no pruned model at {path}")
        model = load_pruned(path, self.host)
        state = load_state(path)
        if init["weights"] == "scratch":
            torch.manual_seed(int(config["seed"]))
            model = rebuild(self.host, state["arch"], state["num_classes"], state["architecture"])
        extras = {key: state[key] for key in ("format", "arch", "num_classes", "architecture")}
        return model, extras

    def _profile_of(self, model: nn.Module, extra_params: int) -> dict[str, Any]:
        profile = profile_model(
            copy.deepcopy(model),
            self.dataset.image_size,
            device=self.options.engine.device,
            batch_sizes=self.options.latency_batch_sizes,
        )
        return {**profile.to_dict(), "extra_params": extra_params}

    def execute(self, run: PlannedRun) -> RunResult:
        info = RunInfo(run.run_id, run.config, self.options.work_root / run.run_id, self.device_name)
        profile = None
        try:
            data = self.load_data()
            teacher = self.teacher_for(run.config)
            if "evaluate_checkpoint" in run.config:
                result = self._evaluate_checkpoint(run.config, data)
                profile = self.profile(run.config["student"], result.extra_params)
            elif "prune" in run.config:
                result, profile = self._prune(run, info, data)
            else:
                student, extras = self._initial_student(run.config)
                engine = self.options.engine
                result = train_run(info, self.host, self.dataset, data, teacher, engine, student, extras)
                if student is None:
                    profile = self.profile(run.config["student"], result.extra_params)
                else:
                    profile = self._profile_of(student, result.extra_params)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # isolate the failure: record it, let the suite go on
            result = RunResult(status="failed", error=_error_text(exc))
        self.store.put(self.record(run, result, profile))
        if result.status != "failed":
            # Stored for good: the resume state is no longer needed (final weights stay).
            (info.work_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        try:
            self.host.notify("kdbench_run_end", run=info, result=result)
        except PluginError as exc:  # the result is stored: an observer's failure must not stop the suite
            print(f"kdbench: warning: run {run.run_id}: {exc} (its result is stored)", file=sys.stderr)
        return result


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KdbenchError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


@dataclass(frozen=True, slots=True)
class SuiteReport:
    """What a suite invocation did: run ids per outcome."""

    skipped: tuple[str, ...]
    finished: tuple[str, ...]
    diverged: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def run_suite(
    suite: SuiteSpec,
    host: PluginHost,
    store: ResultsStore,
    options: RunnerOptions,
    runs: list[PlannedRun] | None = None,
    on_run: Callable[[PlannedRun, str], None] | None = None,
) -> SuiteReport:
    """Train every planned run of ``suite`` not already stored; return what happened.

    The dataset is loaded before the first run that needs training, so missing
    data stops the suite at once with one clear error.
    """
    plan = runs if runs is not None else plan_suite(suite, host, options.teacher_overrides)
    execution = _SuiteExecution(suite, host, store, options)
    done = store.finished_ids()
    pending = [run for run in plan if not _is_done(run, done, options)]
    if pending:
        execution.load_data()
    skipped = tuple(run.run_id for run in plan if run not in pending)
    outcome: dict[str, list[Any]] = {"finished": [], "diverged": [], "failed": []}
    unusable: dict[str, str] = {}  # run id → why runs needing it cannot go on
    from tqdm.auto import tqdm

    bar = tqdm(pending, desc=f"suite {suite.name}", unit="run", disable=not options.engine.progress)
    for run in bar:
        bar.set_postfix_str(run.label)
        blocked = next((needed for needed in run.requires if needed in unusable), None)
        if blocked is not None:
            result = RunResult(status="failed", error=f"needed run {blocked} failed: {unusable[blocked]}")
            store.put(execution.record(run, result, None))
        else:
            result = execution.execute(run)
        if result.status != "finished":
            unusable[run.run_id] = result.error or result.status
        if result.status == "failed":
            outcome["failed"].append((run.run_id, result.error))
        else:
            outcome[result.status].append(run.run_id)
        if on_run:
            on_run(run, result.status)
    return SuiteReport(
        skipped=skipped,
        finished=tuple(outcome["finished"]),
        diverged=tuple(outcome["diverged"]),
        failed=tuple(outcome["failed"]),
    )


def _keep_zeros(model: nn.Module) -> None:
    """Mask the gradients of pruned (zero) conv/linear weights so fine-tuning keeps them at zero.

    With plain SGD (weight decay and momentum included) a weight whose gradient is
    always zero stays exactly zero, so an unstructured pruning survives fine-tuning.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = (module.weight.detach() != 0).to(module.weight.dtype)
            module.weight.register_hook(lambda grad, mask=mask: grad * mask)


def _base_arch(arch: str) -> str:
    """Return the registered architecture a (possibly derived) model was built from."""
    derived = parse_derived(arch)
    return derived.base if derived else arch


def _finetune_config(config: Mapping[str, Any], epochs: int, lr: float, host: PluginHost) -> dict[str, Any]:
    """Return the engine config that fine-tunes a pruned model with CE at a constant LR."""
    recipe = dict(config.get("recipe") or {})
    recipe = {**student_recipe(Recipe(), config["student"]), **recipe, "epochs": epochs, "lr": lr}
    recipe["lr_milestones"] = []
    vanilla = host.distillers.get("vanilla").defaults
    return {**config, "distiller": "vanilla", "params": dict(vanilla), "recipe": recipe}


def _is_done(run: PlannedRun, done: set[str], options: RunnerOptions) -> bool:
    if run.run_id not in done:
        return False
    if run.kind == "prune":
        return (options.work_root / run.run_id / PRUNED_NAME).is_file()
    # A teacher's result is only usable with its weights next to it.
    return run.kind != "teacher" or (options.work_root / run.run_id / FINAL_NAME).is_file()
