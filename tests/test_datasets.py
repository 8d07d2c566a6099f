"""Dataset plugins: the shipped digits split and CIFAR read from torchvision's on-disk format."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar as tv_cifar

import kdbench
from kdbench import DatasetSpec, ImageData
from kdbench.errors import DataNotFoundError

DIGITS_CLASS_SIZES = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


@pytest.fixture(scope="module")
def digits_module() -> ModuleType:
    return importlib.import_module("kdbench_plugins.datasets.digits")


@pytest.fixture(scope="module")
def cifar_module() -> ModuleType:
    return importlib.import_module("kdbench_plugins.datasets.cifar")


@pytest.fixture(scope="module")
def digits_spec(digits_module: ModuleType) -> DatasetSpec:
    (spec,) = digits_module.kdbench_register_datasets()
    return spec


@pytest.fixture(scope="module")
def digits(digits_spec: DatasetSpec) -> ImageData:
    return digits_spec.loader(Path("/nonexistent"), False)


def _cifar_specs(cifar_module: ModuleType) -> dict[str, DatasetSpec]:
    return {spec.name: spec for spec in cifar_module.kdbench_register_datasets()}


# --- digits -------------------------------------------------------------------------------------------------------


def test_plugins_register_through_the_host(digits_module: ModuleType, cifar_module: ModuleType) -> None:
    host = kdbench.create_plugin_host(
        entry_points=False, strict=True, plugins=[("digits", digits_module), ("cifar", cifar_module)]
    )
    assert host.datasets.names() == ["cifar10", "cifar100", "digits"]
    assert host.datasets.get("digits").augment == kdbench.AugmentSpec(pad=1, flip=False)
    assert host.datasets.get("cifar100").augment == kdbench.AugmentSpec(pad=4, flip=True)


def test_digits_sizes_and_values(digits_spec: DatasetSpec, digits: ImageData) -> None:
    assert (digits_spec.num_classes, digits_spec.image_size) == (10, (1, 8, 8))
    assert digits.train_images.shape == (1438, 1, 8, 8) and digits.test_images.shape == (359, 1, 8, 8)
    assert digits.train_labels.shape == (1438,) and digits.test_labels.shape == (359,)
    levels = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.cat([digits.train_images, digits.test_images]).unique().tolist()) == levels
    for labels in (digits.train_labels, digits.test_labels):
        assert set(labels.tolist()) == set(range(10))


def test_digits_split_is_stratified(digits: ImageData) -> None:
    test_counts = torch.bincount(digits.test_labels, minlength=10)
    total_counts = test_counts + torch.bincount(digits.train_labels, minlength=10)
    assert tuple(total_counts.tolist()) == DIGITS_CLASS_SIZES
    for test_count, total in zip(test_counts.tolist(), total_counts.tolist()):
        assert abs(test_count - 0.2 * total) <= 1


def test_digits_split_is_deterministic(digits_spec: DatasetSpec, digits: ImageData) -> None:
    again = digits_spec.loader(Path("/elsewhere"), True)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(again, name), getattr(digits, name))


def test_digits_split_follows_the_documented_rule(digits_module: ModuleType, digits: ImageData) -> None:
    with np.load(digits_module._DATA_FILE, allow_pickle=False) as archive:
        levels, labels = archive["images"], archive["labels"]
    ranks = np.zeros(len(labels), dtype=np.int64)
    for label in range(10):
        members = np.flatnonzero(labels == label)
        ranks[members] = np.arange(len(members))
    test = ranks % 5 == 2
    expected = torch.from_numpy(np.round(levels[test].astype(np.float64) * 255 / 16).astype(np.uint8)).unsqueeze(1)
    assert torch.equal(digits.test_images, expected)
    assert torch.equal(digits.test_labels, torch.from_numpy(labels[test]))


def test_digits_constants_match_the_train_split(digits_spec: DatasetSpec, digits: ImageData) -> None:
    pixels = digits.train_images.double() / 255
    assert digits_spec.mean == pytest.approx((pixels.mean().item(),), abs=5e-5)
    assert digits_spec.std == pytest.approx((pixels.std(correction=0).item(),), abs=5e-5)


def test_digits_loads_without_scikit_learn() -> None:
    code = (
        "import sys; from pathlib import Path; import kdbench_plugins.datasets.digits as d; "
        "d.load_digits(Path('.'), False); assert 'sklearn' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# --- CIFAR: a tiny fake dataset in torchvision's exact on-disk format ----------------------------------------------

LAYOUTS = {
    # name: (folder, train files, test file, label key, meta file, meta key, classes)
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels", "meta", "fine_label_names", 100),
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "labels",
        "batches.meta",
        "label_names",
        10,
    ),
}
TRAIN_PER_FILE = {"cifar100": 20, "cifar10": 4}
TEST_SIZE = 10
MARK = (7, 2, 13, 29)
"""Image 7 of the train split has one bright pixel: channel 2 (blue), row 13, column 29."""


def _dump(path: Path, entry: dict, bytes_keys: bool) -> None:
    if bytes_keys:
        entry = {key.encode(): value for key, value in entry.items()}
    with path.open("wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def _batch(data: np.ndarray, labels: np.ndarray, name: str, title: str) -> dict:
    """Return a batch dict with the keys the real pickles hold."""
    targets = labels.tolist()
    entry = {"batch_label": title, "data": data, LAYOUTS[name][3]: targets, "filenames": ["x.png"] * len(targets)}
    if name == "cifar100":
        entry["coarse_labels"] = [t // 5 for t in targets]
    return entry


def _write_fake_cifar(root: Path, name: str, bytes_keys: bool = False) -> tuple[np.ndarray, ...]:
    """Write a tiny ``name`` under ``root``; return (train rows N×3072, train labels, test rows, test labels)."""
    folder, train_files, test_file, _, meta_file, meta_key, classes = LAYOUTS[name]
    rng = np.random.default_rng(0)
    train_size = TRAIN_PER_FILE[name] * len(train_files)
    train_rows = rng.integers(0, 200, size=(train_size, 3072), dtype=np.uint8)
    train_labels = rng.integers(0, classes, size=train_size)
    test_rows = rng.integers(0, 200, size=(TEST_SIZE, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, classes, size=TEST_SIZE)
    image, channel, row, column = MARK
    # The documented layout: 1024 red values, then green, then blue, each plane 32×32 row-major.
    train_rows[image, channel * 1024 + row * 32 + column] = 255
    directory = root / folder
    directory.mkdir(parents=True)
    for index, file_name in enumerate(train_files):
        part = slice(index * TRAIN_PER_FILE[name], (index + 1) * TRAIN_PER_FILE[name])
        entry = _batch(train_rows[part].copy(), train_labels[part], name, f"training batch {index + 1}")
        _dump(directory / file_name, entry, bytes_keys)
    _dump(directory / test_file, _batch(test_rows, test_labels, name, "testing batch"), bytes_keys)
    _dump(directory / meta_file, {meta_key: [f"class{i}" for i in range(classes)]}, bytes_keys)
    return train_rows, train_labels, test_rows, test_labels


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_round_trip(cifar_module: ModuleType, tmp_path: Path, name: str, bytes_keys: bool) -> None:
    _, train_labels, test_rows, test_labels = _write_fake_cifar(tmp_path, name, bytes_keys=bytes_keys)
    data = _cifar_specs(cifar_module)[name].loader(tmp_path, False)
    train_size = TRAIN_PER_FILE[name] * len(LAYOUTS[name][1])
    assert data.train_images.shape == (train_size, 3, 32, 32) and data.test_images.shape == (TEST_SIZE, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_labels, torch.from_numpy(train_labels))
    assert torch.equal(data.test_labels, torch.from_numpy(test_labels))
    image, channel, row, column = MARK
    bright = (data.train_images == 255).nonzero().tolist()
    assert bright == [[image, channel, row, column]]
    # Red plane, first row = the first 32 values of a row; blue plane, last row = the last 32.
    assert torch.equal(data.test_images[3, 0, 0], torch.from_numpy(test_rows[3, :32]))
    assert torch.equal(data.test_images[3, 2, 31], torch.from_numpy(test_rows[3, -32:]))


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_torchvision_reads_the_fake_files_the_same_way(
    cifar_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _write_fake_cifar(tmp_path, name)
    # torchvision checks the md5 of the real files; ours are fakes of the same format.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    dataset_class = torchvision.datasets.CIFAR100 if name == "cifar100" else torchvision.datasets.CIFAR10
    ours = _cifar_specs(cifar_module)[name].loader(tmp_path, False)
    for train, images, labels in (
        (True, ours.train_images, ours.train_labels),
        (False, ours.test_images, ours.test_labels),
    ):
        theirs = dataset_class(str(tmp_path), train=train, download=False)
        assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), theirs.data)  # torchvision keeps N×H×W×C
        assert labels.tolist() == theirs.targets


@pytest.mark.parametrize(
    ("name", "expected"), [("cifar100", "cifar-100-python/train"), ("cifar10", "cifar-10-batches-py/data_batch_1")]
)
def test_cifar_missing_names_the_expected_path(
    cifar_module: ModuleType, tmp_path: Path, name: str, expected: str
) -> None:
    with pytest.raises(DataNotFoundError) as info:
        _cifar_specs(cifar_module)[name].loader(tmp_path, False)
    message = str(info.value)
    assert str(tmp_path / expected) in message and "--download" in message and "\n" not in message


def test_cifar_names_the_one_missing_batch(cifar_module: ModuleType, tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        _cifar_specs(cifar_module)["cifar10"].loader(tmp_path, False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_dict", "bad_labels", "bad_shape"])
def test_cifar_corrupt_file_is_named(cifar_module: ModuleType, tmp_path: Path, damage: str) -> None:
    _write_fake_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a pickle at all" * 10)
    elif damage == "not_a_dict":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    elif damage == "bad_labels":
        _dump(path, {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, False)
    else:
        _dump(path, {"data": np.zeros((2, 1024), np.uint8), "fine_labels": [0, 1]}, False)
    with pytest.raises(DataNotFoundError, match=str(path)):
        _cifar_specs(cifar_module)["cifar100"].loader(tmp_path, False)


def test_cifar_download_failure_is_data_not_found(
    cifar_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataNotFoundError, match="network unreachable"):
        _cifar_specs(cifar_module)["cifar100"].loader(tmp_path, True)


def test_cifar_download_goes_through_torchvision(
    cifar_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_download(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, download))
        _write_fake_cifar(Path(root), "cifar10")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    data = _cifar_specs(cifar_module)["cifar10"].loader(tmp_path, True)
    assert calls == [(str(tmp_path), True)] and data.test_images.shape[0] == TEST_SIZE
    data = _cifar_specs(cifar_module)["cifar10"].loader(tmp_path, True)  # present now: no second download
    assert len(calls) == 1
