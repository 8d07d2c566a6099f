"""CIFAR-10 and CIFAR-100, read from torchvision's on-disk format.

Source: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
technical report, University of Toronto, 2009,
https://www.cs.toronto.edu/~kriz/cifar.html. 50,000 train / 10,000 test 32×32
RGB images.

Each file is checked against the MD5 torchvision publishes for it (``torchvision/datasets/cifar.py``,
``train_list`` / ``test_list``): data whose files differ loads, but as ``verified=False``, so every
record and leaderboard cell made from it says "unverified data".

On disk (the extracted "python version" archives, as torchvision keeps them):
``ROOT/cifar-100-python/{train,test}`` and ``ROOT/cifar-10-batches-py/
{data_batch_1..5,test_batch}``, each a pickled dict whose ``data`` is an N×3072
uint8 array (the red, green and blue 32×32 planes, each row-major) and whose
``fine_labels`` (CIFAR-100) or ``labels`` (CIFAR-10) is a list of N class ids.
The files are pickles, like torchvision reads them: only point ``--data-root``
at files you trust.

Normalisation: CIFAR-100 uses the constants of RepDistiller (Tian et al., ICLR
2020) and MDistiller (Zhao et al., CVPR 2022), whose published numbers the
leaderboards compare with. CIFAR-10 uses the per-channel mean and standard
deviation of the train set's pixels (/255), (0.4914, 0.4822, 0.4465) and
(0.2470, 0.2435, 0.2616) — not the widely copied std (0.2023, 0.1994, 0.2010),
which is a different (smaller) statistic. Train augmentation for both:
zero-padded 4-pixel random crop + horizontal flip.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench import AugmentSpec, DatasetSpec, ImageData, hookimpl
from kdbench.errors import DataNotFoundError

__all__ = ["CIFAR10_LAYOUT", "CIFAR100_LAYOUT", "CifarLayout", "load_cifar", "load_cifar10", "load_cifar100"]

_CITATION = (
    "A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, University of Toronto, 2009"
)
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True, slots=True)
class CifarLayout:
    """Where one CIFAR variant lives in torchvision's format and how its pickles are keyed."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    torchvision_class: str
    url: str
    md5: Mapping[str, str]
    """File name → the MD5 torchvision publishes for it."""


CIFAR100_LAYOUT = CifarLayout(
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    torchvision_class="CIFAR100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
)

CIFAR10_LAYOUT = CifarLayout(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    torchvision_class="CIFAR10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
)


def _first_missing(layout: CifarLayout, root: Path) -> Path | None:
    """Return the first expected batch file under ``root`` that does not exist, or None."""
    for name in layout.train_files + layout.test_files:
        path = root / layout.folder / name
        if not path.is_file():
            return path
    return None


def _download(layout: CifarLayout, root: Path) -> None:
    """Download and extract ``layout`` under ``root`` with torchvision, raising DataNotFoundError on failure."""
    try:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, layout.torchvision_class)
        dataset_class(str(root), train=True, download=True)
    except Exception as exc:  # network, disk, checksum: all mean the data is not there
        raise DataNotFoundError(
            f"{layout.title} download into {root} failed ({type(exc).__name__}: {exc}). "
            f"Fetch {layout.url} yourself and extract it under --data-root {root}."
        ) from exc


def _string_keys(entry: dict[Any, Any]) -> dict[str, Any]:
    """Return ``entry`` with bytes keys (Python 2 pickles read as bytes) decoded to str."""
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _unpickle(path: Path) -> dict[str, Any]:
    """Return the dict pickled in ``path`` or raise DataNotFoundError naming the file."""
    try:
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except Exception as exc:  # a truncated or corrupt pickle can raise almost anything
        raise DataNotFoundError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and extract the archive again"
        ) from exc
    if not isinstance(entry, dict):
        raise DataNotFoundError(f"{path} does not hold a CIFAR batch (a pickled dict); extract the archive again")
    return _string_keys(entry)


def _read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Return the N×3072 uint8 pixels and int64 labels of one batch file, validated."""
    entry = _unpickle(path)
    if "data" not in entry or layout.label_key not in entry:
        raise DataNotFoundError(
            f"{path} lacks the 'data' or {layout.label_key!r} entry of a {layout.title} batch; is it the right file?"
        )
    pixels = np.asarray(entry["data"])
    labels = np.asarray(entry[layout.label_key], dtype=np.int64)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        raise DataNotFoundError(f"{path}: 'data' is {pixels.dtype} {pixels.shape}, expected uint8 N×{_PIXELS}")
    if labels.shape != (pixels.shape[0],):
        raise DataNotFoundError(f"{path}: {labels.shape[0]} labels for {pixels.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataNotFoundError(f"{path}: labels outside 0..{layout.num_classes - 1}; is it the right dataset?")
    return pixels, labels


def _read_split(root: Path, layout: CifarLayout, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the uint8 N×3×32×32 images and int64 labels of the batch ``files``, concatenated."""
    batches = [_read_batch(root / layout.folder / name, layout) for name in files]
    pixels = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def load_cifar(layout: CifarLayout, root: Path, download: bool) -> ImageData:
    """Return ``layout``'s train and test sets from ``root``, downloading them first if allowed."""
    root = Path(root).expanduser()
    missing = _first_missing(layout, root)
    if missing is not None and download:
        _download(layout, root)
        missing = _first_missing(layout, root)
    if missing is not None:
        raise DataNotFoundError(
            f"{layout.title} not found: expected {missing} (torchvision format). Put the extracted "
            f"{layout.folder} folder under --data-root {root}, or pass --download."
        )
    train_images, train_labels = _read_split(root, layout, layout.train_files)
    test_images, test_labels = _read_split(root, layout, layout.test_files)
    return ImageData(train_images, train_labels, test_images, test_labels, verified=_genuine(layout, root))


def _genuine(layout: CifarLayout, root: Path) -> bool:
    """Return whether every file of ``layout`` under ``root`` has the MD5 torchvision publishes."""
    for name in layout.train_files + layout.test_files:
        digest = hashlib.md5(usedforsecurity=False)
        with (root / layout.folder / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != layout.md5[name]:
            return False
    return True


def load_cifar100(root: Path, download: bool) -> ImageData:
    """Return CIFAR-100 (fine labels) from ``root/cifar-100-python``."""
    return load_cifar(CIFAR100_LAYOUT, root, download)


def load_cifar10(root: Path, download: bool) -> ImageData:
    """Return CIFAR-10 from ``root/cifar-10-batches-py``."""
    return load_cifar(CIFAR10_LAYOUT, root, download)


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="cifar100",
            loader=load_cifar100,
            description="CIFAR-100: 32×32 colour images, 100 classes, 50,000 train / 10,000 test",
            num_classes=100,
            image_size=(3, 32, 32),
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            augment=AugmentSpec(pad=4, flip=True),
            citation=_CITATION,
        ),
        DatasetSpec(
            name="cifar10",
            loader=load_cifar10,
            description="CIFAR-10: 32×32 colour images, 10 classes, 50,000 train / 10,000 test",
            num_classes=10,
            image_size=(3, 32, 32),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            augment=AugmentSpec(pad=4, flip=True),
            citation=_CITATION,
        ),
    ]
