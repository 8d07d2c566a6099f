"""How a plan's runs execute: which train together as a cohort, which read a teacher table.

A plan says *what* results exist (its run ids); a schedule says *how* they are computed, and
never changes a run's id or math. Runs of one teacher, seed, dataset and recipe whose
methods train on the engine's batches as they are (no views of their own, no phases) form a
cohort: trained in lockstep, one teacher pass per step. Runs whose method reads only the
teacher's logits may read them from the teacher's table (every train image × view, computed
once) when that costs fewer teacher passes than it saves. Torch-free: what each method can
do comes in as :class:`MethodTraits`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kdbench.errors import KdbenchError
from kdbench.plan import PlannedRun, TrainRun, WeightsRef

__all__ = ["MethodTraits", "Schedule", "ScheduleOptions", "TableCost", "make_schedule"]

TableMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class MethodTraits:
    """What the schedule needs to know of a method: whether it can train in lockstep, what it reads of the teacher."""

    lockstep: bool
    """It trains on the engine's batches as they are: no views of its own, no phases."""
    teacher_signals: frozenset[str]
    """The teacher signals of its main training."""


@dataclass(frozen=True, slots=True)
class TableCost:
    """A teacher table's size: views per train image and bytes (from the dataset and the teacher's classes)."""

    views: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ScheduleOptions:
    """``--cohorts``, ``--cohort-size``, the cohort memory budget and ``--teacher-table``."""

    cohorts: bool = True
    max_members: int = 32
    memory_budget: int | None = None
    """Bytes a cohort's members may hold at once (weights, gradients, optimiser state); None: no cap."""
    teacher_table: TableMode = "auto"
    table_budget: int = 16 << 30
    """Largest table (bytes) ``auto`` builds."""

    def __post_init__(self) -> None:
        if self.max_members < 1:
            raise KdbenchError(f"--cohort-size must be at least 1, got {self.max_members}")
        if self.teacher_table not in ("auto", "on", "off"):
            raise KdbenchError(f"--teacher-table takes auto, on or off, got {self.teacher_table!r}")


@dataclass(frozen=True)
class Schedule:
    """The cohorts (run ids, in plan order) and the runs that read a teacher table."""

    cohorts: tuple[tuple[str, ...], ...] = ()
    table_runs: frozenset[str] = frozenset()
    _cohort_of: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for cohort in self.cohorts:
            for run_id in cohort:
                self._cohort_of[run_id] = cohort

    def cohort_of(self, run_id: str) -> tuple[str, ...]:
        """Return the ids of the cohort ``run_id`` belongs to (itself alone when it trains alone)."""
        return self._cohort_of.get(run_id, (run_id,))

    def describe(self, run_id: str) -> str:
        """Return how the run executes, for plan printouts: ``cohort 3/8``, ``table``, both or ``alone``."""
        parts = []
        cohort = self.cohort_of(run_id)
        if len(cohort) > 1:
            index = next(i for i, c in enumerate(self.cohorts) if c is cohort)
            parts.append(f"cohort {index + 1} ({len(cohort)})")
        if run_id in self.table_runs:
            parts.append("table")
        return ", ".join(parts) or "alone"


def _cohort_key(
    run: TrainRun, split: Callable[[TrainRun], bool]
) -> tuple[WeightsRef | None, int | None, str, str, bool]:
    recipe = json.dumps(run.to_config().get("recipe"), sort_keys=True)
    return run.teacher, run.seed, run.dataset, recipe, split(run)


def _chunks(runs: list[TrainRun], options: ScheduleOptions, member_bytes: Callable[[TrainRun], int] | None):
    """Split runs of one key into cohorts of at most ``max_members`` runs and ``memory_budget`` bytes."""
    cohort: list[TrainRun] = []
    held = 0
    for run in runs:
        size = member_bytes(run) if member_bytes and options.memory_budget is not None else 0
        full = len(cohort) >= options.max_members
        if cohort and (full or (options.memory_budget is not None and held + size > options.memory_budget)):
            yield cohort
            cohort, held = [], 0
        cohort.append(run)
        held += size
    if cohort:
        yield cohort


def _group_cohorts(
    runs: Iterable[PlannedRun],
    traits: Callable[[str], MethodTraits],
    options: ScheduleOptions,
    member_bytes: Callable[[TrainRun], int] | None,
    split: Callable[[TrainRun], bool],
) -> list[tuple[TrainRun, ...]]:
    """Group lockstep runs by teacher, seed, dataset, recipe (and ``split``, e.g. "reads the table")."""
    groups: dict[tuple, list[TrainRun]] = {}
    for run in runs:
        if isinstance(run, TrainRun) and run.teacher is not None and traits(run.method).lockstep:
            groups.setdefault(_cohort_key(run, split), []).append(run)
    cohorts = []
    for members in groups.values():
        cohorts += [tuple(chunk) for chunk in _chunks(members, options, member_bytes) if len(chunk) > 1]
    return cohorts


def _table_served(run: PlannedRun, traits: Callable[[str], MethodTraits]) -> bool:
    if not isinstance(run, TrainRun) or run.teacher is None or run.recipe.strong_copy:
        return False
    method = traits(run.method)
    return method.lockstep and method.teacher_signals <= {"logits"}


def _table_runs(
    runs: Sequence[PlannedRun],
    cohorts: list[tuple[TrainRun, ...]],
    traits: Callable[[str], MethodTraits],
    options: ScheduleOptions,
    table_cost: Callable[[TrainRun], TableCost] | None,
) -> frozenset[str]:
    """Return the runs that read their teacher's table: all that can with ``on``; with ``auto`` those of a
    teacher whose table costs fewer teacher passes per image than the runs reading it would make (and fits)."""
    if options.teacher_table == "off" or table_cost is None:
        return frozenset()
    in_cohort = {run.run_id: cohort for cohort in cohorts for run in cohort}
    by_table: dict[tuple, list[TrainRun]] = {}
    for run in runs:
        if _table_served(run, traits):
            cohort = in_cohort.get(run.run_id, (run,))
            if all(_table_served(member, traits) for member in cohort):  # else the cohort runs its teacher anyway
                by_table.setdefault((run.teacher, run.dataset), []).append(run)  # type: ignore[union-attr]
    chosen: set[str] = set()
    for readers in by_table.values():
        if options.teacher_table == "on":
            chosen.update(run.run_id for run in readers)
            continue
        cost = table_cost(readers[0])
        units = {tuple(r.run_id for r in in_cohort.get(run.run_id, (run,))): run for run in readers}
        passes = sum(run.recipe.epochs for run in units.values())  # a cohort makes one pass per step
        if passes > cost.views and cost.bytes <= options.table_budget:
            chosen.update(run.run_id for run in readers)
    return frozenset(chosen)


def make_schedule(
    runs: Sequence[PlannedRun],
    traits: Callable[[str], MethodTraits],
    options: ScheduleOptions = ScheduleOptions(),
    member_bytes: Callable[[TrainRun], int] | None = None,
    table_cost: Callable[[TrainRun], TableCost] | None = None,
) -> Schedule:
    """Return how ``runs`` (a plan's, or its pending part) execute under ``options``.

    ``member_bytes(run)`` estimates what a cohort member holds (for the memory budget);
    ``table_cost(run)`` gives the size of the table of the run's teacher on its dataset.
    """
    forced = options.teacher_table == "on" and table_cost is not None
    # With the table forced on, the runs reading it form their own cohorts (no teacher pass at all); with
    # auto it is chosen only where whole cohorts read it, so cohorts are formed as if there were none.
    split = (lambda run: _table_served(run, traits)) if forced else (lambda run: False)
    cohorts = _group_cohorts(runs, traits, options, member_bytes, split) if options.cohorts else []
    table_runs = _table_runs(runs, cohorts, traits, options, table_cost)
    return Schedule(tuple(tuple(run.run_id for run in cohort) for cohort in cohorts), table_runs)
