"""The plan: a suite expanded into typed runs with stable ids, ordered as a DAG, serialisable to JSON.

A run is one of three typed kinds, each a frozen value carrying resolved names and a
:class:`~kdbench.Recipe` object — never an untyped dict:

- :class:`TrainRun`: train ``model`` with ``method`` (a teacher trained by kdbench, a
  vanilla student, or a distilled student), optionally from a pruned initial model;
- :class:`TeacherCheck`: evaluate a given teacher checkpoint (students wait for it, so a
  checkpoint that cannot be loaded fails once, here);
- :class:`PruneRun`: prune a model (a teacher: the derived students of prune-then-distill;
  or a trained student: distill-then-prune) and fine-tune it.

Every run's id is the first 16 hex digits of the SHA-256 of its canonical config
(:meth:`PlannedRun.to_config`), the dict format that results have always stored, so ids
never change. ``requires`` (the runs whose outputs a run reads) follows from the config
alone. A :class:`Plan` is the suite, its runs in execution order and the leaderboard
family of each method; ``Plan.to_json`` / ``Plan.from_json`` carry it to another process
or host (``kdbench plan -o plan.json``; ``kdbench execute plan.json --run ID``) and beside
a leaderboard. This module does not import torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

from kdbench.derived import parse_derived, prune_settings
from kdbench.errors import KdbenchError, PlanError, SuiteError, UnknownNameError
from kdbench.specs import PairSpec, Recipe, SuiteSpec
from kdbench.suites import parse_suite, recipe_problems, suite_to_data

if TYPE_CHECKING:
    from kdbench._plugins import PluginHost

__all__ = [
    "BASELINE_METHOD",
    "CONFIG_VERSION",
    "PLAN_FORMAT",
    "CheckpointWeights",
    "Plan",
    "PlannedRun",
    "PruneRun",
    "PrunedInit",
    "RunWeights",
    "TeacherCheck",
    "TrainRun",
    "WeightsRef",
    "plan_suite",
    "recipe_config",
    "run_from_config",
    "run_id_of",
    "select_runs",
    "student_recipe",
]

CONFIG_VERSION = 1
PLAN_FORMAT = "kdbench-plan-1"
#: The method that trains kdbench's own teachers and fine-tunes pruned models (cross-entropy alone).
BASELINE_METHOD = "vanilla"
#: The ``distiller`` field of the configs of runs that have no method (kept as it was: it is hashed into ids).
_TEACHER_CHECK_TAG = "pretrained"
_PRUNE_TAG = "prune"

Role = Literal["teacher", "student", "prune"]


def run_id_of(config: Mapping[str, Any]) -> str:
    """Return the stable id of a resolved config: the first 16 hex digits of its canonical JSON's SHA-256."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def recipe_config(recipe: Recipe) -> dict[str, Any]:
    """Return ``recipe`` as the plain dict stored in run configs (every field, JSON types)."""
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
        # Written only when set: the configs (and run ids) of every other recipe stay as they were.
        **({"strong_copy": recipe.strong_copy} if recipe.strong_copy else {}),
        **({"sync_bn": True} if recipe.sync_bn else {}),
    }


def student_recipe(recipe: Recipe, student: str) -> Recipe:
    """Return the recipe as a run of ``student`` sees it: the student's own base LR, no per-student overrides."""
    return replace(recipe, lr=recipe.base_lr(student), lr_overrides={})


def _json_data(value: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """Return ``value`` as it reads back from JSON (tuples become lists), frozen at the top level."""
    try:
        return MappingProxyType(json.loads(json.dumps(dict(value), sort_keys=True)))
    except (TypeError, ValueError) as exc:
        raise KdbenchError(f"{what} must be JSON data (run ids hash it): {exc}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Where a run's initial or teacher weights come from


@final
@dataclass(frozen=True, slots=True)
class RunWeights:
    """The weights a run of the plan leaves in its work directory."""

    arch: str
    run: str

    def to_config(self) -> dict[str, str]:
        """Return the config form ``{"arch", "run"}``."""
        return {"arch": self.arch, "run": self.run}


@final
@dataclass(frozen=True, slots=True)
class CheckpointWeights:
    """Weights from outside the plan: a registered teacher (``ARCH@set``) or a checkpoint file's path."""

    arch: str
    source: str

    def to_config(self) -> dict[str, str]:
        """Return the config form ``{"arch", "checkpoint"}``."""
        return {"arch": self.arch, "checkpoint": self.source}


WeightsRef = RunWeights | CheckpointWeights


def _weights_from_config(data: Mapping[str, Any]) -> WeightsRef:
    if "run" in data:
        return RunWeights(str(data["arch"]), str(data["run"]))
    return CheckpointWeights(str(data["arch"]), str(data["checkpoint"]))


@final
@dataclass(frozen=True, slots=True)
class PrunedInit:
    """A student that starts from the model a prune run saved: its weights, or its architecture alone."""

    prune_run: str
    weights: Literal["pruned", "scratch"] = "pruned"


# ---------------------------------------------------------------------------------------------------------------------
# The run kinds


class PlannedRun:
    """Base of the typed runs: an id, a role, the runs it needs, a label, and its canonical config."""

    __slots__ = ()
    type_name: ClassVar[str]
    run_id: str
    dataset: str
    model: str
    seed: int | None
    """The run's seed (None for a run that draws nothing)."""
    pair: PairSpec | None

    @property
    def role(self) -> Role:
        """Return ``teacher``, ``student`` or ``prune``: the record's ``kind`` and the leaderboard row it feeds."""
        raise NotImplementedError

    @property
    def requires(self) -> tuple[str, ...]:
        """Return the ids of the runs whose outputs this run reads, in the order it reads them."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """Return a human label: ``method student←teacher seed=N`` (role first unless a student)."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """Return the canonical config (hashed into ``run_id``, stored with the result)."""
        raise NotImplementedError

    def _identify(self) -> None:
        object.__setattr__(self, "run_id", run_id_of(self.to_config()))


def _producer(ref: WeightsRef, dataset: str) -> str:
    """Return the id of the run that makes ``ref`` usable: its training run, or the check of its checkpoint."""
    if isinstance(ref, RunWeights):
        return ref.run
    return TeacherCheck(dataset, ref.arch, ref.source).run_id


@final
@dataclass(frozen=True, slots=True)
class TrainRun(PlannedRun):
    """Train ``model`` with ``method`` under ``recipe`` (already resolved for the model: its own base LR)."""

    type_name: ClassVar[str] = "train"
    dataset: str
    model: str
    method: str
    params: Mapping[str, Any]
    seed: int
    recipe: Recipe
    teacher: WeightsRef | None = None
    init: PrunedInit | None = None
    run_role: Literal["teacher", "student"] = "student"
    pair: PairSpec | None = None
    run_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # None means "off" (the builder's own default) and is left out: an option added later keeps every
        # earlier run id.
        params = {name: value for name, value in self.params.items() if value is not None}
        object.__setattr__(self, "params", _json_data(params, f"parameters of {self.method}"))
        self._identify()

    @property
    def role(self) -> Role:
        return self.run_role

    @property
    def requires(self) -> tuple[str, ...]:
        needed = (self.init.prune_run,) if self.init else ()
        return needed + ((_producer(self.teacher, self.dataset),) if self.teacher else ())

    @property
    def label(self) -> str:
        role = "" if self.run_role == "student" else f"{self.run_role} "
        arrow = f"←{self.teacher.arch}" if self.teacher else ""
        return f"{role}{self.method} {self.model}{arrow} seed={self.seed}"

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "kdbench_config": CONFIG_VERSION,
            "dataset": self.dataset,
            "student": self.model,
            "teacher": self.teacher.to_config() if self.teacher else None,
            "distiller": self.method,
            "params": dict(self.params),
            "seed": self.seed,
            "recipe": recipe_config(self.recipe),
        }
        if self.init is not None:
            config["init"] = {"prune_run": self.init.prune_run, "weights": self.init.weights}
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], role: str, pair: PairSpec | None) -> TrainRun:
        """Return the run whose canonical config is ``config``."""
        init = config.get("init")
        return cls(
            dataset=config["dataset"],
            model=config["student"],
            method=config["distiller"],
            params=config["params"],
            seed=config["seed"],
            recipe=Recipe(**config["recipe"]),
            teacher=_weights_from_config(config["teacher"]) if config.get("teacher") else None,
            init=PrunedInit(init["prune_run"], init["weights"]) if init else None,
            run_role="teacher" if role == "teacher" else "student",
            pair=pair,
        )


@final
@dataclass(frozen=True, slots=True)
class TeacherCheck(PlannedRun):
    """Evaluate the checkpoint ``source`` (a registered teacher or a file) as a ``model`` teacher."""

    type_name: ClassVar[str] = "teacher-check"
    dataset: str
    model: str
    source: str
    pair: PairSpec | None = None
    run_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._identify()

    @property
    def role(self) -> Role:
        return "teacher"

    @property
    def seed(self) -> int | None:
        return None

    @property
    def requires(self) -> tuple[str, ...]:
        return ()

    @property
    def weights(self) -> CheckpointWeights:
        """Return the weights this run checks."""
        return CheckpointWeights(self.model, self.source)

    @property
    def label(self) -> str:
        return f"teacher {_TEACHER_CHECK_TAG} {self.model}"

    def to_config(self) -> dict[str, Any]:
        return {
            "kdbench_config": CONFIG_VERSION,
            "dataset": self.dataset,
            "student": self.model,
            "teacher": None,
            "distiller": _TEACHER_CHECK_TAG,
            "evaluate_checkpoint": self.source,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], role: str, pair: PairSpec | None) -> TeacherCheck:
        """Return the run whose canonical config is ``config``."""
        return cls(dataset=config["dataset"], model=config["student"], source=config["evaluate_checkpoint"], pair=pair)


@final
@dataclass(frozen=True, slots=True)
class PruneRun(PlannedRun):
    """Prune the model at ``source`` with ``pruner`` and fine-tune it ``finetune_epochs`` epochs.

    ``trained_with`` names the method that trained the source student (distill-then-prune);
    it is None for the derived students of prune-then-distill, whose source is a teacher.
    """

    type_name: ClassVar[str] = "prune"
    dataset: str
    model: str
    source: WeightsRef
    pruner: str
    params: Mapping[str, Any]
    settings: Mapping[str, Any]
    seed: int
    finetune_epochs: int = 0
    finetune_lr: float = 0.0
    trained_with: str | None = None
    pair: PairSpec | None = None
    run_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _json_data(self.params, f"parameters of pruner {self.pruner}"))
        object.__setattr__(self, "settings", _json_data(self.settings, f"settings of pruner {self.pruner}"))
        self._identify()

    @property
    def role(self) -> Role:
        return "prune"

    @property
    def requires(self) -> tuple[str, ...]:
        return (_producer(self.source, self.dataset),)

    @property
    def base_arch(self) -> str:
        """Return the registered architecture the pruned model is built from."""
        derived = parse_derived(self.source.arch)
        return derived.base if derived else self.source.arch

    @property
    def finetune_recipe(self) -> Recipe:
        """Return the fine-tuning recipe: ``finetune_epochs`` at the constant LR ``finetune_lr``."""
        return replace(Recipe(), epochs=self.finetune_epochs, lr=float(self.finetune_lr), lr_milestones=())

    @property
    def label(self) -> str:
        return f"prune {_PRUNE_TAG} {self.model} seed={self.seed}"

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "kdbench_config": CONFIG_VERSION,
            "dataset": self.dataset,
            "student": self.model,
            "teacher": None,
            "distiller": _PRUNE_TAG,
            "seed": self.seed,
            "prune": {
                "source": self.source.to_config(),
                "pruner": self.pruner,
                "params": dict(self.params),
                "settings": dict(self.settings),
                "finetune_epochs": self.finetune_epochs,
                "finetune_lr": self.finetune_lr,
            },
        }
        if self.trained_with is not None:
            config["after"] = {"distiller": self.trained_with}
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], role: str, pair: PairSpec | None) -> PruneRun:
        """Return the run whose canonical config is ``config``."""
        details = config["prune"]
        return cls(
            dataset=config["dataset"],
            model=config["student"],
            source=_weights_from_config(details["source"]),
            pruner=details["pruner"],
            params=details["params"],
            settings=details["settings"],
            seed=config["seed"],
            finetune_epochs=details["finetune_epochs"],
            finetune_lr=details["finetune_lr"],
            trained_with=(config.get("after") or {}).get("distiller"),
            pair=pair,
        )


_DECODERS: dict[str, Callable[[Mapping[str, Any], str, PairSpec | None], PlannedRun]] = {
    _TEACHER_CHECK_TAG: TeacherCheck.from_config,
    _PRUNE_TAG: PruneRun.from_config,
}
#: Method names a registered distiller cannot take: they tag the configs of runs without a method.
RESERVED_METHOD_NAMES = frozenset(_DECODERS)


def run_from_config(config: Mapping[str, Any], role: str = "student", pair: PairSpec | None = None) -> PlannedRun:
    """Return the typed run whose canonical config is ``config`` (as stored in a result record).

    ``role`` is the record's ``kind``. Raises :class:`~kdbench.errors.PlanError` for a config this
    kdbench cannot read.
    """
    try:
        if config.get("kdbench_config") != CONFIG_VERSION:
            raise PlanError(f"unknown config version {config.get('kdbench_config')!r} (this kdbench reads 1)")
        decode = _DECODERS.get(config["distiller"], TrainRun.from_config)
        return decode(config, role, pair)
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"not a kdbench run config ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------------------------
# Planning a suite


def _teacher_source(suite: SuiteSpec, arch: str, host: PluginHost, overrides: Mapping[str, str]) -> str | None:
    source = overrides.get(arch) or suite.teachers.get(arch)
    if source and source in host.teachers and host.teachers.get(source).model != arch:
        raise KdbenchError(f"teacher {source!r} is a {host.teachers.get(source).model}, not a {arch}")
    return source


def _distiller_names(suite: SuiteSpec, host: PluginHost) -> list[str]:
    names: list[str] = []
    for pattern in suite.distillers:
        matched = host.distillers.names(pattern) if any(c in pattern for c in "*?[") else [pattern]
        for name in matched:
            host.distillers.get(name)
            if name in RESERVED_METHOD_NAMES:
                raise KdbenchError(f"suite {suite.name!r}: distiller name {name!r} is reserved; rename the method")
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


def _check_params(suite: SuiteSpec, host: PluginHost) -> None:
    """Refuse parameters a method does not take before any run starts (not as one failed run per seed)."""
    running = set(_distiller_names(suite, host))
    tables = [(f"[distiller_params.{name}]", name, values) for name, values in suite.distiller_params.items()]
    for index, pair in enumerate(suite.pairs):
        tables += [(f"pairs[{index}].params.{name}", name, values) for name, values in pair.params.items()]
        tables += [
            (f"pairs[{index}].choices.{name}", name, dict.fromkeys(names, ...)) for name, names in pair.choices.items()
        ]
    for where, name, values in tables:
        if name not in running:
            continue
        spec = host.distillers.get(name)
        accepted = spec.accepted_params
        if accepted is None:  # the builder takes **kwargs: anything goes
            continue
        unknown = sorted(set(values) - set(spec.defaults) - accepted)
        if unknown:
            known = ", ".join(sorted(set(spec.defaults) | accepted)) or "none"
            raise KdbenchError(
                f"suite {suite.name!r}: {where} sets {', '.join(unknown)}, which {name} does not take; "
                f"its parameters: {known}"
            )
        emptied = sorted(k for k, v in values.items() if v is None and spec.defaults.get(k) is not None)
        if emptied:
            raise KdbenchError(
                f"suite {suite.name!r}: {where} sets {', '.join(emptied)} to None, which only an option that is "
                f"off by default may be"
            )


class _Planner:
    """Collects a suite's runs in execution order; a run reached twice is kept once (a teacher role wins)."""

    def __init__(self, suite: SuiteSpec, host: PluginHost, overrides: Mapping[str, str]) -> None:
        self.suite = suite
        self.host = host
        self.overrides = overrides
        self.runs: dict[str, PlannedRun] = {}
        self.teachers: dict[str, WeightsRef] = {}
        self.derivations: dict[str, str] = {}
        self.students: list[PlannedRun] = []

    def add(self, run: PlannedRun) -> PlannedRun:
        known = self.runs.get(run.run_id)
        if known is None:
            self.runs[run.run_id] = run
        elif known.role == "teacher" and run.role != "teacher" and isinstance(run, TrainRun):
            self.runs[run.run_id] = replace(run, run_role="teacher")
        return self.runs[run.run_id]

    def plan_teachers(self) -> None:
        suite = self.suite
        recipe = suite.teacher_recipe or suite.recipe
        baseline = self.host.distillers.get(BASELINE_METHOD).defaults if BASELINE_METHOD in self.host.distillers else {}
        for arch in dict.fromkeys(pair.teacher for pair in suite.pairs):
            source = _teacher_source(suite, arch, self.host, self.overrides)
            if source:
                self.add(TeacherCheck(suite.dataset, arch, source))
                self.teachers[arch] = CheckpointWeights(arch, source)
                continue
            run = TrainRun(
                suite.dataset, arch, BASELINE_METHOD, baseline, suite.teacher_seed, student_recipe(recipe, arch),
                run_role="teacher",
            )  # fmt: skip
            self.add(run)
            self.teachers[arch] = RunWeights(arch, run.run_id)

    def plan_derivations(self) -> None:
        for pair in self.suite.pairs:
            derived = parse_derived(pair.student)
            if derived is None:
                continue
            run = PruneRun(
                dataset=self.suite.dataset,
                model=derived.architecture_label,
                source=self.teachers[pair.teacher],
                pruner=derived.pruner,
                params={**self.host.pruners.get(derived.pruner).defaults, **derived.params},
                settings=derived.settings,
                seed=self.suite.teacher_seed,
                pair=_pair_ref(pair),
            )
            self.add(run)
            self.derivations[pair.student] = run.run_id

    def plan_students(self) -> None:
        suite = self.suite
        for pair in suite.pairs:
            derived = parse_derived(pair.student)
            for name in _distiller_names(suite, self.host):
                if name in pair.skip:
                    continue
                spec = self.host.distillers.get(name)
                params = {**spec.defaults, **suite.distiller_params.get(name, {}), **pair.params.get(name, {})}
                recipe = student_recipe(suite.recipe_for(pair, name), pair.student)
                init = PrunedInit(self.derivations[pair.student], derived.init) if derived else None
                teacher = self.teachers[pair.teacher] if spec.needs_teacher else None
                for seed in suite.seeds:
                    run = TrainRun(
                        suite.dataset, pair.student, name, params, seed, recipe, teacher, init,
                        pair=_pair_ref(pair) if spec.needs_teacher else None,
                    )  # fmt: skip
                    self.students.append(self.add(run))

    def plan_prune_after(self) -> None:
        for stage in self.suite.prune_after:
            for run in {run.run_id: run for run in self.students}.values():
                if not isinstance(run, TrainRun) or run.role != "student":
                    continue
                if not any(fnmatch.fnmatchcase(run.method, pattern) for pattern in stage["methods"]):
                    continue
                pruner = stage["pruner"]
                self.add(
                    PruneRun(
                        dataset=self.suite.dataset,
                        model=f"{run.model}+{pruner}",
                        source=RunWeights(run.model, run.run_id),
                        pruner=pruner,
                        params={**self.host.pruners.get(pruner).defaults, **stage.get("params", {})},
                        settings=prune_settings(stage),
                        seed=run.seed,
                        finetune_epochs=stage.get("finetune_epochs", 0),
                        finetune_lr=stage.get("finetune_lr", 0.0),
                        trained_with=run.method,
                        pair=run.pair,
                    )
                )


def _pair_ref(pair: PairSpec) -> PairSpec:
    """Return the pair as a run refers to it: teacher and student names only."""
    return PairSpec(pair.teacher, pair.student)


def _check_recipes(suite: SuiteSpec) -> None:
    """Refuse a recipe with a value out of range (a negative LR…) before any run starts."""
    recipes = [("[recipe]", suite.recipe)]
    if suite.teacher_recipe is not None:
        recipes.append(("[teacher_recipe]", suite.teacher_recipe))
    methods = {name for pair in suite.pairs for name in pair.recipes} | set(suite.method_recipes)
    recipes += [(f"the recipe of {name} on {pair.label}", suite.recipe_for(pair, name)) for pair in suite.pairs
                for name in sorted(methods)]  # fmt: skip
    for where, recipe in recipes:
        problems = recipe_problems(recipe)
        if problems:
            raise SuiteError(f"suite {suite.name!r}: {where}: {problems[0]}")


def plan_suite(suite: SuiteSpec, host: PluginHost, teacher_overrides: Mapping[str, str] | None = None) -> Plan:
    """Return the plan of ``suite``: teachers, derived students, students, prune stages, in execution order.

    ``teacher_overrides`` maps a teacher architecture to a registered teacher or a checkpoint
    path (``--teacher`` / ``--teacher-set``). Unknown names and parameters a method does not
    take raise :class:`~kdbench.KdbenchError` before anything runs.
    """
    _check_names(suite, host)
    _check_params(suite, host)
    _check_recipes(suite)
    planner = _Planner(suite, host, teacher_overrides or {})
    planner.plan_teachers()
    planner.plan_derivations()
    planner.plan_students()
    planner.plan_prune_after()
    runs = tuple(planner.runs.values())
    methods = sorted({run.method for run in runs if isinstance(run, TrainRun)})
    families = {name: host.distillers.get(name).family for name in methods if name in host.distillers}
    return Plan(suite, runs, families)


# ---------------------------------------------------------------------------------------------------------------------
# Selecting runs


def _label_tokens(run: PlannedRun) -> set[str]:
    tokens = set(run.label.split())
    return tokens | {part for token in tokens for part in token.split("←")} | {run.run_id}


def _matches(run: PlannedRun, pattern: str) -> bool:
    """Return whether every word of ``pattern`` names (or glob-matches) a word of the run's label or its id."""
    tokens = _label_tokens(run)
    if run.run_id.startswith(pattern) and len(pattern) >= 4:
        return True
    return all(any(fnmatch.fnmatchcase(token, word) for token in tokens) for word in pattern.split())


def select_runs(runs: Iterable[PlannedRun], patterns: Iterable[str]) -> list[PlannedRun]:
    """Return the runs matching any pattern, plus the runs they need (transitively), in plan order.

    A pattern is words that must each name a word of a run's label
    (``kd resnet8x4←resnet32x4 seed=0``; ``resnet8x4`` and ``resnet32x4`` count as
    words too; globs allowed, e.g. ``sdd_*``), or a prefix of its run id.
    """
    runs, patterns = list(runs), list(patterns)
    if not patterns:
        return runs
    chosen = {run.run_id for run in runs if any(_matches(run, p) for p in patterns)}
    by_id = {run.run_id: run for run in runs}
    pending = list(chosen)
    while pending:
        for needed in by_id[pending.pop()].requires:
            if needed not in chosen and needed in by_id:
                chosen.add(needed)
                pending.append(needed)
    return [run for run in runs if run.run_id in chosen]


# ---------------------------------------------------------------------------------------------------------------------
# The plan and its JSON form


@final
@dataclass(frozen=True)
class Plan:
    """A suite's runs in execution order (each after the runs it requires) and the family of each method."""

    suite: SuiteSpec
    runs: tuple[PlannedRun, ...]
    families: Mapping[str, str] = field(default_factory=dict)
    """Leaderboard group (``baseline``, ``logit``, ``feature``) of every method the plan trains."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "families", MappingProxyType(dict(sorted(dict(self.families).items()))))

    def __iter__(self) -> Iterator[PlannedRun]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, index: int) -> PlannedRun:
        return self.runs[index]

    def get(self, run_id: str) -> PlannedRun:
        """Return the run ``run_id`` (a unique prefix of at least 4 characters will do)."""
        matches = [run for run in self.runs if run.run_id.startswith(run_id.lower())] if len(run_id) >= 4 else []
        exact = [run for run in matches if run.run_id == run_id.lower()]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if matches:
            raise UnknownNameError(f"run id prefix {run_id!r} is ambiguous in plan {self.suite.name!r}")
        raise UnknownNameError(f"plan {self.suite.name!r} has no run {run_id!r}")

    def select(self, patterns: Iterable[str]) -> Plan:
        """Return the plan of the runs matching ``patterns`` (see :func:`select_runs`) and those they need."""
        return replace(self, runs=tuple(select_runs(self.runs, patterns)))

    def with_runs(self, runs: Sequence[PlannedRun]) -> Plan:
        """Return this plan with ``runs`` instead of its own (same suite and families)."""
        return replace(self, runs=tuple(runs))

    def to_json(self) -> str:
        """Return the plan as JSON text: one line per run, keys sorted (same plan → same text)."""
        head = {"format": PLAN_FORMAT, "suite": suite_to_data(self.suite), "families": dict(self.families)}
        lines = [_dumps(_run_entry(run)) for run in self.runs]
        body = ",\n".join(f"  {line}" for line in lines)
        parts = [f'  "{key}": {_dumps(value)}' for key, value in head.items()]
        runs = f'  "runs": [\n{body}\n  ]' if lines else '  "runs": []'
        return "{\n" + ",\n".join([*parts, runs]) + "\n}\n"

    def write(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        from kdbench.files import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str = "<plan>") -> Plan:
        """Return the plan of :meth:`to_json` text; a defect raises PlanError naming ``source``."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"plan {source} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise PlanError(f"{source} is not a kdbench plan (format {found!r}, expected {PLAN_FORMAT!r})")
        missing = sorted({"suite", "families", "runs"} - set(data))
        if missing:
            raise PlanError(f"plan {source} lacks {', '.join(missing)}")
        suite = parse_suite(data["suite"], source=f"in plan {source}")
        runs = [_run_of_entry(entry, f"plan {source}, run {number}") for number, entry in enumerate(data["runs"], 1)]
        _check_graph(runs, source)
        return cls(suite, tuple(runs), {str(k): str(v) for k, v in dict(data["families"]).items()})

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Return the plan stored at ``path``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
        return cls.from_json(text, str(path))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _run_entry(run: PlannedRun) -> dict[str, Any]:
    pair = [run.pair.teacher, run.pair.student] if run.pair is not None else None
    return {"run_id": run.run_id, "type": run.type_name, "role": run.role, "pair": pair, "config": run.to_config()}


_TYPES = {cls.type_name: cls for cls in (TrainRun, TeacherCheck, PruneRun)}


def _run_of_entry(entry: Any, where: str) -> PlannedRun:
    if not isinstance(entry, dict) or not {"run_id", "type", "role", "pair", "config"} <= set(entry):
        raise PlanError(f"{where}: needs run_id, type, role, pair and config")
    pair = entry["pair"]
    if pair is not None and not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
        raise PlanError(f"{where}: pair must be [teacher, student] or null")
    try:
        run = run_from_config(entry["config"], entry["role"], PairSpec(*pair) if pair else None)
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None
    if _TYPES.get(entry["type"]) is not type(run) or run.role != entry["role"]:
        raise PlanError(f"{where}: type {entry['type']!r} / role {entry['role']!r} do not fit its config")
    if run.run_id != entry["run_id"]:
        raise PlanError(f"{where}: id {entry['run_id']} does not match its config (whose id is {run.run_id})")
    return run


def _check_graph(runs: Sequence[PlannedRun], source: str) -> None:
    """Raise PlanError unless ids are unique and every run comes after the runs it requires."""
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen:
            raise PlanError(f"plan {source}: run {run.run_id} appears twice")
        late = [needed for needed in run.requires if needed not in seen]
        if late:
            raise PlanError(f"plan {source}: run {run.run_id} needs {late[0]}, which does not come before it")
        seen.add(run.run_id)
