"""Executors: a plan driven through worker processes stores exactly what the serial run stores.

Every test starts real processes: the driver (`kdbench run --workers N`), its workers
(`kdbench execute PLAN --run ID …`), and, where a worker is killed, a real SIGKILL.
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
from conftest import make_distribution
from test_reliability import COUNTER, _stored

from kdbench.cli import main

SUITE = """
name = "executors"
description = "two seeds of a teacher, vanilla and kd, for executor tests"
dataset = "digits"
distillers = ["vanilla", "kd", "at"]
seeds = [0, 1]

[recipe]
epochs = EPOCHS
batch_size = 128
lr_milestones = [2]
eval_batch_size = 512

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"
"""
QUIET = ["--no-progress", "--latency-batch-sizes", "1", "--threads", "1"]


def _suite(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "executors.toml"
    path.write_text(SUITE.replace("EPOCHS", str(epochs)), encoding="utf-8")
    return path


def _args(suite: Path, root: Path, *extra: str) -> list[str]:
    return ["run", "--suite", str(suite), "--results", str(root / "r.sqlite"), "--work-dir", str(root / "runs"),
            "--teacher-root", str(root / "t"), *QUIET, *extra]  # fmt: skip


def _counted_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose kdbench processes log every run start (an installed observer plugin)."""
    site = tmp_path / "site"
    if not site.exists():
        site.mkdir()
        make_distribution(
            site, "kdbench-counter", "1.0", {"counter": "kdbench_fake_counter"}, {"kdbench_fake_counter": COUNTER}
        )
    return {**os.environ, "PYTHONPATH": str(site), "KDBENCH_TEST_STARTS": str(tmp_path / "starts.log")}


def _starts(tmp_path: Path) -> list[str]:
    log = tmp_path / "starts.log"
    return [line.split()[0] for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def _driver(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)  # fmt: skip


def _worker_of(run_id: str) -> int | None:
    """Return the pid of the `kdbench execute` process working on ``run_id``, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"execute" in argv and run_id.encode() in argv:
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The 8-epoch executor suite trained in this process, one run after the other (the reference)."""
    root = tmp_path_factory.mktemp("serial")
    assert main(_args(_suite(root, 8), root)) == 0
    return _stored(root / "r.sqlite")


def test_two_local_workers_store_exactly_the_serial_results(serial, tmp_path: Path, capsys) -> None:
    assert main(_args(_suite(tmp_path, 8), tmp_path, "--executor", "local", "--workers", "2")) == 0
    out = capsys.readouterr().out
    assert "[7/7]" in out and "7 finished, 0 diverged, 0 failed" in out
    assert _stored(tmp_path / "r.sqlite") == serial  # same ids, same numbers, every epoch
    assert len(list((tmp_path / "runs" / ".plans").glob("executors-*.json"))) == 1


def test_a_worker_killed_mid_run_is_retried_and_the_suite_ends_identical(serial, tmp_path: Path) -> None:
    env = _counted_env(tmp_path)
    driver = _driver(_args(_suite(tmp_path, 8), tmp_path, "--workers", "2"), env)
    victim, deadline = None, time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and driver.poll() is None:
        for checkpoint in (tmp_path / "runs").glob("*/checkpoint.pt"):
            pid = _worker_of(checkpoint.parent.name)
            if pid is not None and not (checkpoint.parent / "result.json").exists():
                os.kill(pid, signal.SIGKILL)
                victim = checkpoint.parent.name
                break
        time.sleep(0.02)
    output = driver.communicate(timeout=300)[0].decode()
    assert victim is not None, "no worker was caught mid-run:\n" + output
    assert driver.returncode == 0, output
    assert _starts(tmp_path).count(victim) == 2  # started, killed, resumed by the retry
    assert _stored(tmp_path / "r.sqlite") == serial


def test_two_drivers_on_one_plan_train_each_run_once(serial, tmp_path: Path) -> None:
    env = _counted_env(tmp_path)
    args = _args(_suite(tmp_path, 8), tmp_path, "--workers", "1")
    drivers = [_driver(args, env) for _ in range(2)]
    outputs = [driver.communicate(timeout=300)[0].decode() for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], "\n".join(outputs)
    trained = _starts(tmp_path)
    assert sorted(trained) == sorted(set(trained)) and len(trained) == len(serial)
    assert _stored(tmp_path / "r.sqlite") == serial


def test_an_unknown_executor_is_one_clear_error(tmp_path: Path, capsys) -> None:
    assert main(_args(_suite(tmp_path, 1), tmp_path, "--executor", "nosuch")) == 2
    err = capsys.readouterr().err
    assert "unknown executor 'nosuch'" in err and "kdbench list executors" in err and "Traceback" not in err
    assert main(["list", "executors"]) == 0
    assert "local" in capsys.readouterr().out
