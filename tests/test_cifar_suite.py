"""The CIFAR-100 suite end to end on a tiny file in torchvision's on-disk format (CPU, one epoch)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import torch
from kdbench_plugins.datasets.cifar import CIFAR100_LAYOUT, load_cifar
from test_datasets import _write_fake_cifar

from kdbench.cli import main
from kdbench.results import ResultsStore


def test_cifar100_similar_trains_teacher_then_kd_student_on_tiny_cifar(tmp_path: Path, capsys) -> None:
    _write_fake_cifar(tmp_path / "data", "cifar100")
    results, work = tmp_path / "r.sqlite", tmp_path / "runs"
    args = ["run", "--suite", "cifar100-similar", "--epochs", "1", "-k", "kd resnet20←resnet56 seed=0"]
    args += ["--data-root", str(tmp_path / "data"), "--results", str(results), "--work-dir", str(work)]
    assert main([*args, "--no-progress", "--latency-batch-sizes", "1,4"]) == 0
    assert "2 finished, 0 diverged, 0 failed" in capsys.readouterr().out
    with ResultsStore(results) as store:
        records = {r["kind"]: r for r in store.records()}
    teacher, student = records["teacher"], records["student"]
    assert (teacher["config"]["student"], teacher["config"]["distiller"]) == ("resnet56", "vanilla")
    assert student["config"]["teacher"] == {"arch": "resnet56", "run": teacher["run_id"]}
    assert student["config"]["recipe"]["batch_size"] == 64 and student["config"]["recipe"]["lr"] == 0.05
    assert student["profile"]["params"] == 278_324 and round(student["profile"]["macs"] / 1e6, 1) == 41.2
    assert {lat["batch_size"] for lat in student["profile"]["latency"]} == {1, 4}
    # Generated files are not torchvision's: every record says the data is unverified, and by what digest.
    assert student["versions"]["data"]["verified"] is False and len(student["versions"]["data"]["digest"]) == 16
    weights = torch.load(work / teacher["run_id"] / "final.pt", weights_only=True)
    assert weights["arch"] == "resnet56" and len(weights["model"]) == 344
    assert main([*args, "--dry-run"]) == 0
    assert "2 runs, 2 already stored" in capsys.readouterr().out


def test_cifar10_suite_without_data_names_the_folder(tmp_path: Path, capsys) -> None:
    code = main(["run", "--suite", "cifar10", "--data-root", str(tmp_path), "--results", str(tmp_path / "r.db")])
    assert code == 2
    assert str(tmp_path / "cifar-10-batches-py") in capsys.readouterr().err


def test_files_with_the_published_md5s_are_verified(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path, "cifar100")
    assert load_cifar(CIFAR100_LAYOUT, tmp_path, False).verified is False  # not torchvision's files
    folder = tmp_path / CIFAR100_LAYOUT.folder
    published = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in CIFAR100_LAYOUT.md5}
    assert load_cifar(replace(CIFAR100_LAYOUT, md5=published), tmp_path, False).verified is True
    assert CIFAR100_LAYOUT.md5["train"] == "16019d7e3df5f24257cddd939b257f8d"  # torchvision/datasets/cifar.py
