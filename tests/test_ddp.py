"""One run trained by two processes (DDP over gloo): the one-process loss curve, and an exact resume after a kill.

Every test starts real processes: ``kdbench execute PLAN --run ID --nproc-per-node 2`` launches
two ranks, torchrun's way, which join a gloo group and split every global batch between them.
The model has no BatchNorm (per-process batch statistics are DDP's, not one process's), so two
processes must give one process's numbers up to float summation order: losses within 1e-5
relative, the same test top-1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_distribution

from kdbench.plan import Plan

MLP = '''
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl


class FlatMLP(nn.Module):
    """An MLP for 8×8 digits without BatchNorm: two processes then compute one process's numbers."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(64, 32)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(32, num_classes)
        self.feature_taps = FeatureTaps(stages=("relu",), classifier="fc")

    def forward(self, x):
        return self.fc(self.relu(self.hidden(self.flat(x)).view(x.shape[0], 32, 1, 1)).flatten(1))


class FlatConv(nn.Module):
    """A BatchNorm-free conv net for 3×32×32 images (the streamed test dataset)."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        self.feature_taps = FeatureTaps(stages=("relu",), classifier="fc")

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@hookimpl
def kdbench_register_models():
    return [ModelSpec(name="flat_mlp", builder=FlatMLP, description="BN-free digits MLP (tests)",
                      input_size=(1, 8, 8), default_num_classes=10),
            ModelSpec(name="flat_conv", builder=FlatConv, description="BN-free conv net (tests)",
                      input_size=(3, 32, 32), default_num_classes=4)]


@hookimpl
def kdbench_register_datasets():
    from kdbench.testing import synthetic_files_spec

    return [synthetic_files_spec(4)]
'''
SUITE = """
name = "ddp"
description = "a BN-free MLP on digits, for DDP tests"
dataset = "digits"
distillers = ["vanilla"]
seeds = [0]

[recipe]
epochs = EPOCHS
batch_size = 64
lr = 0.1
lr_milestones = [3]
eval_batch_size = 512

[[pairs]]
teacher = "flat_mlp"
student = "flat_mlp"
"""
QUIET = ["--no-progress", "--latency-batch-sizes", "1", "--threads", "1"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "kdbench-flat-mlp", "1.0", {"flat_mlp": "kdbench_flat_mlp"}, {"kdbench_flat_mlp": MLP})
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


def _plan(tmp_path: Path, env: dict[str, str], epochs: int, streamed: bool = False) -> tuple[Path, str]:
    suite = tmp_path / "ddp.toml"
    text = SUITE.replace("EPOCHS", str(epochs))
    if streamed:  # the JPEG image folder, read by the pil loader, batch 16 split 8 + 8
        text = text.replace('"digits"', '"synthetic-files"').replace("flat_mlp", "flat_conv")
        text = text.replace("batch_size = 64", "batch_size = 16")
    suite.write_text(text, encoding="utf-8")
    plan_file = tmp_path / "plan.json"
    command = [sys.executable, "-m", "kdbench", "plan", "--suite", str(suite), "-o", str(plan_file)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    (run,) = Plan.load(plan_file)  # the vanilla run of flat_mlp (teacher and student are one run)
    return plan_file, run.run_id


def _execute(plan: Path, run_id: str, work: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "kdbench", "execute", str(plan), "--run", run_id, "--work-dir", str(work),
               *QUIET, *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()


def _curve(work: Path, run_id: str) -> list[tuple[float, float]]:
    record = json.loads((work / run_id / "result.json").read_text())
    assert record["status"] == "finished", record["error"]
    return [(entry["losses"]["ce"], entry["test_top1"]) for entry in record["curve"]]


def test_two_processes_give_one_process_curve(tmp_path: Path, env: dict[str, str]) -> None:
    plan, run_id = _plan(tmp_path, env, epochs=4)
    alone, pair = tmp_path / "one", tmp_path / "two"
    _finished(_execute(plan, run_id, alone, env))
    _finished(_execute(plan, run_id, pair, env, "--nproc-per-node", "2"))
    one, two = _curve(alone, run_id), _curve(pair, run_id)
    assert len(one) == len(two) == 4
    for (loss_1, top1_1), (loss_2, top1_2) in zip(one, two, strict=True):
        assert loss_2 == pytest.approx(loss_1, rel=1e-5)
        assert abs(top1_2 - top1_1) <= 100 / 359 + 1e-9  # at most one of the 359 test images flips
    record = json.loads((pair / run_id / "result.json").read_text())
    assert record["versions"]["execution"]["processes"] == 2
    names = sorted(p.name for p in (alone / run_id).iterdir())
    assert sorted(p.name for p in (pair / run_id).iterdir()) == names  # rank 1 wrote nothing of its own
    log = [len((work / run_id / "metrics.jsonl").read_text().splitlines()) for work in (alone, pair)]
    assert log[0] == log[1] == 4  # the loggers heard each epoch once (rank 0 tells the plugins)

    kdbench = [sys.executable, "-m", "kdbench"]
    database = ["--results", str(tmp_path / "r.sqlite")]
    subprocess.run([*kdbench, "results", "import", str(pair), *database], env=env, check=True, capture_output=True)
    board = [*kdbench, "leaderboard", "--suite", str(tmp_path / "ddp.toml"), "--out", str(tmp_path / "b"), *database]
    subprocess.run(board, env=env, check=True, capture_output=True)
    assert (
        "Distributed: runs trained by several processes (DDP; 1 by 2 processes)"
        in (tmp_path / "b" / "ddp.md").read_text()
    )


def test_two_processes_stream_one_process_curve(tmp_path: Path, env: dict[str, str]) -> None:
    """A streamed dataset: each rank's loader reads only its part of every batch, with the same crops."""
    from kdbench.testing import write_image_folder

    write_image_folder(tmp_path / "data" / "synthetic-files", num_classes=4, train=8, test=4)
    plan, run_id = _plan(tmp_path, env, epochs=2, streamed=True)
    data = ["--data-root", str(tmp_path / "data"), "--loader", "pil", "--loader-workers", "0"]
    _finished(_execute(plan, run_id, tmp_path / "one", env, *data))
    _finished(_execute(plan, run_id, tmp_path / "two", env, *data, "--nproc-per-node", "2"))
    one, two = _curve(tmp_path / "one", run_id), _curve(tmp_path / "two", run_id)
    for (loss_1, top1_1), (loss_2, top1_2) in zip(one, two, strict=True):
        assert loss_2 == pytest.approx(loss_1, rel=1e-5) and top1_2 == top1_1
    record = json.loads((tmp_path / "two" / run_id / "result.json").read_text())
    assert record["versions"]["execution"] == {"processes": 2, "loader": "pil"}
    assert record["curve"][0]["throughput"]["images_per_second"] > 0


def test_two_processes_resume_after_a_kill(tmp_path: Path, env: dict[str, str]) -> None:
    plan, run_id = _plan(tmp_path, env, epochs=6)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finished(_execute(plan, run_id, straight, env, "--nproc-per-node", "2"))

    victim = _execute(plan, run_id, killed, env, "--nproc-per-node", "2")
    checkpoint = killed / run_id / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    victim.wait()
    assert not (killed / run_id / "result.json").exists()

    _finished(_execute(plan, run_id, killed, env, "--nproc-per-node", "2"))
    assert _curve(killed, run_id) == _curve(straight, run_id)  # resumed: the same numbers, bit for bit
