"""Tiny-ImageNet (Stanford CS231n): 200 ImageNet classes at 64×64, 100,000 train / 10,000 val images.

Seed project 001 trains on it. Small enough for the device-resident path (1.2 GB as uint8), so it
trains with the engine's on-device augmentation like CIFAR.

On disk, as the official ``tiny-imagenet-200.zip`` extracts (under ``--data-root``)::

    tiny-imagenet-200/wnids.txt                      the 200 class ids (WordNet ids), one per line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 images per class
    tiny-imagenet-200/val/images/*.JPEG              10,000 images
    tiny-imagenet-200/val/val_annotations.txt        <file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1> per val image

Decoding the 110,000 JPEGs takes a while, so the decoded arrays are kept beside them after the first
load, in ``tiny-imagenet-200/.kdbench-cache-<digest>.npz`` (uncompressed, about 1.3 GB): the digest
covers the relative path, size and modification time of every file read, so a changed file makes a
new cache (the old one is removed). A cache that cannot be read is ignored and rebuilt; a data root
that cannot be written only means no cache.

The labelled ``val`` split is the test set (the ``test`` images have no labels). Classes are numbered
in sorted wnid order (torchvision's ImageFolder convention); grey-scale images become RGB.
Augmentation and normalisation are not given by seed 001's README; kdbench uses the CIFAR recipe's
shape — a 4-pixel zero-padded random crop and horizontal flip — and ImageNet's mean and std.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from kdbench import AugmentSpec, DatasetSpec, ImageData, hookimpl
from kdbench.errors import DataNotFoundError

__all__ = ["FOLDER", "URL", "load_tiny_imagenet"]

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
SIZE = 64
CACHE_PREFIX = ".kdbench-cache-"
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_image(path: Path) -> np.ndarray:
    """Return a 3×64×64 uint8 array of the image at ``path`` (RGB; a different size is refused)."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    if pixels.shape != (SIZE, SIZE, 3):
        raise DataNotFoundError(f"{path} is {pixels.shape[1]}×{pixels.shape[0]}, not a 64×64 Tiny-ImageNet image")
    return pixels.transpose(2, 0, 1)


def _stack(paths: list[Path], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([_read_image(path) for path in paths]) if paths else np.zeros((0, 3, SIZE, SIZE), np.uint8)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _val_annotations(folder: Path, classes: dict[str, int]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    annotations = folder / "val" / "val_annotations.txt"
    for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in classes:
            raise DataNotFoundError(f"{annotations}:{number}: expected '<file>\\t<wnid>\\t…' with a wnid of wnids.txt")
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(classes[fields[1]])
    return paths, labels


def _digest(folder: Path, paths: list[Path]) -> str:
    """Return a digest of ``paths``: their sorted paths relative to ``folder``, sizes and modification times."""
    digest = hashlib.sha256(f"kdbench tiny-imagenet cache 1, {SIZE}px\n".encode())
    for relative in sorted(path.relative_to(folder).as_posix() for path in paths):
        try:
            stat = (folder / relative).stat()
        except FileNotFoundError:
            raise DataNotFoundError(f"Tiny-ImageNet image {folder / relative} is listed but missing") from None
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _read_cache(path: Path) -> ImageData | None:
    """Return the dataset cached at ``path``, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return ImageData(*(torch.from_numpy(arrays[key]) for key in _CACHE_KEYS), verified=None)
    except Exception:  # truncated, foreign or unreadable: decoded again and rewritten
        return None


def _write_cache(path: Path, data: ImageData) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename) and remove older caches."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            np.savez(handle, **{key: getattr(data, key).numpy() for key in _CACHE_KEYS})
        os.replace(temporary, path)
    except OSError:  # a read-only or full disk: no cache, the data itself is fine
        temporary.unlink(missing_ok=True)
        return
    for stale in path.parent.glob(f"{CACHE_PREFIX}*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_url

    download_url(URL, str(root))
    with zipfile.ZipFile(root / "tiny-imagenet-200.zip") as archive:
        archive.extractall(root)


def load_tiny_imagenet(root: Path, download: bool) -> ImageData:
    """Return Tiny-ImageNet's train set and its labelled val set (as the test set) from ``root``."""
    folder = Path(root).expanduser() / FOLDER
    required = (folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt")
    if download and not all(path.exists() for path in required):
        _download(Path(root).expanduser())
    missing = next((path for path in required if not path.exists()), None)
    if missing is not None:
        raise DataNotFoundError(
            f"Tiny-ImageNet not found: expected {missing}. Extract {URL} under --data-root {root} "
            f"(it makes {FOLDER}/), or pass --download."
        )
    wnids = sorted(line.strip() for line in (folder / "wnids.txt").read_text(encoding="utf-8").split() if line.strip())
    classes = {wnid: index for index, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not images:
            raise DataNotFoundError(f"Tiny-ImageNet class {wnid} has no images in {folder / 'train' / wnid / 'images'}")
        train_paths += images
        train_labels += [classes[wnid]] * len(images)
    test_paths, test_labels = _val_annotations(folder, classes)
    listed = [folder / "wnids.txt", folder / "val" / "val_annotations.txt", *train_paths, *test_paths]
    cache = folder / f"{CACHE_PREFIX}{_digest(folder, listed)}.npz"
    data = _read_cache(cache)
    if data is None:
        train, test = _stack(train_paths, train_labels), _stack(test_paths, test_labels)
        data = ImageData(train[0], train[1], test[0], test[1], verified=None)
        _write_cache(cache, data)
    return data


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="tiny-imagenet",
            loader=load_tiny_imagenet,
            description="Tiny-ImageNet: 64×64 colour images, 200 classes, 100,000 train / 10,000 val (as test)",
            num_classes=200,
            image_size=(3, SIZE, SIZE),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            augment=AugmentSpec(pad=4, flip=True),
            citation="Le & Yang, Tiny ImageNet Visual Recognition Challenge (Stanford CS231n, 2015)",
        )
    ]
