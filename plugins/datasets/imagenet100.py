"""ImageNet-100: 100 ImageNet-1k classes (about 126,000 train / 5,000 val images), streamed from disk.

Seed project 000 (SSA-KD) trains on "ImageNet-100" but does not publish which 100 classes it used,
so kdbench uses the most common list: that of CMC (Y. Tian, D. Krishnan, P. Isola, "Contrastive
Multiview Coding", ECCV 2020), file ``imagenet100.txt`` of https://github.com/HobbitLong/CMC
(commit bc687a26de7ae350d98f671d25d164b65336b8c2), shipped as ``kdbench_plugins/data/imagenet100_cmc.txt``.
Numbers from another class list are not comparable with these.

On disk, under ``--data-root``, either a prepared subset, used when ``imagenet100/`` exists::

    imagenet100/train/<wnid>/*.JPEG    the 100 CMC class folders (others are ignored)
    imagenet100/val/<wnid>/*.JPEG

or else the same 100 class folders read straight out of a full ImageNet in torchvision's layout
(see the ``imagenet`` dataset plugin)::

    imagenet/train/<wnid>/*.JPEG
    imagenet/val/<wnid>/*.JPEG

Classes are numbered 0..99 in sorted wnid order; files are read as ImageFolder reads them. The val
split is the test set. Augmentation, mean and std: ImageNet's (224-pixel random-resized crops), not
seed 000's (main.py ``imagenet100_dataset`` at github motinwing/AFIE-distillation-SSA-KD @ 5cce0cd: a
``Resize((224, 224))``, flip and 15° rotation, with a mean and std of its own data).
"""

from __future__ import annotations

from pathlib import Path

from kdbench import DatasetSpec, ImageFiles, ResizedCropSpec, hookimpl
from kdbench.errors import DataNotFoundError

from ._image_folder import IMAGENET, MEAN, STD, absolute, prepare_hint, scan_image_folder

__all__ = ["CLASS_FILE", "FOLDER", "load_imagenet100", "wnids"]

FOLDER = "imagenet100"
NUM_CLASSES = 100
CLASS_FILE = Path(__file__).resolve().parent.parent / "data" / "imagenet100_cmc.txt"
CITATION = (
    "Y. Tian, D. Krishnan, P. Isola, Contrastive Multiview Coding, ECCV 2020 (ImageNet-100 class list); "
    "O. Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 2015"
)


def wnids() -> list[str]:
    """Return the 100 CMC wnids, sorted (label ``i`` is ``wnids()[i]``)."""
    lines = CLASS_FILE.read_text(encoding="utf-8").splitlines()
    found = sorted({line.strip() for line in lines if line.strip() and not line.startswith("#")})
    if len(found) != NUM_CLASSES:
        raise DataNotFoundError(f"{CLASS_FILE} lists {len(found)} distinct wnids, not {NUM_CLASSES}")
    return found


def _source(root: Path) -> Path:
    """Return the folder holding ``train/`` and ``val/``: the prepared subset if present, else full ImageNet."""
    subset = absolute(root) / FOLDER
    return subset if subset.is_dir() else absolute(root) / IMAGENET


def load_imagenet100(root: Path, download: bool) -> ImageFiles:
    """Return ImageNet-100's train files and val files (as the test set) from ``root``."""
    source = _source(root)
    missing = next((path for path in (source / "train", source / "val") if not path.is_dir()), None)
    if missing is not None:
        fetch = " and --download cannot fetch it" if download else ""
        raise DataNotFoundError(
            f"ImageNet-100 not found: expected the folder {missing}{fetch} (a prepared "
            f"{absolute(root) / FOLDER}/{{train,val}}/<wnid>/ holding the 100 classes of {CLASS_FILE.name}, "
            f"or a full ImageNet). {prepare_hint(root)}"
        )
    classes = wnids()
    try:
        train_files, train_labels = scan_image_folder(source / "train", classes)
        test_files, test_labels = scan_image_folder(source / "val", classes)
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"ImageNet-100 (the CMC classes of {CLASS_FILE.name}): {exc}") from None
    return ImageFiles(train_files, train_labels, test_files, test_labels, verified=None)


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="imagenet100",
            loader=load_imagenet100,
            description="ImageNet-100 (CMC's 100 ImageNet-1k classes): ~126,000 train / 5,000 val (as test), streamed",
            num_classes=NUM_CLASSES,
            image_size=(3, 224, 224),
            mean=MEAN,
            std=STD,
            augment=ResizedCropSpec(),
            citation=CITATION,
        )
    ]
