"""Tiny-ImageNet (Stanford CS231n): 200 ImageNet classes at 64×64, 100,000 train / 10,000 val images.

Seed project 001 trains on it. Small enough for the device-resident path (1.2 GB as uint8), so it
trains with the engine's on-device augmentation like CIFAR.

On disk, as the official ``tiny-imagenet-200.zip`` extracts (under ``--data-root``)::

    tiny-imagenet-200/wnids.txt                      the 200 class ids (WordNet ids), one per line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 images per class
    tiny-imagenet-200/val/images/*.JPEG              10,000 images
    tiny-imagenet-200/val/val_annotations.txt        <file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1> per val image

The labelled ``val`` split is the test set (the ``test`` images have no labels). Classes are numbered
in sorted wnid order (torchvision's ImageFolder convention); grey-scale images become RGB.
Augmentation and normalisation are not given by seed 001's README; kdbench uses the CIFAR recipe's
shape — a 4-pixel zero-padded random crop and horizontal flip — and ImageNet's mean and std.
"""

from __future__ import annotations

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
    train = _stack(train_paths, train_labels)
    test = _stack(*_val_annotations(folder, classes))
    return ImageData(train[0], train[1], test[0], test[1], verified=None)


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
