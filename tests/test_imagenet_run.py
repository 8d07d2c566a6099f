"""The ImageNet board end to end on generated data: a streamed KD run trains, its teacher is checked, a board renders.

The data is a 4-class ImageFolder of JPEGs in ImageNet's layout (wnid folders under
``imagenet/{train,val}``) and the teacher a state_dict file named as torchvision's ResNet-34 V1
weights, so the command line is the one a user types on a real ImageNet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torchvision

from kdbench.cli import main
from kdbench.testing import write_image_folder

QUIET = ["--no-progress", "--latency-batch-sizes", "1", "--loader-workers", "0"]


def _imagenet(root: Path) -> Path:
    folder = write_image_folder(root / "imagenet", num_classes=4, train=4, test=2, sizes=(40, 80))
    for split in ("train", "val"):
        for index, name in enumerate(sorted(os.listdir(folder / split))):
            (folder / split / name).rename(folder / split / f"n0144076{index}")  # wnid-like class folders
    return root


def test_one_epoch_of_the_imagenet_board_trains_and_renders(tmp_path: Path, capsys) -> None:
    data = _imagenet(tmp_path / "data")
    torch.manual_seed(0)
    teacher = tmp_path / "resnet34-b627a593.pth"  # torchvision's ResNet34_Weights.IMAGENET1K_V1 file name
    torch.save(torchvision.models.resnet34().state_dict(), teacher)
    common = ["--results", str(tmp_path / "r.sqlite"), "--teacher", f"resnet34={teacher}"]
    run = ["run", "--suite", "imagenet", "-k", "kd resnet18 seed=0", "--epochs", "1", "--data-root", str(data),
           "--work-dir", str(tmp_path / "runs"), *common, *QUIET]  # fmt: skip
    assert main(run) == 0
    out = capsys.readouterr()
    assert "2 finished, 0 diverged, 0 failed" in out.out
    assert "has 4 classes, 16 train and 8 val images, not ILSVRC2012's" in out.err
    assert "images/s" in out.err and "waiting for data (pil)" in out.err

    records = {}
    for result in (tmp_path / "runs").glob("*/result.json"):
        record = json.loads(result.read_text())
        records[record["config"].get("distiller", "teacher")] = record
    kd = records["kd"]
    assert kd["config"]["recipe"]["batch_size"] == 512 and kd["config"]["recipe"]["lr"] == 0.2  # MDistiller's KD
    assert kd["versions"]["execution"]["loader"] == "pil" and kd["versions"]["data"]["verified"] is False
    assert kd["curve"][0]["throughput"]["images_per_second"] > 0
    assert kd["profile"]["params"] == 11_689_512  # torchvision's ResNet-18

    board_dir = tmp_path / "boards"
    board = ["leaderboard", "--suite", "imagenet", "--epochs", "1", "--out", str(board_dir), *common]
    assert main(board) == 0
    text = (board_dir / "imagenet.md").read_text()
    assert "2/16 runs stored" in text and "Recipe: 1 epoch" in text
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd "))
    assert "(n=1) ⚠unverified data · paper 71.03" in kd_row
    assert "Images read by the loaders `pil` 2 (the same crops" in text
    capsys.readouterr()
    assert main(["leaderboard", "--suite", "imagenet", "--epochs", "1", *common]) == 2  # never over the suite's board
    assert "give --suite and an --out other than leaderboards" in capsys.readouterr().err
