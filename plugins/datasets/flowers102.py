"""Oxford 102 Flowers: 102 flower classes, 8,189 images, streamed from disk.

Source: M.-E. Nilsback and A. Zisserman, "Automated Flower Classification over a Large Number of
Classes", ICVGIP 2008, https://www.robots.ox.ac.uk/~vgg/data/flowers/102/.

Seed project 000 (SSA-KD) also trains on a "Flowers", but a different one: 5 classes (daisy, dandelion,
roses, sunflower, tulips) read with ImageFolder from ``flower_data/{train,val}`` in a split it does not
publish (github motinwing/AFIE-distillation-SSA-KD @ 5cce0cd, main.py ``flower_dataset``). kdbench uses the
standard Oxford 102 Flowers instead, with that function's crop recipe: numbers are not comparable with the seed's.

On disk, torchvision's ``Flowers102`` format (torchvision/datasets/flowers102.py: ``_file_dict``,
``_splits_map``) under ``--data-root``::

    flowers-102/jpg/image_00001.jpg … image_08189.jpg    102flowers.tgz extracted
    flowers-102/imagelabels.mat                          ``labels``: 8,189 class ids, 1-based
    flowers-102/setid.mat                                ``trnid``, ``valid``, ``tstid``: 1-based image ids

Splits: train = ``trnid`` + ``valid`` (1,020 + 1,020 = 2,040 images, the usual fine-tuning protocol;
kdbench has no use for a separate val split) and test = ``tstid`` (6,149), each in the order the
file lists them. Labels are made 0-based (0..101). ``--download`` fetches the three files from the
URLs torchvision uses, checked against its MD5s. The two .mat files are compared with those MD5s at
every load: a difference loads, but as ``verified=False`` ("unverified data"); the JPEGs have no
per-file checksums, so matching .mat files give ``verified=None``.

The .mat files are MATLAB 5 files; kdbench reads their numeric arrays itself (``read_mat``, after
the "MAT-File Format" reference of MathWorks) rather than depend on scipy.

Augmentation, mean and std: ImageNet's recipe (``RandomResizedCrop(224)`` + flip; ``Resize(256)`` +
``CenterCrop(224)``; ImageNet's mean and std), as seed 000's ``flower_dataset`` uses them.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdbench import DatasetSpec, ImageFiles, ResizedCropSpec, hookimpl
from kdbench.errors import DataNotFoundError

__all__ = ["FILES", "FOLDER", "URL", "load_flowers102", "read_mat"]

FOLDER = "flowers-102"
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
#: File name → MD5, as torchvision publishes them (``Flowers102._file_dict``).
FILES = {
    "102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c",
}
NUM_CLASSES = 102
MEAN = (0.485, 0.456, 0.406)  # ImageNet's
STD = (0.229, 0.224, 0.225)
CITATION = (
    "M.-E. Nilsback and A. Zisserman, Automated Flower Classification over a Large Number of Classes, ICVGIP 2008"
)

# MAT-file v5 data types (miINT8 … miUINT64) → numpy dtype codes; miMATRIX and miCOMPRESSED elements.
_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MATRIX, _COMPRESSED = 14, 15
_NUMERIC_CLASSES = range(6, 16)  # mxDOUBLE_CLASS … mxUINT64_CLASS
_COMPLEX = 0x0800


def _elements(data: bytes, order: str, path: Path) -> list[tuple[int, bytes]]:
    """Split ``data`` into its (type, payload) data elements, small-element form included."""
    found, offset = [], 0
    while offset + 8 <= len(data):
        kind, size = struct.unpack_from(order + "II", data, offset)
        if kind >> 16:  # small data element: size in the upper half, payload in the tag's second word
            found.append((kind & 0xFFFF, data[offset + 4 : offset + 4 + (kind >> 16)]))
            offset += 8
            continue
        if offset + 8 + size > len(data):
            raise DataNotFoundError(f"{path}: truncated MAT-file (element at byte {offset} runs past the end)")
        found.append((kind, data[offset + 8 : offset + 8 + size]))
        offset += 8 + (size if kind == _COMPRESSED else -(-size // 8) * 8)
    return found


def _matrix(payload: bytes, order: str, path: Path) -> tuple[str, np.ndarray] | None:
    """Return (name, array) of a miMATRIX element holding a real numeric array, else None."""
    parts = _elements(payload, order, path)
    if len(parts) < 4:
        return None
    flags = struct.unpack_from(order + "I", parts[0][1])[0]
    if (flags & 0xFF) not in _NUMERIC_CLASSES or flags & _COMPLEX or parts[3][0] not in _NUMERIC:
        return None
    shape = tuple(int(v) for v in np.frombuffer(parts[1][1], order + "i4"))
    name = parts[2][1].decode("ascii")
    values = np.frombuffer(parts[3][1], order + _NUMERIC[parts[3][0]])
    if values.size != int(np.prod(shape)):
        raise DataNotFoundError(f"{path}: variable {name!r} has {values.size} values for shape {shape}")
    return name, values.reshape(shape, order="F")


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """Return the real numeric arrays of the MATLAB 5 MAT-file at ``path`` by name (others are skipped)."""
    data = Path(path).read_bytes()
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if len(data) < 128 or order is None or struct.unpack_from(order + "H", data, 124)[0] != 0x0100:
        raise DataNotFoundError(f"{path}: not a MATLAB 5 MAT-file (re-download it)")
    arrays = {}
    for kind, payload in _elements(data[128:], order, path):
        if kind == _COMPRESSED:
            try:
                kind, payload = _elements(zlib.decompress(payload), order, path)[0]
            except (zlib.error, IndexError) as exc:
                raise DataNotFoundError(f"{path}: corrupt compressed MAT-file element ({exc})") from None
        found = _matrix(payload, order, path) if kind == _MATRIX else None
        if found is not None:
            arrays[found[0]] = found[1]
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _missing(folder: Path) -> Path | None:
    """Return the first of the expected paths under ``folder`` that does not exist, or None."""
    return next((p for p in (folder / "jpg", folder / "imagelabels.mat", folder / "setid.mat") if not p.exists()), None)


def _download(folder: Path) -> None:
    """Fetch and extract the three files into ``folder`` with torchvision, as DataNotFoundError on failure."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    try:
        if not (folder / "jpg").is_dir():
            download_and_extract_archive(URL + "102flowers.tgz", str(folder), md5=FILES["102flowers.tgz"])
        for name in ("imagelabels.mat", "setid.mat"):
            download_url(URL + name, str(folder), md5=FILES[name])
    except Exception as exc:  # network, disk, checksum: all mean the data is not there
        raise DataNotFoundError(
            f"Flowers-102 download into {folder} failed ({type(exc).__name__}: {exc}). Fetch 102flowers.tgz, "
            f"imagelabels.mat and setid.mat from {URL} yourself into {folder} and extract the .tgz there."
        ) from exc


def _variables(path: Path, *names: str) -> list[np.ndarray]:
    """Return the variables ``names`` of ``path``, each as a flat int64 array of whole numbers."""
    arrays = read_mat(path)
    found = []
    for name in names:
        if name not in arrays:
            raise DataNotFoundError(
                f"{path}: no numeric variable {name!r} (found: {', '.join(sorted(arrays)) or 'none'})"
            )
        values = arrays[name].reshape(-1)
        if not np.array_equal(values, np.round(values)):
            raise DataNotFoundError(f"{path}: {name!r} holds non-integer values")
        found.append(values.astype(np.int64))
    return found


def _split(folder: Path, labels: np.ndarray, ids: np.ndarray, present: set[str]) -> tuple[list[str], torch.Tensor]:
    """Return the image paths and 0-based labels of the 1-based image ``ids``."""
    if ids.size and (ids.min() < 1 or ids.max() > labels.size):
        raise DataNotFoundError(f"{folder / 'setid.mat'}: image ids must lie in 1..{labels.size} (imagelabels.mat)")
    names = [f"image_{i:05d}.jpg" for i in ids.tolist()]
    absent = [name for name in names if name not in present]
    if absent:
        raise DataNotFoundError(
            f"Flowers-102: {len(absent)} image(s) of setid.mat missing from {folder / 'jpg'}, e.g. {absent[0]}; "
            f"extract 102flowers.tgz ({URL}) in {folder}"
        )
    return [str(folder / "jpg" / name) for name in names], torch.from_numpy(labels[ids - 1] - 1)


def load_flowers102(root: Path, download: bool) -> ImageFiles:
    """Return Flowers-102's train (trnid + valid) and test (tstid) files from ``root/flowers-102``."""
    folder = Path(os.path.abspath(Path(root).expanduser())) / FOLDER
    if download and _missing(folder) is not None:
        _download(folder)
    missing = _missing(folder)
    if missing is not None:
        raise DataNotFoundError(
            f"Flowers-102 not found: expected {missing}. Put 102flowers.tgz (extracted: {folder / 'jpg'}/"
            f"image_00001.jpg …), imagelabels.mat and setid.mat from {URL} in {folder}, or pass --download."
        )
    (labels,) = _variables(folder / "imagelabels.mat", "labels")
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DataNotFoundError(f"{folder / 'imagelabels.mat'}: labels must lie in 1..{NUM_CLASSES}")
    present = {entry.name for entry in (folder / "jpg").iterdir()}
    train, val, test = _variables(folder / "setid.mat", "trnid", "valid", "tstid")
    train_files, train_labels = _split(folder, labels, np.concatenate([train, val]), present)
    test_files, test_labels = _split(folder, labels, test, present)
    genuine = all(_md5(folder / name) == FILES[name] for name in ("imagelabels.mat", "setid.mat"))
    return ImageFiles(train_files, train_labels, test_files, test_labels, verified=None if genuine else False)


@hookimpl
def kdbench_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="flowers102",
            loader=load_flowers102,
            description="Oxford 102 Flowers: 102 classes, 2,040 train (train + val) / 6,149 test, streamed",
            num_classes=NUM_CLASSES,
            image_size=(3, 224, 224),
            mean=MEAN,
            std=STD,
            augment=ResizedCropSpec(),
            citation=CITATION,
        )
    ]
