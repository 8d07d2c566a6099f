"""What cohorts and the teacher table remove, side by side in one process (``make bench``).

(a) one KD step reading the teacher table vs the live teacher (in ``test_kd_step.py``'s group);
(b) one epoch of a cohort of 8 methods of resnet32x4 → resnet8x4 vs the same 8 runs alone;
(c) the suite-level estimate for cifar100-similar: total step cost of its plan alone, with
    cohorts, and with cohorts and tables, from each model's forward MACs (printed).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from test_kd_step import GROUP, STUDENT, TEACHER, _engine_run, _SyntheticDatasetPlugin, _time_engine

import kdbench
from kdbench import DatasetSpec, PairSpec, Recipe, SuiteSpec
from kdbench.augment import num_views
from kdbench.cohort import CohortMember, train_cohort_epoch
from kdbench.engine import EngineOptions, RunState, TrainedModel
from kdbench.plan import TrainRun, plan_suite
from kdbench.profile import count_macs
from kdbench.records import RunInfo
from kdbench.runner import method_traits
from kdbench.schedule import ScheduleOptions, TableCost, make_schedule
from kdbench.table import TableLayout, TeacherTable

if TYPE_CHECKING:
    from conftest import BenchSettings

EIGHT = ("kd", "dkd", "at", "fitnet", "rkd", "pkt", "sp", "crd")
COHORT_GROUP = "cohort-8-methods-resnet32x4-resnet8x4"


def _random_table(spec: DatasetSpec, num_train: int, root: Path, device: torch.device) -> TeacherTable:
    """A table of the right shape filled with random logits: the lookup costs the same whatever they are."""
    layout = TableLayout(num_views(spec.augment.pad, spec.augment.flip), num_train, spec.num_classes)
    path = root / "bench.f32"
    np.random.default_rng(0).standard_normal(layout.floats, dtype=np.float32).tofile(path)
    return TeacherTable(path, layout, spec.augment.pad, spec.augment.flip, device)


@pytest.mark.benchmark(group=GROUP)
def test_engine_teacher_table(
    benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec, record_per_step: Any, tmp_path: Path
) -> None:
    """The engine's KD step with the teacher's logits read from the table (no teacher forward)."""
    run = _engine_run(synthetic_cifar, EngineOptions(device=settings.device), settings.batch_size)
    run.teacher_table = _random_table(synthetic_cifar, run.train_images.shape[0], tmp_path, settings.device)
    _time_engine(benchmark, run, settings)
    record_per_step(benchmark, "kdbench engine, teacher table", settings)


def _eight_states(dataset: DatasetSpec, settings: BenchSettings) -> list[RunState]:
    """The 8 runs of resnet32x4 → resnet8x4, seed 0, built as the runner builds them, sharing teacher and data."""
    host = kdbench.create_plugin_host(plugins=[("bench_synthetic_data", _SyntheticDatasetPlugin(dataset))])
    suite = SuiteSpec(
        name="bench-cohort",
        description="eight methods of one pair, for timing",
        dataset=dataset.name,
        pairs=(PairSpec(teacher=TEACHER, student=STUDENT),),
        distillers=EIGHT,
        seeds=(0,),
        recipe=Recipe(batch_size=settings.batch_size),
    )
    runs = [run for run in plan_suite(suite, host) if isinstance(run, TrainRun) and run.role == "student"]
    data = dataset.loader(Path("."), False)
    torch.manual_seed(1)
    teacher = host.models.get(TEACHER).builder(num_classes=dataset.num_classes).to(settings.device).eval()
    trained = TrainedModel(TEACHER, teacher.requires_grad_(False))
    data = type(data)(*(t.to(settings.device) for t in (data.train_images, data.train_labels)),
                      *(t.to(settings.device) for t in (data.test_images, data.test_labels)))  # fmt: skip
    states = []
    for run in runs:
        torch.manual_seed(run.seed)
        student = kdbench.create_model(run.model, dataset.num_classes, host=host)
        factory = functools.partial(host.distillers.get(run.method).builder, **run.params)
        options = EngineOptions(device=settings.device)
        states.append(RunState(student, factory, trained, run.recipe, run.seed, dataset, data, options))
    return states


def _record(benchmark: Any, label: str, settings: BenchSettings, per_round: int) -> None:
    benchmark.extra_info.update(label=label, run_epochs_per_round=per_round, steps=settings.steps)


@pytest.mark.benchmark(group=COHORT_GROUP)
def test_eight_runs_alone(benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec) -> None:
    """Eight runs, one after the other, each with its own teacher pass per step."""
    states = _eight_states(synthetic_cifar, settings)
    epochs = itertools.count()

    def one_epoch_each() -> float:
        position = next(epochs)
        return sum(float(next(iter(state.train_epoch(position).values()))) for state in states)

    benchmark.pedantic(one_epoch_each, rounds=max(1, settings.rounds - 1), warmup_rounds=1, iterations=1)
    _record(benchmark, "8 runs alone", settings, len(states))


@pytest.mark.benchmark(group=COHORT_GROUP)
def test_eight_runs_as_a_cohort(
    benchmark: Any, settings: BenchSettings, synthetic_cifar: DatasetSpec, tmp_path: Path
) -> None:
    """The same eight runs in lockstep: one teacher pass per step for all of them."""
    states = _eight_states(synthetic_cifar, settings)
    members = [CohortMember(RunInfo(f"bench{i}", {}, tmp_path, "bench"), s) for i, s in enumerate(states)]
    epochs = itertools.count()

    def one_cohort_epoch() -> float:
        sums, _ = train_cohort_epoch(members, next(epochs))
        return sum(float(next(iter(s.values()))) for s in sums)  # type: ignore[union-attr]

    benchmark.pedantic(one_cohort_epoch, rounds=max(1, settings.rounds - 1), warmup_rounds=1, iterations=1)
    _record(benchmark, "8 runs as one cohort", settings, len(members))


def test_suite_estimate_cifar100_similar(capsys: pytest.CaptureFixture[str]) -> None:
    """Total step cost of cifar100-similar's plan (3 seeds), alone / cohorts / cohorts and tables, in forward MACs.

    A trained model's step costs 3× its forward MACs (forward and backward), a frozen teacher's pass 1×;
    a cohort pays its teacher once per step; a table costs one teacher forward per train image and view,
    once per teacher. Extra views (MLKD, SSKD) and phases are counted as plain steps.
    """
    host = kdbench.create_plugin_host()
    plan = plan_suite(host.suites.get("cifar100-similar"), host)
    macs: dict[str, float] = {}

    def forward(arch: str) -> float:
        if arch not in macs:
            macs[arch] = count_macs(kdbench.create_model(arch, 100, host=host), (3, 32, 32))
        return macs[arch]

    images = 50_000
    traits = functools.lru_cache(maxsize=None)(lambda m: method_traits(host.distillers.get(m).builder))
    cost = lambda run: TableCost(num_views(4, True), num_views(4, True) * images * 100 * 4)  # noqa: E731
    totals = {}
    for label, options in (
        ("alone", ScheduleOptions(cohorts=False, teacher_table="off")),
        ("cohorts", ScheduleOptions(teacher_table="off")),
        ("cohorts + tables (auto)", ScheduleOptions()),
        ("alone + tables (auto)", ScheduleOptions(cohorts=False)),
    ):
        schedule = make_schedule(plan.runs, traits, options, table_cost=cost)
        totals[label] = _plan_cost(plan.runs, schedule, forward, images)
    with capsys.disabled():
        print(f"\n--- cifar100-similar ({len(plan)} runs, 3 seeds): total step cost, forward MACs × images ---")
        for label, total in totals.items():
            print(f"{label:26s} {total / 1e18:8.2f} EMAC   {totals['alone'] / total:5.2f}x fewer than alone")
    assert totals["cohorts"] < totals["alone"]


def _plan_cost(runs: Any, schedule: Any, forward: Any, images: int) -> float:
    """Return the MACs × images of every planned training step under ``schedule``."""
    by_id = {run.run_id: run for run in runs}
    total, tables, paid = 0.0, set(), set()
    for run in runs:
        if not isinstance(run, TrainRun):
            continue
        epochs = run.recipe.epochs
        total += 3 * forward(run.model.split("@")[0]) * images * epochs
        if run.teacher is None:
            continue
        teacher = forward(run.teacher.arch.split("@")[0])
        if run.run_id in schedule.table_runs:
            if (run.teacher, run.dataset) not in tables:
                tables.add((run.teacher, run.dataset))
                total += teacher * images * num_views(4, True)
            continue
        cohort = schedule.cohort_of(run.run_id)
        if cohort in paid:
            continue
        paid.add(cohort)
        total += teacher * images * by_id[cohort[0]].recipe.epochs
    return total
