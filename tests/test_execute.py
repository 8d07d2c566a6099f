"""One run executed from its serialised plan (what a Slurm job or a Ray task calls) = the same run in `kdbench run`.

Every run of a plan is executed by itself with ``kdbench execute PLAN --run ID`` (one in a
separate process), its result collected from its run directory with ``kdbench results
import``, and the store compared with the one ``kdbench run`` fills: same ids, same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.cli import main
from kdbench.plan import Plan, PruneRun, TeacherCheck, TrainRun
from kdbench.results import ResultsStore

pytestmark = pytest.mark.slow

#: Every run kind: a trained teacher, a checked teacher checkpoint, a derived (pruned) student with its
#: pruned weights and from scratch, distilled students, and distill-then-prune stages.
EVERY_KIND = """
name = "every-kind"
description = "one epoch of every run kind on digits"
dataset = "digits"
distillers = ["vanilla", "kd"]
seeds = [0]

[recipe]
epochs = 1
batch_size = 128
lr_milestones = []
eval_batch_size = 512

[teachers]
digits_cnn_m = "{checkpoint}"

[[pairs]]
teacher = "digits_cnn_l"
student = "digits_cnn_s"

[[pairs]]
teacher = "digits_cnn_m"
student = "pruned(digits_cnn_m, ratio=0.5, pruner=l1)"

[[pairs]]
teacher = "digits_cnn_m"
student = "pruned(digits_cnn_m, ratio=0.5, pruner=taylor, init=scratch)"

[[prune_after]]
pruner = "l1"
ratio = 0.3
finetune_epochs = 1
methods = ["kd"]
"""
_COMMON = ["--no-progress", "--latency-batch-sizes", "1"]


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """Return what must not depend on how a run was executed (no timings, dates or machine names)."""
    profile = dict(record["profile"] or {})
    for part in (profile, profile.get("pruning", {}).get("before", {})):
        part.pop("latency", None)
    curve = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["curve"]]
    keep = ("run_id", "suite", "kind", "status", "config", "best_top1", "last_top1", "best_epoch", "error")
    return {**{key: record[key] for key in keep}, "curve": curve, "profile": profile}


def _records(path: Path) -> dict[str, dict[str, Any]]:
    with ResultsStore(path, read_only=True) as store:
        return {record["run_id"]: _comparable(record) for record in store.records()}


def _execute_one_by_one(plan_file: Path, work: Path, separately: str) -> None:
    """Execute every run of the plan by itself, in plan order; the run ``separately`` in its own process."""
    for run in Plan.load(plan_file):
        arguments = ["execute", str(plan_file), "--run", run.run_id, "--work-dir", str(work), *_COMMON]
        if run.run_id != separately:
            assert main(arguments) == 0, run.label
            continue
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        command = [sys.executable, "-m", "kdbench.cli", *arguments]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"run {run.run_id} ({run.label}): finished" in result.stdout


def _round_trip(suite: str, tmp_path: Path, extra: list[str]) -> tuple[Plan, dict, dict]:
    plan_file = tmp_path / "plan.json"
    assert main(["plan", "--suite", suite, *extra, "-o", str(plan_file)]) == 0
    plan = Plan.load(plan_file)
    students = [run for run in plan if isinstance(run, TrainRun) and run.teacher is not None]
    _execute_one_by_one(plan_file, tmp_path / "workers", separately=students[-1].run_id)
    collected = tmp_path / "collected.sqlite"
    assert main(["results", "import", str(tmp_path / "workers"), "--results", str(collected)]) == 0
    serial = tmp_path / "serial.sqlite"
    run = ["run", "--suite", suite, *extra, "--results", str(serial), "--work-dir", str(tmp_path / "serial")]
    assert main([*run, *_COMMON]) == 0
    return plan, _records(collected), _records(serial)


def test_each_smoke_run_executed_by_itself_stores_what_kdbench_run_stores(tmp_path: Path) -> None:
    plan, collected, serial = _round_trip("smoke", tmp_path, ["--epochs", "2"])
    assert len(plan) == 13 and set(collected) == set(serial) == {run.run_id for run in plan}
    assert collected == serial
    assert all(record["status"] == "finished" for record in serial.values())


def test_every_run_kind_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "teacher.pt"
    torch.manual_seed(3)
    from kdbench import create_model

    torch.save({"model": create_model("digits_cnn_m", 10).state_dict()}, checkpoint)
    suite = tmp_path / "every-kind.toml"
    suite.write_text(EVERY_KIND.format(checkpoint=checkpoint), encoding="utf-8")
    plan, collected, serial = _round_trip(str(suite), tmp_path, [])
    kinds = {type(run) for run in plan}
    assert kinds == {TrainRun, TeacherCheck, PruneRun} and len(plan) == 13
    assert collected == serial and all(record["status"] == "finished" for record in serial.values())
    capsys.readouterr()
    # Executed again: a finished run is left alone; importing again changes nothing.
    finished = plan[-1]
    again = [
        "execute",
        str(tmp_path / "plan.json"),
        "--run",
        finished.run_id[:6],
        "--work-dir",
        str(tmp_path / "workers"),
    ]
    assert main(again) == 0 and "nothing to do" in capsys.readouterr().out
    db = tmp_path / "collected.sqlite"
    assert main(["results", "import", str(tmp_path / "workers"), "--results", str(db)]) == 0
    assert f"{len(plan)} result record(s)" in (out := capsys.readouterr().out) and f"{len(plan)} unchanged" in out


def test_a_run_whose_inputs_are_missing_is_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    assert (
        main(["plan", "--suite", "smoke", "-k", "kd digits_cnn_s seed=0", "--epochs", "1", "-o", str(plan_file)]) == 0
    )
    teacher, student = Plan.load(plan_file)
    arguments = ["execute", str(plan_file), "--work-dir", str(tmp_path / "w"), *_COMMON]
    assert main([*arguments, "--run", student.run_id]) == 2
    error = capsys.readouterr().err
    assert f"needs run {teacher.run_id}, which has no result in {tmp_path / 'w' / teacher.run_id}" in error
    assert not (tmp_path / "w" / student.run_id).exists()
    assert main([*arguments, "--run", "nope"]) == 2 and "has no run 'nope'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    assert main(["execute", str(tmp_path / "bad.json"), "--run", "x"]) == 2
    assert "is not a kdbench plan" in capsys.readouterr().err


def test_a_failed_run_records_its_failure_in_its_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "plan.json"
    missing = tmp_path / "nowhere.pt"
    assert main(["plan", "--suite", "smoke", "--teacher", f"digits_cnn_l={missing}", "-o", str(plan_file)]) == 0
    check = Plan.load(plan_file)[0]
    assert isinstance(check, TeacherCheck)
    arguments = ["execute", str(plan_file), "--run", check.run_id, "--work-dir", str(tmp_path / "w"), *_COMMON]
    assert main(arguments) == 1
    assert f"teacher checkpoint {missing} not found" in capsys.readouterr().err
    db = tmp_path / "r.sqlite"
    assert main(["results", "import", str(tmp_path / "w"), "--results", str(db)]) == 0
    with ResultsStore(db, read_only=True) as store:
        assert store.get(check.run_id)["status"] == "failed"
