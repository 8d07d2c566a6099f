"""Cohorts: runs of one teacher and seed trained in lockstep give exactly their solo numbers.

Every comparison is between the stored records of two real `kdbench run`s: one with
``--cohorts off --teacher-table off`` (each run alone, the live teacher), one with cohorts
(and, where said, the teacher table).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_datasets import _write_fake_cifar

import kdbench
from kdbench.cli import main
from kdbench.plan import TrainRun, plan_suite
from kdbench.results import ResultsStore
from kdbench.runner import method_traits
from kdbench.schedule import MethodTraits, ScheduleOptions, TableCost, make_schedule
from kdbench.suites import parse_suite

EIGHT = ("kd", "dkd", "at", "fitnet", "rkd", "pkt", "sp", "crd")

COHORT_SUITE = """
name = "cohort-digits"
description = "eight methods of one pair, for cohort tests"
dataset = "digits"
distillers = ["kd", "dkd", "at", "fitnet", "rkd", "pkt", "sp", "crd", "mlkd"]
seeds = [0]
epoch_rule = "last"

[recipe]
epochs = 2
batch_size = 128
lr = 0.05
lr_milestones = [1]
eval_batch_size = 512

[teacher_recipe]
epochs = 1
batch_size = 128
lr = 0.05
lr_milestones = []
eval_batch_size = 512

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"
"""


def _records(results: Path) -> dict[str, dict[str, Any]]:
    with ResultsStore(results) as store:
        return {record["run_id"]: record for record in store.records()}


def _numbers(record: dict[str, Any]) -> tuple:
    """What must not move between executions: status, accuracies and every epoch's losses, LR and top-1."""
    curve = tuple((e["epoch"], e["lr"], tuple(sorted(e["losses"].items())), e["test_top1"]) for e in record["curve"])
    return record["status"], record["best_top1"], record["last_top1"], curve


def _run(root: Path, suite: Path | str, *options: str) -> dict[str, dict[str, Any]]:
    args = ["run", "--suite", str(suite), "--results", str(root / "r.sqlite"), "--work-dir", str(root / "runs")]
    args += ["--teacher-root", str(root / "teachers"), "--no-progress", "--latency-batch-sizes", "1", *options]
    assert main(args) == 0
    return _records(root / "r.sqlite")


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The cohort suite trained run by run with the live teacher (the reference every test compares with)."""
    root = tmp_path_factory.mktemp("solo")
    (root / "cohort.toml").write_text(COHORT_SUITE, encoding="utf-8")
    return root, _run(root, root / "cohort.toml", "--cohorts", "off", "--teacher-table", "off")


def test_a_cohort_of_eight_methods_stores_each_members_solo_numbers(solo, tmp_path: Path, capsys) -> None:
    root, alone = solo
    together = _run(tmp_path, root / "cohort.toml", "--teacher-table", "off")
    assert set(together) == set(alone) and len(alone) == 10
    for run_id, record in together.items():
        assert _numbers(record) == _numbers(alone[run_id]), record["config"]["distiller"]
    cohorts = {r["config"]["distiller"]: (r["versions"].get("execution") or {}) for r in together.values()}
    assert {m for m, e in cohorts.items() if e.get("cohort") == 8} == set(EIGHT)
    assert cohorts["mlkd"] == {} and cohorts["vanilla"] == {}  # its own views: it trains alone
    assert "10 finished" in capsys.readouterr().out


def test_the_teacher_table_gives_the_live_teachers_numbers(solo, tmp_path: Path) -> None:
    root, alone = solo
    tabled = _run(tmp_path, root / "cohort.toml", "--cohorts", "off", "--teacher-table", "on")
    readers = {
        r["config"]["distiller"] for r in tabled.values() if "teacher_table" in r["versions"].get("execution", {})
    }
    assert readers == {"kd", "dkd"}  # the methods that read only the teacher's logits
    for run_id, record in tabled.items():
        a, b = _numbers(record), _numbers(alone[run_id])
        assert a[:3] == b[:3], record["config"]["distiller"]  # status and accuracies equal
        for x, y in zip(a[3], b[3]):
            for (name, value), (_, expected) in zip(x[2], y[2]):
                assert value == pytest.approx(expected, rel=1e-5), name
    (table,) = (tmp_path / "teachers" / "tables").glob("*.f32")
    assert table.stat().st_size == 9 * 1438 * 10 * 4  # 9 views (digits: pad 1, no flip) × images × classes × fp32


def test_a_member_that_raises_leaves_the_others_exact(solo, tmp_path: Path, fake_site: Path) -> None:
    _, alone = solo
    from conftest import make_distribution

    make_distribution(
        fake_site,
        "kdbench-fake-broken",
        "0.1",
        {"broken": "kdbench_fake_broken"},
        {
            "kdbench_fake_broken": """
            from kdbench import DistillerSpec, hookimpl
            from kdbench_plugins.distillers.kd import KD

            class Broken(KD):
                def loss_terms(self, student, teacher, batch, progress):
                    if progress.step == 3:
                        raise RuntimeError("broken on purpose")
                    return super().loss_terms(student, teacher, batch, progress)

            class Scribbler(KD):
                def loss_terms(self, student, teacher, batch, progress):
                    teacher.logits.mul_(2.0)
                    return super().loss_terms(student, teacher, batch, progress)

            @hookimpl
            def kdbench_register_distillers():
                return [DistillerSpec(name="broken", builder=Broken, description="raises at step 3"),
                        DistillerSpec(name="scribbler", builder=Scribbler, description="writes into the teacher")]
            """
        },
    )
    suite = tmp_path / "cohort.toml"
    suite.write_text(COHORT_SUITE.replace('"crd", "mlkd"', '"crd", "broken", "scribbler"'), encoding="utf-8")
    args = ["run", "--suite", str(suite), "--results", str(tmp_path / "r.sqlite"), "--work-dir", str(tmp_path / "w")]
    args += ["--teacher-root", str(tmp_path / "t"), "--no-progress", "--latency-batch-sizes", "1"]
    assert main([*args, "--teacher-table", "off"]) == 1
    records = _records(tmp_path / "r.sqlite")
    by_method = {r["config"]["distiller"]: r for r in records.values()}
    assert by_method["broken"]["status"] == "failed" and "broken on purpose" in by_method["broken"]["error"]
    assert by_method["scribbler"]["status"] == "failed"
    assert "changed the teacher's signals in place" in by_method["scribbler"]["error"]
    for run_id, record in records.items():
        if record["config"]["distiller"] in EIGHT:
            assert record["versions"]["execution"]["cohort"] == 10
            assert _numbers(record) == _numbers(alone[run_id]), record["config"]["distiller"]


def test_a_cohort_killed_mid_epoch_resumes_every_member_exactly(tmp_path: Path) -> None:
    suite = tmp_path / "cohort.toml"
    suite.write_text(COHORT_SUITE.replace("epochs = 2\n", "epochs = 4\n", 1), encoding="utf-8")
    reference = _run(tmp_path / "uninterrupted", suite, "--cohorts", "off", "--teacher-table", "off")
    command = [sys.executable, "-m", "kdbench", "run", "--suite", str(suite), "--results", str(tmp_path / "r.sqlite")]
    command += ["--work-dir", str(tmp_path / "runs"), "--teacher-root", str(tmp_path / "t"), "--no-progress"]
    command += ["--latency-batch-sizes", "1", "--teacher-table", "off"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("*/checkpoint.prev.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)  # a member has finished its second epoch: the cohort is inside its third
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "r.sqlite").exists() or len(_records(tmp_path / "r.sqlite")) < len(reference)
    cut = [
        d for d in (tmp_path / "runs").iterdir() if (d / "checkpoint.pt").exists() and not (d / "result.json").exists()
    ]
    assert len(cut) >= 2  # cohort members caught between epochs, to be resumed
    resumed = _run(tmp_path, suite, "--teacher-table", "off")
    assert set(resumed) == set(reference)
    for run_id, record in resumed.items():
        assert _numbers(record) == _numbers(reference[run_id]), record["config"]["distiller"]


def test_a_generated_cifar100_cohort_equals_its_solo_runs(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path / "data", "cifar100")
    select = [arg for m in EIGHT for arg in ("-k", f"{m} resnet20←resnet56 seed=0")]
    common = ["--suite", "cifar100-similar", "--epochs", "1", "--data-root", str(tmp_path / "data"), *select]
    alone = _run(tmp_path / "alone", common[1], *common[2:], "--cohorts", "off", "--teacher-table", "off")
    together = _run(tmp_path / "together", common[1], *common[2:], "--teacher-table", "off")
    students = [r for r in together.values() if r["kind"] == "student"]
    assert len(students) == 8 and all(r["versions"]["execution"]["cohort"] == 8 for r in students)
    for run_id, record in together.items():
        assert _numbers(record) == _numbers(alone[run_id]), record["config"]["distiller"]


def test_the_dry_run_shows_cohorts_and_tables(solo, capsys) -> None:
    root, _ = solo
    args = ["run", "--suite", str(root / "cohort.toml"), "--dry-run", "--results", str(root / "none.sqlite")]
    assert main([*args, "--work-dir", str(root / "elsewhere"), "--teacher-table", "on"]) == 0
    out = capsys.readouterr().out  # forced on: the two logit methods form a cohort that reads the table
    assert "execution" in out and out.count("cohort 1 (2), table") == 2 and out.count("cohort 2 (6)") == 6
    assert "2 cohorts of 8 runs (one teacher pass per step), 2 runs read a teacher table" in out
    assert main([*args, "--work-dir", str(root / "elsewhere")]) == 0
    out = capsys.readouterr().out  # auto: 2 epochs are fewer passes than 9 views, so no table
    assert out.count("cohort 1 (8)") == 8 and "1 cohort of 8 runs (one teacher pass per step), 0 runs" in out


# --- the schedule, torch-free --------------------------------------------------------------------------------------


def _plan(host: kdbench.PluginHost, text: str):
    import tomllib

    return plan_suite(parse_suite(tomllib.loads(text)), host)


def test_cohorts_group_one_teacher_seed_and_recipe_and_leave_own_view_methods_alone(host) -> None:
    plan = _plan(host, COHORT_SUITE.replace("seeds = [0]", "seeds = [0, 1]"))
    schedule = make_schedule(plan.runs, lambda m: method_traits(host.distillers.get(m).builder))
    assert len(schedule.cohorts) == 2  # one per seed
    runs = {run.run_id: run for run in plan}
    for cohort in schedule.cohorts:
        members = [runs[run_id] for run_id in cohort]
        assert {m.method for m in members} == set(EIGHT) and len({m.seed for m in members}) == 1
    mlkd = next(run for run in plan if isinstance(run, TrainRun) and run.method == "mlkd")
    assert schedule.cohort_of(mlkd.run_id) == (mlkd.run_id,) and schedule.describe(mlkd.run_id) == "alone"


def test_cohort_size_and_memory_budget_split_cohorts(host) -> None:
    plan = _plan(host, COHORT_SUITE)
    traits = lambda m: method_traits(host.distillers.get(m).builder)  # noqa: E731
    assert [len(c) for c in make_schedule(plan.runs, traits, ScheduleOptions(max_members=3)).cohorts] == [3, 3, 2]
    budget = ScheduleOptions(memory_budget=250)
    assert [len(c) for c in make_schedule(plan.runs, traits, budget, member_bytes=lambda run: 100).cohorts] == [2] * 4
    assert make_schedule(plan.runs, traits, ScheduleOptions(cohorts=False)).cohorts == ()


def test_auto_builds_a_table_only_where_it_saves_teacher_passes(host) -> None:
    plan = _plan(host, COHORT_SUITE)
    logits = lambda m: MethodTraits(lockstep=True, teacher_signals=frozenset({"logits"}))  # noqa: E731
    off = ScheduleOptions(cohorts=False)
    cheap, dear = (lambda run: TableCost(views=1, bytes=10)), (lambda run: TableCost(views=100, bytes=10))
    assert len(make_schedule(plan.runs, logits, off, table_cost=cheap).table_runs) == 9  # 9 × 2 epochs > 1 view
    assert make_schedule(plan.runs, logits, off, table_cost=dear).table_runs == frozenset()  # 18 passes < 100
    assert len(make_schedule(plan.runs, logits, ScheduleOptions(teacher_table="on"), table_cost=dear).table_runs) == 9
    big = ScheduleOptions(cohorts=False, table_budget=5)
    assert make_schedule(plan.runs, logits, big, table_cost=cheap).table_runs == frozenset()  # does not fit
    # A cohort makes one teacher pass per step: 2 epochs < 9 views, so no table pays for it.
    nine = lambda run: TableCost(views=9, bytes=10)  # noqa: E731
    assert make_schedule(plan.runs, logits, ScheduleOptions(), table_cost=nine).table_runs == frozenset()


def test_method_traits_come_from_the_distiller_class(host) -> None:
    traits = {m: method_traits(host.distillers.get(m).builder) for m in ("kd", "crd_kd", "mlkd", "ab", "at")}
    assert traits["kd"] == MethodTraits(True, frozenset({"logits"}))
    assert traits["crd_kd"].lockstep  # a functools.partial of CRD
    assert not traits["mlkd"].lockstep and not traits["ab"].lockstep  # own views; phases
    assert traits["at"].teacher_signals == frozenset({"feats"})
    assert method_traits(lambda student, teacher, context: None) == MethodTraits(
        False, method_traits(None).teacher_signals
    )


# --- the teacher table ---------------------------------------------------------------------------------------------


def _digits_teacher(host):
    import torch

    torch.manual_seed(0)
    model = kdbench.create_model("digits_cnn_s", 10, host=host).eval()
    spec = host.datasets.get("digits")
    return model, spec, spec.loader(Path("."), False)


def test_table_rows_are_the_teachers_logits_of_each_view(host, tmp_path: Path) -> None:
    import torch

    from kdbench.augment import apply_views, draw_views, normalize
    from kdbench.table import build_table

    model, spec, data = _digits_teacher(host)
    table = build_table(model, data.train_images, spec, tmp_path, "k", batch_size=200)
    generator = torch.Generator().manual_seed(3)
    indices = torch.randperm(data.train_images.shape[0], generator=generator)[:64]
    views = draw_views(64, spec.augment.pad, spec.augment.flip, generator)
    with torch.no_grad():
        live = model(normalize(apply_views(data.train_images[indices], views, spec.augment.pad), spec.mean, spec.std))
    torch.testing.assert_close(table.logits(indices, views), live, rtol=1e-5, atol=1e-6)


def test_an_interrupted_table_build_resumes_and_a_damaged_table_is_refused(host, tmp_path: Path) -> None:
    import json

    import torch

    from kdbench.errors import CheckpointError
    from kdbench.table import TeacherTable, build_table

    model, spec, data = _digits_teacher(host)
    calls = {"n": 0}

    def failing_forward(module, inputs):
        calls["n"] += 1
        if calls["n"] == 5:  # the probe, then views 0, 1, 2 (one chunk each): killed in view 3
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(failing_forward)
    with pytest.raises(KeyboardInterrupt):
        build_table(model, data.train_images, spec, tmp_path / "a", "k", batch_size=2000)
    handle.remove()
    assert json.loads((tmp_path / "a" / "k.partial.json").read_text())["views_done"] == 3
    resumed = build_table(model, data.train_images, spec, tmp_path / "a", "k", batch_size=2000)
    whole = build_table(model, data.train_images, spec, tmp_path / "b", "k", batch_size=2000)
    assert torch.equal(resumed.values, whole.values) and not (tmp_path / "a" / "k.partial.json").exists()
    meta = json.loads((tmp_path / "a" / "k.json").read_text())
    assert (meta["views"], meta["images"], meta["classes"]) == (9, 1438, 10) and meta["build_seconds"] > 0
    path = tmp_path / "a" / "k.f32"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"k\.f32 does not match its digest"):
        TeacherTable.open(tmp_path / "a", "k", torch.device("cpu"))
