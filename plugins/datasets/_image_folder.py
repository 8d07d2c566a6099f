"""What the imagenet and imagenet100 dataset plugins share (a helper module, not a plugin).

ImageNet's layout in torchvision's ``ImageFolder`` convention (torchvision/datasets/folder.py:
``find_classes``, ``make_dataset``, ``IMG_EXTENSIONS``): classes are the sorted sub-folder names; the
images of a class are the files under its folder (sub-folders included, symlinks followed) whose
lower-cased name ends in one of ``IMG_EXTENSIONS``, in sorted order. Folders are listed with
``os.scandir``, which needs no ``stat`` per file (ImageNet's train split has 1.28 M).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from kdbench.errors import DataNotFoundError

__all__ = [
    "IMAGENET",
    "IMG_EXTENSIONS",
    "MEAN",
    "STD",
    "absolute",
    "class_folders",
    "prepare_hint",
    "scan_image_folder",
]

#: The folder under ``--data-root`` holding ImageNet-1k's ``train/`` and ``val/``.
IMAGENET = "imagenet"
#: The file name endings ImageFolder accepts (torchvision/datasets/folder.py), compared lower-cased.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: ImageNet's per-channel mean and std (of torchvision's ImageNet recipe).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DOWNLOADS = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"


def absolute(root: Path | str) -> Path:
    """Return ``root`` with ``~`` expanded, made absolute and normalised (symlinks kept)."""
    return Path(os.path.abspath(Path(root).expanduser()))


def prepare_hint(root: Path) -> str:
    """Return how to put ImageNet under ``--data-root root`` (one sentence block for error messages)."""
    folder = absolute(root) / IMAGENET
    return (
        "ImageNet (ILSVRC2012) cannot be downloaded automatically: its licence requires signing in at "
        f"image-net.org. Download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
        f"ILSVRC2012_devkit_t12.tar.gz from {DOWNLOADS} into {folder}, then run "
        f"torchvision.datasets.ImageNet('{folder}', split='train') and split='val' once (it needs scipy) "
        f"to sort them into {folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (or make that "
        f"layout with any other tool), and pass --data-root {absolute(root)}."
    )


def class_folders(folder: Path) -> list[str]:
    """Return the sorted names of the sub-folders of ``folder`` (ImageFolder's classes)."""
    if not Path(folder).is_dir():
        raise DataNotFoundError(f"expected the folder {folder} (one sub-folder per class)")
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


def _image_files(directory: str) -> list[str]:
    """Return the image files under ``directory`` in ImageFolder's order (sorted walk, sorted names)."""
    found: list[tuple[str, list[str]]] = []
    pending = [directory]
    while pending:
        current = pending.pop()
        names = []
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir():  # follows symlinks, like os.walk(followlinks=True)
                    pending.append(entry.path)
                elif entry.name.lower().endswith(IMG_EXTENSIONS):
                    names.append(entry.name)
        found.append((current, sorted(names)))
    return [os.path.join(current, name) for current, names in sorted(found) for name in names]


def scan_image_folder(folder: Path, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], torch.Tensor]:
    """Return the absolute image paths under ``folder/<class>/`` and their int64 labels.

    Label ``i`` is ``classes[i]`` (default: the sorted class folders). A class folder that is
    missing or holds no image is a :class:`DataNotFoundError` naming it.
    """
    folder = absolute(folder)
    classes = class_folders(folder) if classes is None else list(classes)
    missing = [name for name in classes if not (folder / name).is_dir()]
    if missing:
        shown = ", ".join(str(folder / name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataNotFoundError(f"{len(missing)} class folder(s) missing: expected {shown}{more}")
    files: list[str] = []
    counts: list[int] = []
    for name in classes:
        found = _image_files(str(folder / name))
        if not found:
            raise DataNotFoundError(
                f"class folder {folder / name} holds no image (accepted endings: {', '.join(IMG_EXTENSIONS)})"
            )
        files += found
        counts.append(len(found))
    labels = torch.repeat_interleave(torch.arange(len(classes), dtype=torch.int64), torch.tensor(counts))
    return tuple(files), labels
