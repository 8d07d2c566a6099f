"""ImageNet-1k (ILSVRC2012): 1000 classes, 1,281,167 train / 50,000 val images, streamed from disk.

Source: O. Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015,
https://image-net.org. The labelled ``val`` split is the test set (the ``test`` images have no
public labels), as in every ImageNet KD paper.

On disk, torchvision's ``ImageNet`` / ``ImageFolder`` layout under ``--data-root``::

    imagenet/train/<wnid>/*.JPEG      1000 class folders (WordNet ids, e.g. n01440764)
    imagenet/val/<wnid>/*.JPEG        the same 1000 class folders, 50 images each

which ``torchvision.datasets.ImageNet(ROOT/imagenet, split="train")`` and ``split="val"`` make from
the official ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and
``ILSVRC2012_devkit_t12.tar.gz`` (torchvision/datasets/imagenet.py: ``ARCHIVE_META``,
``parse_train_archive``, ``parse_val_archive``). ImageNet's licence forbids redistribution, so there
is no download: get the three files from image-net.org yourself.

Read as ``ImageFolder`` reads it (torchvision/datasets/folder.py: ``find_classes``, ``make_dataset``,
``IMG_EXTENSIONS``): classes are the sorted class folder names, numbered 0..999 in that order; the
images of a class are the files under its folder (sub-folders included, symlinks followed) whose
lower-cased name ends in one of ``IMG_EXTENSIONS``, in sorted order. Unlike ``ImageFolder``, more
than 1000 classes, a val folder whose classes differ from train's, or an empty class is an error.

Completeness: the data is ``verified`` when it has ILSVRC2012's counts (1000 classes, 1,281,167
train and 50,000 val images). Anything else — a partial extraction, a subset made for a quick check,
a generated test folder — loads with a warning naming the counts, and its runs are marked
``verified=False`` ("unverified data" on every board that shows them).

Augmentation: torchvision's ImageNet recipe (``RandomResizedCrop(224)`` + flip; ``Resize(256)`` +
``CenterCrop(224)``) and ImageNet's mean and std.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kdbench import DatasetSpec, ImageFiles, ResizedCropSpec, hookimpl
from kdbench.errors import DataNotFoundError

from ._image_folder import IMAGENET, MEAN, STD, absolute, class_folders, prepare_hint, scan_image_folder

__all__ = ["FOLDER", "load_imagenet"]

FOLDER = IMAGENET
NUM_CLASSES = 1000
#: ILSVRC2012's train and val image counts (Russakovsky et al. 2015, table 2; torchvision's ImageNet).
NUM_TRAIN, NUM_VAL = 1_281_167, 50_000
CITATION = "O. Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 115(3), 2015"


def _difference(train: list[str], val: list[str]) -> str:
    """Return which class folders ``val`` lacks and which it has beyond ``train``, a few of each."""
    lacking, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    parts = []
    for label, names in (("missing in val", lacking), ("only in val", extra)):
        if names:
            parts.append(f"{label}: {', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''}")
    return "; ".join(parts)


def _classes(folder: Path, root: Path) -> list[str]:
    """Return the 1000 sorted train class folders of ``folder``, checked against its val folder."""
    train = class_folders(folder / "train")
    if not train or len(train) > NUM_CLASSES:
        raise DataNotFoundError(
            f"ImageNet: found {len(train)} class folders in {folder / 'train'}, expected {NUM_CLASSES} wnid "
            f"folders (n01440764 …). Is --data-root right? {prepare_hint(root)}"
        )
    val = class_folders(folder / "val")
    if val != train:
        raise DataNotFoundError(
            f"ImageNet: the class folders of {folder / 'val'} differ from those of {folder / 'train'} "
            f"({_difference(train, val)}). Re-make the val folder with torchvision.datasets.ImageNet(split='val')."
        )
    return train


def load_imagenet(root: Path, download: bool) -> ImageFiles:
    """Return ImageNet's train files and its val files (as the test set) from ``root/imagenet``.

    There is no download: with ``download`` and the data missing, the error says how to prepare it.
    """
    folder = absolute(root) / FOLDER
    missing = next((path for path in (folder / "train", folder / "val") if not path.is_dir()), None)
    if missing is not None:
        fetch = " and --download cannot fetch it" if download else ""
        raise DataNotFoundError(f"ImageNet not found: expected the folder {missing}{fetch}. {prepare_hint(root)}")
    classes = _classes(folder, root)
    train_files, train_labels = scan_image_folder(folder / "train", classes)
    test_files, test_labels = scan_image_folder(folder / "val", classes)
    counts = (len(classes), len(train_files), len(test_files))
    complete = counts == (NUM_CLASSES, NUM_TRAIN, NUM_VAL)
    if not complete:
        print(
            f"kdbench: warning: ImageNet at {folder} has {counts[0]} classes, {counts[1]:,} train and {counts[2]:,} "
            f"val images, not ILSVRC2012's {NUM_CLASSES}, {NUM_TRAIN:,} and {NUM_VAL:,}: its runs are marked "
            "unverified data",
            file=sys.stderr,
        )
    return ImageFiles(train_files, train_labels, test_files, test_labels, verified=complete)


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="imagenet",
            loader=load_imagenet,
            description="ImageNet-1k (ILSVRC2012): 1000 classes, 1,281,167 train / 50,000 val (as test), streamed",
            num_classes=NUM_CLASSES,
            image_size=(3, 224, 224),
            mean=MEAN,
            std=STD,
            augment=ResizedCropSpec(),
            citation=CITATION,
        )
    ]
