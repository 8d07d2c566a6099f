"""Nothing lost, nothing done twice: concurrent drivers, lost stores and run directories, faults met before
work, checkpoints that survive a crash or a full disk, and records that say what produced them."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_distribution

import kdbench
from kdbench.cli import main
from kdbench.engine import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME
from kdbench.plan import TrainRun
from kdbench.results import ResultsStore, read_jsonl

SUITE = """
name = "reliable"
description = "three short runs on digits"
dataset = "digits"
distillers = ["vanilla", "kd"]
seeds = [0]

[recipe]
epochs = 3
batch_size = 128
lr_milestones = [2]
eval_batch_size = 512

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"
"""
_QUIET = ["--no-progress", "--latency-batch-sizes", "1", "--threads", "1"]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "reliable.toml"
    path.write_text(SUITE, encoding="utf-8")
    return path


def _run(suite: Path, tmp_path: Path, *extra: str, results: str = "r.sqlite", work: str = "runs") -> list[str]:
    return ["run", "--suite", str(suite), "--results", str(tmp_path / results), "--work-dir", str(tmp_path / work),
            *_QUIET, *extra]  # fmt: skip


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("run_id", "kind", "status", "config", "best_top1", "last_top1", "best_epoch")
    curve = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["curve"]]
    return {**{key: record[key] for key in keep}, "curve": curve}


def _stored(path: Path) -> dict[str, dict[str, Any]]:
    with ResultsStore(path, read_only=True) as store:
        return {record["run_id"]: _comparable(record) for record in store.records()}


# ---------------------------------------------------------------------------------------------------------------------
# Concurrent drivers

COUNTER = """
import os

from kdbench import hookimpl


@hookimpl
def kdbench_run_start(run):
    with open(os.environ["KDBENCH_TEST_STARTS"], "a", encoding="utf-8") as log:
        log.write(f"{run.run_id} {os.getpid()}\\n")
"""


def test_concurrent_drivers_train_each_run_once_and_all_succeed(suite: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(
        site, "kdbench-counter", "1.0", {"counter": "kdbench_fake_counter"}, {"kdbench_fake_counter": COUNTER}
    )
    starts = tmp_path / "starts.log"
    env = {**os.environ, "PYTHONPATH": str(site), "KDBENCH_TEST_STARTS": str(starts), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kdbench.cli", *_run(suite, tmp_path)]
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for _ in range(3)]
    outputs = [driver.communicate(timeout=600)[0].decode() for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0, 0], "\n".join(outputs)
    trained = [line.split()[0] for line in starts.read_text(encoding="utf-8").splitlines()]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 3  # teacher, vanilla, kd: each once
    stored = _stored(tmp_path / "r.sqlite")
    assert len(stored) == 3 and {r["status"] for r in stored.values()} == {"finished"}
    assert sum("done by another kdbench" in output for output in outputs) >= 1, "\n".join(outputs)
    assert main(_run(suite, tmp_path, results="serial.sqlite", work="serial")) == 0
    assert _stored(tmp_path / "serial.sqlite") == stored  # the same numbers as one driver alone


# ---------------------------------------------------------------------------------------------------------------------
# Lost run directories, lost stores


def test_deleted_run_directories_retrain_only_what_a_pending_run_needs(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run(suite, tmp_path)) == 0
    stored = _stored(tmp_path / "r.sqlite")
    capsys.readouterr()
    assert main([*_run(suite, tmp_path, work="elsewhere"), "--dry-run"]) == 0
    assert "3 runs, 3 already stored" in capsys.readouterr().out
    assert main(_run(suite, tmp_path, work="elsewhere")) == 0  # a new --work-dir: no teacher weights there
    assert "0 finished, 0 diverged, 0 failed, 3 already stored" in capsys.readouterr().out
    assert not (tmp_path / "elsewhere").exists()  # nothing retrained
    student = next(run_id for run_id, record in stored.items() if record["config"]["distiller"] == "kd")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.delete(student)
    assert main([*_run(suite, tmp_path, work="elsewhere"), "--dry-run"]) == 0
    assert "3 runs, 1 already stored" in capsys.readouterr().out  # the kd student, and the teacher it needs
    assert main(_run(suite, tmp_path, work="elsewhere")) == 0
    assert "2 finished, 0 diverged, 0 failed, 1 already stored" in capsys.readouterr().out
    assert _stored(tmp_path / "r.sqlite") == stored  # the teacher retrained to the same numbers


def test_a_lost_store_is_rebuilt_from_the_run_directories_without_training(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run(suite, tmp_path)) == 0
    stored = _stored(tmp_path / "r.sqlite")
    (tmp_path / "r.sqlite").unlink()
    capsys.readouterr()
    assert main([*_run(suite, tmp_path), "--dry-run"]) == 0
    assert "3 runs, 3 already stored" in capsys.readouterr().out
    assert main(_run(suite, tmp_path)) == 0
    assert "0 finished, 0 diverged, 0 failed, 3 already stored (3 imported from run directories)" in (
        capsys.readouterr().out
    )
    assert _stored(tmp_path / "r.sqlite") == stored
    assert main(["results", "import", str(tmp_path / "runs"), "--results", str(tmp_path / "new.sqlite")]) == 0
    assert "3 new" in capsys.readouterr().out and _stored(tmp_path / "new.sqlite") == stored


def test_a_damaged_store_is_refused_before_any_training(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:  # a store with enough rows to have data pages
        for index in range(300):
            store.put({**_record(f"{index:016x}"), "config": {"pad": "x" * 300}})
    data = bytearray((tmp_path / "r.sqlite").read_bytes())
    data[-20000:-17000] = bytes(3000)  # zeroes in the middle of a data page, as a torn write leaves
    (tmp_path / "r.sqlite").write_bytes(bytes(data))
    assert main(_run(suite, tmp_path)) == 2
    error = capsys.readouterr().err
    assert "is damaged" in error and "left untouched" in error and "kdbench results import" in error
    assert (tmp_path / "r.sqlite").read_bytes() == bytes(data) and not (tmp_path / "runs").exists()


def test_a_store_that_cannot_be_written_is_refused_before_any_training(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ResultsStore(tmp_path / "r.sqlite").close()
    holder = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock: reads work, writes wait
    try:
        with pytest.raises(kdbench.KdbenchError, match="cannot be written .*database is locked"):
            ResultsStore(tmp_path / "r.sqlite", timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _record(run_id: str, **changes: Any) -> dict[str, Any]:
    record = {
        "run_id": run_id, "suite": "x", "kind": "student", "status": "finished", "config": {}, "best_top1": 1.0,
        "last_top1": 1.0, "best_epoch": 0, "curve": [], "profile": None, "wall_seconds": 1.0, "versions": {},
        "device": "", "git_commit": "", "error": "", "created": None,
    }  # fmt: skip
    return {**record, **changes}


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def _student(suite: Path, host: kdbench.PluginHost) -> TrainRun:
    plan = kdbench.plan_suite(kdbench.load_suite_file(suite), host)
    return next(run for run in plan if isinstance(run, TrainRun) and run.method == "vanilla" and run.role == "student")


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    host: kdbench.PluginHost, suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    student = _student(suite, host)
    only = ["-k", student.run_id]
    assert main(_run(suite, tmp_path, *only, results="reference.sqlite", work="reference")) == 0
    reference = _stored(tmp_path / "reference.sqlite")[student.run_id]

    work = tmp_path / "runs" / student.run_id
    real_save, saves = torch.save, []

    def crash_after_two_epochs(payload: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(payload)
        if len(saves) > 2:
            raise KeyboardInterrupt  # the process dies after two checkpoints
        real_save(payload, handle, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", crash_after_two_epochs)
        assert main(_run(suite, tmp_path, *only)) == 130
    assert torch.load(work / PREVIOUS_CHECKPOINT_NAME, weights_only=True)["epoch"] == 0
    (work / CHECKPOINT_NAME).write_bytes(b"torn")  # the latest generation is unreadable
    capsys.readouterr()
    assert main(_run(suite, tmp_path, *only)) == 0
    assert "is unreadable; resuming from the previous one, checkpoint.prev.pt" in capsys.readouterr().err
    assert _stored(tmp_path / "r.sqlite")[student.run_id] == reference
    assert not (work / CHECKPOINT_NAME).exists() and not (work / PREVIOUS_CHECKPOINT_NAME).exists()  # finished


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    host: kdbench.PluginHost, suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    student = _student(suite, host)
    only = ["-k", student.run_id]
    assert main(_run(suite, tmp_path, *only, results="reference.sqlite", work="reference")) == 0
    reference = _stored(tmp_path / "reference.sqlite")[student.run_id]
    work = tmp_path / "runs" / student.run_id
    real_save, saves = torch.save, []

    def disk_full_at_the_second_epoch(payload: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(payload)
        if len(saves) == 2:
            handle.write(b"\x00" * 1000)  # part of the file got written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(payload, handle, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", disk_full_at_the_second_epoch)
        assert main(_run(suite, tmp_path, *only)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert torch.load(work / CHECKPOINT_NAME, weights_only=True)["epoch"] == 0  # the last good one survived
    assert not list(work.glob(".*.tmp"))  # the partial file was removed
    assert main(_run(suite, tmp_path, *only)) == 0  # space again: it resumes
    assert _stored(tmp_path / "r.sqlite")[student.run_id] == reference


def test_final_weights_already_in_a_run_directory_are_never_discarded(
    host: kdbench.PluginHost, suite: Path, tmp_path: Path
) -> None:
    student = _student(suite, host)
    only = ["-k", student.run_id]
    assert main(_run(suite, tmp_path, *only)) == 0
    work = tmp_path / "runs" / student.run_id
    earlier = (work / "final.pt").read_bytes()
    (work / "result.json").unlink()  # a run directory from before result files, and its store lost
    (tmp_path / "r.sqlite").unlink()
    assert main(_run(suite, tmp_path, *only)) == 0  # trained again: nothing says it finished
    assert (work / "final.prev.pt").read_bytes() == earlier and (work / "final.pt").is_file()


def test_a_failed_run_is_one_line_and_its_dependents_are_counted(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "teacher.pt"
    broken.write_bytes(b"\x80not a checkpoint")
    assert main([*_run(suite, tmp_path), "--teacher", f"digits_cnn_m={broken}"]) == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(error_lines) == 1 and "(1 run waits on it)" in error_lines[0], error_lines
    assert "weights_only=False" not in error_lines[0] and "arbitrary code" not in error_lines[0]
    assert "not a file of weights torch can read safely" in error_lines[0]
    assert broken.read_bytes() == b"\x80not a checkpoint"


# ---------------------------------------------------------------------------------------------------------------------
# Provenance


def test_records_say_what_produced_them(suite: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    subprocess.run(["git", "init", "-q", str(foreign)], check=True)
    subprocess.run(
        ["git", "-C", str(foreign), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty",
         "-m", "x"], check=True,
    )  # fmt: skip
    foreign_head = subprocess.run(["git", "-C", str(foreign), "rev-parse", "HEAD"], capture_output=True, text=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(foreign)  # run from inside another repository
        assert main([*_run(suite, tmp_path, "-k", "teacher"), "--threads", "1"]) == 0
    with ResultsStore(tmp_path / "r.sqlite", read_only=True) as store:
        (record,) = store.records()
    environment = record["versions"]
    assert environment["threads"] == 1 and environment["torch"] == torch.__version__
    assert environment["data"]["verified"] is None and len(environment["data"]["digest"]) == 16
    assert record["git_commit"] != foreign_head.stdout.strip()
    repo = Path(kdbench.__file__).resolve().parents[1]
    own = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if own.returncode == 0:  # a git checkout of kdbench: its own commit, clean or modified
        assert record["git_commit"] == own.stdout.strip()
        assert environment["kdbench_source"] in ("clean", "modified")


def test_compare_names_cells_whose_environment_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = read_jsonl(Path(kdbench.__file__).resolve().parents[1] / "leaderboards" / "smoke.jsonl")
    one = [{**r, "versions": {**r["versions"], "threads": 1}} for r in records]
    two = [{**r, "versions": {**r["versions"], "threads": 2}} for r in records]
    for name, rows in (("one.jsonl", one), ("two.jsonl", two)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["compare", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl"), "--fail-on", "any"]) == 0
    out = capsys.readouterr().out
    assert (
        "environment differs" in out and "threads 1 vs 2" in out and "5 compare runs of different environments" in out
    )
    assert main(["compare", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl"), "--fail-on", "environment"]) == 1
    fast = [{**r, "versions": {**r["versions"], "execution": {"switches": ["bf16", "channels_last"]}}} for r in one]
    (tmp_path / "fast.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fast), encoding="utf-8")
    assert main(["compare", str(tmp_path / "one.jsonl"), str(tmp_path / "fast.jsonl"), "--fail-on", "environment"]) == 1
    assert "switches none vs bf16,channels_last" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# Smaller things users met


def test_a_negative_learning_rate_is_refused_before_anything_runs(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite.write_text(SUITE.replace("batch_size = 128", "batch_size = 128\nlr = -0.05"), encoding="utf-8")
    assert main(_run(suite, tmp_path)) == 2
    assert "[recipe] lr must be a positive number, got -0.05" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()
    bad = kdbench.SuiteSpec(
        name="x", description="", dataset="digits", pairs=(kdbench.PairSpec("digits_cnn_m", "digits_cnn_s"),),
        recipe=kdbench.Recipe(momentum=1.5),
    )  # fmt: skip
    with pytest.raises(kdbench.KdbenchError, match=r"\[recipe\]: momentum must be a number in \[0, 1\)"):
        kdbench.plan_suite(bad, kdbench.create_plugin_host())


def test_dry_run_checks_teacher_files_and_options(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.pt"
    assert main([*_run(suite, tmp_path), "--dry-run", "--teacher", f"digits_cnn_m={missing}"]) == 2
    captured = capsys.readouterr()
    assert "3 runs, 0 already stored" in captured.out and f"teacher checkpoint {missing} not found" in captured.err
    assert main([*_run(suite, tmp_path), "--dry-run", "--latency-batch-sizes", "0"]) == 2
    assert main([*_run(suite, tmp_path), "--dry-run", "--threads", "0"]) == 2


def test_export_to_dash_writes_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    results = Path(kdbench.__file__).resolve().parents[1] / "leaderboards" / "smoke.jsonl"
    monkeypatch.chdir(tmp_path)
    assert main(["results", "export", "--format", "jsonl", "--results", str(results), "-o", "-"]) == 0
    assert capsys.readouterr().out.count("\n") == 13 and not (tmp_path / "-").exists()


def test_show_prints_the_seconds_of_every_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    results = Path(kdbench.__file__).resolve().parents[1] / "leaderboards" / "smoke.jsonl"
    record = read_jsonl(results)[0]
    assert main(["show", record["run_id"], "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "seconds" in out and f"{record['curve'][-1]['seconds']:.2f}" in out


def test_strict_plugins_names_the_plugin_whose_hook_raised(fake_site: Path) -> None:
    broken = "from kdbench import hookimpl\n\n@hookimpl\ndef kdbench_register_models():\n    raise RuntimeError('x')\n"
    make_distribution(
        fake_site, "kdbench-fake-raiser", "1", {"raiser": "kdbench_fake_raiser"}, {"kdbench_fake_raiser": broken}
    )
    with pytest.raises(kdbench.KdbenchError, match=r"plugin 'raiser' raised in kdbench_register_models"):
        kdbench.create_plugin_host(strict=True).models  # noqa: B018
