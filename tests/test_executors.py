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


INLINE_EXECUTOR = """
import subprocess

from kdbench import hookimpl
from kdbench.executors import Ended, ExecutorSpec


class Inline:
    \"\"\"Runs each task to its end as it is submitted: the smallest executor there is.\"\"\"

    def __init__(self, options):
        self.ended = []

    def capacity(self):
        return 1

    def submit(self, task):
        self.ended.append(Ended(task, subprocess.run(task.command, check=False).returncode))

    def poll(self, timeout):
        ended, self.ended = self.ended, []
        return ended

    def shutdown(self, cancel):
        pass


@hookimpl
def kdbench_register_executors():
    return [ExecutorSpec(name="inline", builder=Inline, description="one task at a time, in the driver's turn")]
"""


def test_a_third_party_executor_drives_the_plan(
    serial, fake_site: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution(fake_site, "kdbench-fake-inline", "0.1", {"inline": "kdbench_fake_inline"},
                      {"kdbench_fake_inline": INLINE_EXECUTOR})  # fmt: skip
    assert main(["list", "executors"]) == 0
    assert "inline" in capsys.readouterr().out
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake_site), os.environ.get("PYTHONPATH")])))
    assert main(_args(_suite(tmp_path, 8), tmp_path, "--executor", "inline")) == 0  # its workers find it too
    assert _stored(tmp_path / "r.sqlite") == serial


# --- a real single-node Slurm cluster, and a local Ray cluster -------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running single-node Slurm cluster (started by .ci/slurm_up.sh), or a skip that says why not."""
    if sys.platform != "linux":
        pytest.skip("the Slurm test starts slurmctld/slurmd, which run on Linux")
    up = subprocess.run([str(REPO / ".ci" / "slurm_up.sh")], capture_output=True, text=True, timeout=600, check=False)
    if up.returncode != 0:
        pytest.skip(f"no Slurm cluster could be started here: {up.stderr.strip() or up.stdout.strip()}")
    pytest.importorskip("submitit", reason="the Slurm executor needs submitit (the dev extras install it)")


def _slurm_jobs() -> dict[str, str]:
    """Return job id → state of the jobs in the queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_slurm_runs_the_suite_and_a_cancelled_job_is_retried(slurm, serial, tmp_path: Path) -> None:
    env = _counted_env(tmp_path)
    args = _args(_suite(tmp_path, 8), tmp_path, "--executor", "slurm")
    driver = _driver([*args, "--executor-option", f"slurm_folder={tmp_path / 'slurm'}"], env)
    cancelled, deadline = None, time.monotonic() + 240
    while cancelled is None and time.monotonic() < deadline and driver.poll() is None:
        running = {job for job, state in _slurm_jobs().items() if state == "RUNNING"}
        for checkpoint in (tmp_path / "runs").glob("*/checkpoint.pt"):
            run_id = checkpoint.parent.name
            job = _job_of(tmp_path / "slurm", run_id)
            if job in running and not (checkpoint.parent / "result.json").exists():
                subprocess.run(["scancel", job], check=False)  # mid-run: it has a checkpoint, no result
                cancelled = run_id
                break
        time.sleep(0.1)
    output = driver.communicate(timeout=600)[0].decode()
    assert driver.returncode == 0, output
    assert cancelled is not None, "no Slurm job was caught mid-run:\n" + output
    assert _starts(tmp_path).count(cancelled) >= 2  # cancelled mid-run, then resumed by the driver's retry
    assert _stored(tmp_path / "r.sqlite") == serial


def _job_of(folder: Path, run_id: str) -> str | None:
    """Return the Slurm job whose submitted command names ``run_id`` (submitit keeps each job's pickle)."""
    for pickle in folder.glob("*_submitted.pkl"):
        if run_id.encode() in pickle.read_bytes():
            return pickle.name.split("_")[0]
    return None


def test_a_local_ray_cluster_runs_the_suite_with_identical_results(serial, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray executor needs ray (the dev extras install it)")
    args = _args(_suite(tmp_path, 8), tmp_path, "--executor", "ray", "--executor-option", "ray_cpus=1")
    driver = _driver(args, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    output = driver.communicate(timeout=600)[0].decode()
    assert driver.returncode == 0, output
    assert "7 finished, 0 diverged, 0 failed" in output
    assert _stored(tmp_path / "r.sqlite") == serial


def test_slurm_no_wait_submits_the_whole_plan_then_status_and_collect(slurm, serial, tmp_path: Path, capsys) -> None:
    args = _args(_suite(tmp_path, 8), tmp_path, "--executor", "slurm", "--no-wait")
    assert main([*args, "--executor-option", f"slurm_folder={tmp_path / 'slurm'}"]) == 0
    capsys.readouterr()
    selection = ["--suite", str(tmp_path / "executors.toml"), "--work-dir", str(tmp_path / "runs")]
    assert main(["status", *selection]) == 0
    assert "queued" in capsys.readouterr().out  # the students wait on the teacher's job (afterany)
    deadline = time.monotonic() + 300
    while _slurm_jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert main(["status", *selection]) == 0
    assert "7 finished" in capsys.readouterr().out
    assert main(["collect", *selection, "--results", str(tmp_path / "r.sqlite")]) == 0
    assert "7 results collected" in capsys.readouterr().out
    assert _stored(tmp_path / "r.sqlite") == serial


def test_ctrl_c_on_the_driver_keeps_what_finished_and_the_rest_resumes(serial, tmp_path: Path) -> None:
    args = _args(_suite(tmp_path, 8), tmp_path, "--workers", "2")
    driver = _driver(args, dict(os.environ))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        finished = list((tmp_path / "runs").glob("*/result.json"))
        started = [c for c in (tmp_path / "runs").glob("*/checkpoint.pt") if not (c.parent / "result.json").exists()]
        if finished and started:
            break
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the driver
    output = driver.communicate(timeout=120)[0].decode()
    assert driver.returncode != 0, output
    kept = _stored(tmp_path / "r.sqlite")
    assert kept and all(serial[run_id] == record for run_id, record in kept.items())  # nothing half-stored
    assert len(kept) < len(serial)
    assert main(args) == 0
    assert _stored(tmp_path / "r.sqlite") == serial


def test_a_failed_teacher_under_workers_fails_its_students_without_running_them(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.pth").write_text("garbage", encoding="utf-8")
    args = _args(_suite(tmp_path, 1), tmp_path, "--workers", "1", "--teacher", f"digits_cnn_m={tmp_path / 'bad.pth'}")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "(4 runs wait on it)" in err and "cannot read checkpoint" in err  # kd and at, two seeds each
    students = [r for r in _stored(tmp_path / "r.sqlite").values() if r["config"]["distiller"] in ("kd", "at")]
    assert len(students) == 4 and {r["status"] for r in students} == {"failed"}
    assert not any(
        (tmp_path / "runs" / run_id / "result.json").exists() for run_id in map(lambda r: r["run_id"], students)
    )


def test_local_slots_give_each_ddp_run_its_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdbench_plugins.executors.local import LocalExecutor

    from kdbench.executors import ExecutorOptions

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    pairs = LocalExecutor(ExecutorOptions(device="cuda", processes_per_run=2))
    assert [slot.gpu for slot in pairs.slots] == ["0,1", "2,3"]  # GPU 4 alone cannot hold a 2-process run
    single = LocalExecutor(ExecutorOptions(device="cuda", runs_per_gpu=2))
    assert [slot.gpu for slot in single.slots] == ["0", "0", "1", "1", "2", "2", "3", "3", "4", "4"]
    with pytest.raises(ValueError, match="a run of 8 processes needs 8 GPUs; 5 visible"):
        LocalExecutor(ExecutorOptions(device="cuda", processes_per_run=8))
