"""Streaming datasets: crops as torchvision draws and applies them, loaders that agree, exact resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdbench
from kdbench import ResizedCropSpec
from kdbench.engine import EngineOptions, RunState, calibration_batches, draw_epoch, evaluate_top1, train
from kdbench.errors import KdbenchError
from kdbench.records import RunInfo
from kdbench.specs import Recipe
from kdbench.stream import StreamRequest, eval_geometry, train_geometry
from kdbench.testing import synthetic_files_spec, tiny_model, write_image_folder

RECIPE = Recipe(epochs=2, batch_size=8, lr=0.05, lr_milestones=(), eval_batch_size=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a 4-class JPEG image folder (8 train / 4 val images per class, 40–72 px sides)."""
    root = tmp_path_factory.mktemp("data")
    write_image_folder(root / "synthetic-files", num_classes=4, train=8, test=4)
    return root


@pytest.fixture(scope="module")
def loaders(host: kdbench.PluginHost) -> dict[str, kdbench.stream.LoaderSpec]:
    return {spec.name: spec for spec in host.loaders}


def _request(files: tuple[str, ...], train: bool, size: int = 32, workers: int = 0) -> StreamRequest:
    order = np.arange(len(files))[::-1].copy()
    keys = np.arange(len(files), dtype=np.int64) * 7919 + 11 if train else None
    sizes = (10, 10, len(files) - 20)
    return StreamRequest(files, order, keys, sizes, size, ResizedCropSpec(eval_resize=36), torch.device("cpu"), workers)


def test_random_resized_crop_draws_as_torchvision() -> None:
    """Area fraction and log aspect ratio have torchvision's distribution; every box fits its image."""
    from torchvision.transforms import RandomResizedCrop

    width, height, draws = 500, 375, 4000
    ours = [train_geometry(width, height, key, ResizedCropSpec()) for key in range(draws)]
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = [RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(draws)]
    for boxes in (ours, [(i, j, h, w) for i, j, h, w in theirs]):
        for box in boxes:
            top, left, h, w = (box.top, box.left, box.height, box.width) if not isinstance(box, tuple) else box
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    area = [np.mean([b.height * b.width for b in ours]), np.mean([h * w for _, _, h, w in theirs])]
    aspect = [
        np.mean([math.log(b.width / b.height) for b in ours]),
        np.mean([math.log(w / h) for _, _, h, w in theirs]),
    ]
    centre = [np.mean([b.left + b.width / 2 for b in ours]), np.mean([j + w / 2 for _, j, _, w in theirs])]
    assert abs(area[0] - area[1]) / (width * height) < 0.015
    assert abs(aspect[0] - aspect[1]) < 0.02
    assert abs(centre[0] - centre[1]) < 4
    flips = np.mean([b.flip for b in ours])
    assert 0.47 < flips < 0.53


def test_random_resized_crop_falls_back_to_torchvision_central_crop() -> None:
    from torchvision.transforms import RandomResizedCrop

    box = train_geometry(1000, 10, 5, ResizedCropSpec())  # no try fits: the clamped central crop
    assert (box.top, box.left, box.height, box.width) == RandomResizedCrop.get_params(
        torch.zeros(3, 10, 1000), (0.08, 1.0), (3 / 4, 4 / 3)
    )


def test_the_same_key_gives_the_same_crop() -> None:
    first = train_geometry(333, 250, 42, ResizedCropSpec())
    assert train_geometry(333, 250, 42, ResizedCropSpec()) == first
    assert any(train_geometry(333, 250, key, ResizedCropSpec()) != first for key in range(43, 50))


def test_pil_loader_is_torchvision_pixel_for_pixel(folder: Path, loaders) -> None:
    """Eval is Resize(R) + CenterCrop(S); train is resized_crop(box) + flip: torchvision's own functions."""
    from torchvision.transforms import CenterCrop, Compose, Resize
    from torchvision.transforms import functional as tvf

    files = synthetic_files_spec(4).loader(folder, False).train_files
    for is_train in (False, True):
        request = _request(files, is_train)
        batches = torch.cat(list(loaders["pil"].load(request)))
        for row, position in enumerate(range(len(files))):
            with Image.open(files[request.order[position]]) as opened:
                image = opened.convert("RGB")
            if is_train:
                box = train_geometry(image.width, image.height, int(request.keys[position]), request.augment)
                expected = tvf.resized_crop(image, box.top, box.left, box.height, box.width, [32, 32])
                expected = tvf.hflip(expected) if box.flip else expected
            else:
                expected = Compose([Resize(36), CenterCrop(32)])(image)
            assert torch.equal(batches[row], torch.from_numpy(np.array(expected)).permute(2, 0, 1)), (is_train, row)


def test_eval_geometry_is_torchvision_resize_then_centre_crop() -> None:
    assert eval_geometry(500, 375, 256, 224) == ((341, 256), kdbench.stream.Box(16, 58, 224, 224))
    with pytest.raises(ValueError, match="smaller than"):
        eval_geometry(500, 375, 200, 224)


def test_loaders_agree_and_workers_change_nothing(folder: Path, loaders) -> None:
    """``decode`` (torchvision.io + tensor resize) is PIL's pipeline up to rounding; worker processes change no byte."""
    files = synthetic_files_spec(4).loader(folder, False).train_files
    for is_train in (True, False):
        pil = torch.cat(list(loaders["pil"].load(_request(files, is_train))))
        in_workers = torch.cat(list(loaders["pil"].load(_request(files, is_train, workers=2))))
        decoded = torch.cat(list(loaders["decode"].load(_request(files, is_train))))
        assert torch.equal(pil, in_workers)
        difference = (pil.int() - decoded.int()).abs()
        assert difference.max() <= 2 and difference.float().mean() < 0.05, (is_train, difference.max())
        assert pil.shape == (len(files), 3, 32, 32) and pil.dtype == torch.uint8


def _state(folder: Path, loader, recipe: Recipe = RECIPE, **options) -> RunState:
    spec = synthetic_files_spec(4)
    torch.manual_seed(0)
    student = tiny_model("tiny_student", 4)
    vanilla = kdbench.get_distiller("vanilla")
    engine = EngineOptions(loader=loader, **options)
    data = spec.loader(folder, False)
    return RunState(student, lambda s, t, c: vanilla.builder(s, t, c), None, recipe, 0, spec, data, engine,
                    identity={"run": "streaming"})  # fmt: skip


def test_a_streamed_run_resumes_exactly_and_reports_its_throughput(folder: Path, loaders, tmp_path: Path) -> None:
    info = RunInfo("streaming", {}, tmp_path / "straight", "cpu")
    straight = train(info, _state(folder, loaders["pil"]))
    assert all(e.throughput and e.throughput["images_per_second"] > 0 for e in straight.curve)
    assert all(0 <= e.throughput["data_wait"] <= 1 for e in straight.curve)

    interrupted = RunInfo("streaming", {}, tmp_path / "resumed", "cpu")
    first = _state(folder, loaders["pil"])
    first.total_epochs = 1  # stop after epoch 0, as a kill after its checkpoint would
    train(interrupted, first)
    resumed = train(interrupted, _state(folder, loaders["pil"], loader_workers=2))
    assert [(e.losses, e.test_top1) for e in resumed.curve] == [(e.losses, e.test_top1) for e in straight.curve]
    shutil.rmtree(tmp_path)


def test_epoch_draws_are_fixed_by_seed_and_epoch() -> None:
    spec = synthetic_files_spec(4)
    a, b = (draw_epoch(3, 5, 32, RECIPE, spec, torch.device("cpu")) for _ in range(2))
    assert torch.equal(a.order, b.order) and torch.equal(a.keys, b.keys) and a.views is None
    assert not torch.equal(a.keys, draw_epoch(3, 6, 32, RECIPE, spec, torch.device("cpu")).keys)
    with pytest.raises(KdbenchError, match="strong_copy needs a device-resident dataset"):
        draw_epoch(3, 5, 32, Recipe(strong_copy="streamlined"), spec, torch.device("cpu"))


def test_evaluation_and_calibration_read_through_the_loader(folder: Path, loaders) -> None:
    spec, data = synthetic_files_spec(4), synthetic_files_spec(4).loader(folder, False)
    options = EngineOptions(loader=loaders["pil"])
    model = tiny_model("tiny_student", 4).eval()
    top1 = evaluate_top1(model, spec, data, options, batch_size=5)
    assert top1 == evaluate_top1(model, spec, data, options, batch_size=16)  # batching changes nothing
    assert top1 in {100 * k / data.num_test for k in range(data.num_test + 1)}
    batches = calibration_batches(data, spec, options, 2, 4)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 32, 32)] * 2
    with pytest.raises(KdbenchError, match="needs a loader"):
        evaluate_top1(model, spec, data, EngineOptions())


def test_list_loaders_names_the_first_party_ones(capsys) -> None:
    from kdbench.cli import main

    assert main(["list", "loaders"]) == 0
    out = capsys.readouterr().out
    assert "pil" in out and "decode" in out and "cpu 20" in out


GREY_LOADER = '''
import torch
from PIL import Image

from kdbench import hookimpl
from kdbench.stream import LoaderSpec


def load_grey(request):
    """Every image as its grey level, through the request's own crop boxes (a loader in 20 lines)."""
    for start, end in request.bounds():
        images = []
        for position in range(start, end):
            with Image.open(request.path(position)) as opened:
                image = opened.convert("L").convert("RGB")
            resize, box = request.geometry(position, image.width, image.height)
            if resize is not None:
                image = image.resize(resize, Image.Resampling.BILINEAR)
            image = image.crop((box.left, box.top, box.left + box.width, box.top + box.height))
            image = image.resize((request.size, request.size), Image.Resampling.BILINEAR)
            if box.flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            images.append(pixels.view(request.size, request.size, 3))
        yield torch.stack(images).permute(0, 3, 1, 2).contiguous().to(request.device)


@hookimpl
def kdbench_register_loaders():
    return [
        LoaderSpec(name="grey", load=load_grey, description="grey levels (tests)"),
        LoaderSpec(name="never", load=load_grey, description="needs a GPU", unavailable=lambda device: "no GPU here"),
    ]
'''


def test_a_third_party_loader_is_listed_and_serves_a_run(fake_site: Path, folder: Path, tmp_path: Path, capsys) -> None:
    from conftest import make_distribution

    from kdbench.cli import _pick_loader

    make_distribution(fake_site, "kdbench-grey", "0.1", {"grey": "kdbench_grey"}, {"kdbench_grey": GREY_LOADER})
    host = kdbench.create_plugin_host()
    assert {"grey", "never", "pil", "decode"} <= {spec.name for spec in host.loaders}
    cpu = torch.device("cpu")
    assert _pick_loader(host, "auto", cpu).name == "pil"  # the plugin gave no priority: never picked by itself
    with pytest.raises(KdbenchError, match="--loader never cannot serve cpu: no GPU here"):
        _pick_loader(host, "never", cpu)
    grey = _pick_loader(host, "grey", cpu)
    files = synthetic_files_spec(4).loader(folder, False).train_files
    batch = torch.cat(list(grey.load(_request(files, True))))
    assert torch.equal(batch[:, 0], batch[:, 1]) and torch.equal(batch[:, 1], batch[:, 2])
    result = train(RunInfo("grey", {}, tmp_path / "grey", "cpu"), _state(folder, grey))
    assert result.status == "finished" and len(result.curve) == RECIPE.epochs


def test_dali_loader_gives_the_same_crops(folder: Path, loaders) -> None:
    """DALI (its CPU operators here) decodes each box kdbench draws: PIL's images up to the decoder's rounding."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'kdbench[dali]')")
    assert loaders["dali"].unavailable(torch.device("cpu")) is None
    files = synthetic_files_spec(4).loader(folder, False).train_files
    for is_train, worst in ((True, 16), (False, 2)):
        pil = torch.cat(list(loaders["pil"].load(_request(files, is_train))))
        dali = torch.cat(list(loaders["dali"].load(_request(files, is_train, workers=1))))
        difference = (pil.int() - dali.int()).abs()
        assert dali.shape == pil.shape and dali.dtype == torch.uint8
        assert difference.max() <= worst and difference.float().mean() < 0.5, (is_train, difference.max())
        flipped = (pil.int() - dali.flip(-1).int()).abs().float().mean()
        assert flipped > 5 * difference.float().mean()  # the same flips, not merely similar images


def test_dali_missing_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch, loaders) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia"):
            raise ModuleNotFoundError("No module named 'nvidia'")
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_dali)
    assert "pip install 'kdbench[dali]'" in loaders["dali"].unavailable(torch.device("cuda"))


def test_a_streamed_dataset_digest_is_its_file_names_and_labels(folder: Path, tmp_path: Path) -> None:
    from kdbench.runner import data_digest

    spec = synthetic_files_spec(4)
    here = data_digest(spec.loader(folder, False), folder)
    shutil.copytree(folder, tmp_path / "elsewhere")
    assert data_digest(spec.loader(tmp_path / "elsewhere", False), tmp_path / "elsewhere") == here  # root-free
    (tmp_path / "elsewhere" / "synthetic-files" / "train" / "class_00" / "0000.JPEG").unlink()
    assert data_digest(spec.loader(tmp_path / "elsewhere", False), tmp_path / "elsewhere") != here


def test_a_loader_that_does_not_fit_its_augmentation_is_named(folder: Path) -> None:
    from dataclasses import replace

    from kdbench.errors import PluginError
    from kdbench.runner import RunnerOptions, Workspace

    class MixedUp:
        @kdbench.hookimpl
        def kdbench_register_datasets(self) -> list[kdbench.DatasetSpec]:
            return [replace(synthetic_files_spec(4), name="mixed-up", augment=kdbench.AugmentSpec())]

    host = kdbench.create_plugin_host(entry_points=False, plugins=[("mixed_up", MixedUp())])
    workspace = Workspace(host, RunnerOptions(data_root=folder))
    with pytest.raises(PluginError, match="dataset mixed-up: its loader returned ImageFiles, which does not fit its "):
        workspace.data("mixed-up")


def test_sync_bn_is_written_only_when_set_and_refused_on_the_cpu(folder: Path, loaders) -> None:
    from kdbench.plan import recipe_config
    from kdbench.suites import recipe_problems

    assert "sync_bn" not in recipe_config(RECIPE)  # the ids of every recipe without it stay as they were
    synced = Recipe(epochs=2, batch_size=8, lr_milestones=(), sync_bn=True)
    assert recipe_config(synced)["sync_bn"] is True
    assert recipe_problems(Recipe(sync_bn="yes")) == ["sync_bn must be true or false, got 'yes'"]
    with pytest.raises(KdbenchError, match="SyncBatchNorm runs on CUDA only"):
        _state(folder, loaders["pil"], synced, rank=0, world_size=2)
    alone = _state(folder, loaders["pil"], synced)  # one process: plain BatchNorm, nothing to synchronise
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.student.modules())


FILES_DATASET = """
from kdbench import hookimpl
from kdbench.testing import synthetic_files_spec


@hookimpl
def kdbench_register_datasets():
    return [synthetic_files_spec(4)]
"""
STREAMED_SUITE = """
name = "streamed-cohort"
description = "four methods of one pair on a streamed JPEG folder"
dataset = "synthetic-files"
distillers = ["kd", "at", "crd", "dkd"]
seeds = [0]

[recipe]
epochs = 2
batch_size = 16
lr = 0.05
lr_milestones = [1]
eval_batch_size = 16

[teacher_recipe]
epochs = 1
batch_size = 16
lr = 0.05
lr_milestones = []
eval_batch_size = 16

[[pairs]]
teacher = "resnet8x4"
student = "resnet8"
"""


def test_a_streamed_cohort_equals_its_solo_runs(fake_site: Path, folder: Path, tmp_path: Path) -> None:
    """One loader pass and one teacher pass per step for four students: each ends with its solo numbers."""
    from conftest import make_distribution

    from kdbench.cli import main
    from kdbench.results import ResultsStore

    make_distribution(fake_site, "kdbench-files", "0.1", {"files": "kdbench_files"}, {"kdbench_files": FILES_DATASET})
    suite = tmp_path / "streamed.toml"
    suite.write_text(STREAMED_SUITE, encoding="utf-8")

    def run(name: str, *options: str) -> dict[str, tuple]:
        root = tmp_path / name
        args = ["run", "--suite", str(suite), "--data-root", str(folder), "--results", str(root / "r.sqlite")]
        args += ["--work-dir", str(root / "runs"), "--no-progress", "--latency-batch-sizes", "1", "--loader", "pil"]
        assert main([*args, "--loader-workers", "0", *options]) == 0
        with ResultsStore(root / "r.sqlite") as store:
            records = list(store.records())
        cohorts = [r for r in records if (r["versions"].get("execution") or {}).get("cohort")]
        assert len(cohorts) == (4 if name == "cohort" else 0)
        return {r["run_id"]: (r["best_top1"], [(e["losses"], e["test_top1"]) for e in r["curve"]]) for r in records}

    assert run("cohort") == run("alone", "--cohorts", "off")


def test_path_arrays_keep_any_file_name(folder: Path, tmp_path: Path, loaders) -> None:
    from kdbench.stream import path_array

    source = synthetic_files_spec(4).loader(folder, False).train_files[0]
    named = tmp_path / "naïve café ü.JPEG"
    shutil.copyfile(source, named)
    paths = path_array([str(named), source])
    assert paths.dtype.kind == "S"
    request = StreamRequest(
        paths, np.array([0, 1]), None, (2,), 32, ResizedCropSpec(eval_resize=36), torch.device("cpu")
    )
    assert request.path(0) == str(named)
    (batch,) = loaders["pil"].load(request)
    assert torch.equal(batch[0], batch[1])  # the same image under both names


@pytest.mark.parametrize(("loader", "workers"), [("pil", 0), ("pil", 2), ("decode", 0), ("dali", 1)])
def test_a_missing_or_corrupt_image_is_named(loader: str, workers: int, folder: Path, tmp_path: Path, loaders) -> None:
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'kdbench[dali]')")
    from kdbench.errors import DataNotFoundError

    good = synthetic_files_spec(4).loader(folder, False).train_files[0]
    corrupt, missing = tmp_path / "corrupt.JPEG", tmp_path / "missing.JPEG"
    corrupt.write_bytes(b"\xff\xd8 not really a JPEG" * 10)
    for bad in (corrupt, missing):
        for is_train in (True, False):
            request = StreamRequest(
                (good, str(bad)), np.array([0, 1]), np.array([3, 4]) if is_train else None, (2,), 32,
                ResizedCropSpec(eval_resize=36), torch.device("cpu"), workers,
            )  # fmt: skip
            with pytest.raises(DataNotFoundError, match=f"cannot read image {bad}"):
                list(loaders[loader].load(request))


def test_a_run_stopped_by_a_bad_image_resumes_once_it_is_restored(folder: Path, loaders, tmp_path: Path) -> None:
    from kdbench.errors import DataNotFoundError

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    straight = train(RunInfo("streaming", {}, tmp_path / "straight", "cpu"), _state(data, loaders["pil"]))
    victim = Path(synthetic_files_spec(4).loader(data, False).train_files[5])
    saved = victim.read_bytes()
    work = RunInfo("streaming", {}, tmp_path / "stopped", "cpu")
    first = _state(data, loaders["pil"])
    first.total_epochs = 1
    train(work, first)
    victim.write_bytes(b"truncated")  # damaged after the file list was read, before epoch 1
    with pytest.raises(DataNotFoundError, match=f"cannot read image {victim}"):
        train(work, _state(data, loaders["pil"]))
    assert (work.work_dir / "checkpoint.pt").exists()  # epoch 0 is kept
    victim.write_bytes(saved)
    resumed = train(work, _state(data, loaders["pil"]))
    assert [(e.losses, e.test_top1) for e in resumed.curve] == [(e.losses, e.test_top1) for e in straight.curve]
