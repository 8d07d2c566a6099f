"""A run killed mid-way (SIGKILL) resumes from its last checkpoint and ends with the same numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdbench.plan import plan_suite, select_runs
from kdbench.results import ResultsStore
from kdbench.suites import load_suite_file

SUITE = """
name = "resume"
description = "resume test"
dataset = "digits"
distillers = ["vanilla"]
seeds = [3]

[recipe]
epochs = 20
batch_size = 64
lr = 0.05
lr_milestones = [10, 15]

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"
"""


def _kdbench(*args: str) -> subprocess.Popen:
    # One intra-op thread: the same arithmetic in every process, and no spinning on a busy CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdbench", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )


def _finish(*args: str) -> None:
    process = _kdbench(*args)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output


def _wait_for_epoch(checkpoint: Path, epoch: int, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline, seen = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:  # a checkpoint write renames the latest away before the new one takes its name: retry then
            stamp = checkpoint.stat().st_mtime_ns
            reached = int(torch.load(checkpoint, weights_only=True)["epoch"]) if stamp != seen else -1
        except (FileNotFoundError, RuntimeError, EOFError):
            stamp, reached = 0, -1
        seen = stamp
        if reached >= epoch:
            return reached
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.02)
    raise AssertionError("the run never reached the epoch to kill it at")


def test_killed_run_resumes_to_identical_numbers(host, tmp_path: Path) -> None:
    suite_file = tmp_path / "resume.toml"
    suite_file.write_text(SUITE, encoding="utf-8")
    suite = load_suite_file(suite_file)
    (run,) = select_runs(plan_suite(suite, host), ["vanilla digits_cnn_s"])

    common = ["--suite", str(suite_file), "-k", "vanilla digits_cnn_s", "--no-progress"]
    _finish(*common, "--results", str(tmp_path / "reference.sqlite"), "--work-dir", str(tmp_path / "ref_runs"))
    with ResultsStore(tmp_path / "reference.sqlite") as store:
        reference = store.get(run.run_id)

    args = [*common, "--results", str(tmp_path / "killed.sqlite"), "--work-dir", str(tmp_path / "runs")]
    checkpoint = tmp_path / "runs" / run.run_id / "checkpoint.pt"
    process = _kdbench(*args)
    killed_at = _wait_for_epoch(checkpoint, 3, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert killed_at < 19, "killed too late to test resuming"
    assert not (tmp_path / "runs" / run.run_id / "final.pt").exists()

    _finish(*args)
    with ResultsStore(tmp_path / "killed.sqlite") as store:
        record = store.get(run.run_id)
    assert record["status"] == "finished"
    assert [e["test_top1"] for e in record["curve"]] == [e["test_top1"] for e in reference["curve"]]
    assert [e["losses"] for e in record["curve"]] == [e["losses"] for e in reference["curve"]]
    assert (record["best_top1"], record["last_top1"]) == (reference["best_top1"], reference["last_top1"])
