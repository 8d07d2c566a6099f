"""Digits: the 8×8 handwritten digits of scikit-learn (UCI "Optical Recognition of Handwritten Digits").

Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits",
UCI Machine Learning Repository, 1998, https://doi.org/10.24432/C50P49 (CC BY
4.0). scikit-learn's ``load_digits`` ships that set's 1,797-image test part;
kdbench ships the same numbers in ``kdbench_plugins/data/digits.npz`` (see
``data/README.md``), so it needs no download and no scikit-learn.

Each image counts the ink pixels of a 4×4 block of a 32×32 bitmap (0..16); it is
scaled to uint8 0..255 as ``round(v · 255 / 16)``. The split is fixed, the same
everywhere and free of any RNG: within each class, in file order, every fifth
image starting with the third (class ranks 2, 7, 12, …) is test, the rest train —
1,438 train / 359 test images, 34–37 test images per class (20 % ± 1).
This tiny set lets the whole harness run end to end on a CPU in seconds.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kdbench import AugmentSpec, DatasetSpec, ImageData, hookimpl
from kdbench.errors import DataNotFoundError

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "TEST_EVERY", "TEST_OFFSET", "load_digits", "split_test_mask"]

TEST_EVERY = 5
"""One image in ``TEST_EVERY`` of each class is a test image."""
TEST_OFFSET = 2
"""Class rank (in file order) of the first test image of each class."""

DIGITS_MEAN = (0.3053,)
"""Mean pixel of the train split after ``/255`` (population statistics over all train pixels)."""
DIGITS_STD = (0.3757,)
"""Standard deviation of the train split's pixels after ``/255`` (ddof=0)."""

_DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "digits.npz"
_LEVELS = 16


def _read_raw() -> tuple[np.ndarray, np.ndarray]:
    """Return the shipped uint8 1797×8×8 grey levels (0..16) and int64 labels (0..9)."""
    try:
        with np.load(_DATA_FILE, allow_pickle=False) as archive:
            return archive["images"], archive["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataNotFoundError(
            f"digits data file {_DATA_FILE} is missing or unreadable ({exc}); reinstall kdbench"
        ) from exc


def split_test_mask(labels: np.ndarray) -> np.ndarray:
    """Return a bool mask of the fixed test split: per class, file-order ranks ``TEST_OFFSET + k·TEST_EVERY``."""
    mask = np.zeros(labels.shape[0], dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        mask[members[TEST_OFFSET::TEST_EVERY]] = True
    return mask


def _to_uint8(levels: np.ndarray) -> torch.Tensor:
    """Return grey levels 0..16 (N×8×8) as uint8 N×1×8×8 on 0..255, rounding half up."""
    scaled = (levels.astype(np.int64) * 255 + _LEVELS // 2) // _LEVELS
    return torch.from_numpy(scaled.astype(np.uint8)).unsqueeze(1).contiguous()


def load_digits(root: Path | None = None, download: bool = False) -> ImageData:
    """Return the digits train/test split as :class:`ImageData` (``root`` and ``download`` are ignored)."""
    levels, labels = _read_raw()
    test = split_test_mask(labels)
    images = _to_uint8(levels)
    targets = torch.from_numpy(labels.astype(np.int64))
    train_index = torch.from_numpy(np.flatnonzero(~test))
    test_index = torch.from_numpy(np.flatnonzero(test))
    return ImageData(
        train_images=images[train_index],
        train_labels=targets[train_index],
        test_images=images[test_index],
        test_labels=targets[test_index],
    )


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="digits",
            loader=load_digits,
            description=(
                "8×8 greyscale handwritten digits (UCI optdigits, as in scikit-learn), 10 classes, shipped with "
                "kdbench; fixed stratified split 1,438 train / 359 test; for CPU smoke runs"
            ),
            num_classes=10,
            image_size=(1, 8, 8),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            # Flipping a digit can change which digit it is; a 1-pixel shift is the 8×8 analogue of CIFAR's 4.
            augment=AugmentSpec(pad=1, flip=False),
            citation=(
                "E. Alpaydin and C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning "
                "Repository, 1998, doi:10.24432/C50P49"
            ),
        )
    ]
