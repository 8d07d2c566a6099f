"""Tiny-ImageNet read from generated files in the official layout (JPEGs, wnids.txt, val_annotations.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench_plugins.datasets.tiny_imagenet import FOLDER, load_tiny_imagenet
from PIL import Image

from kdbench.errors import DataNotFoundError

WNIDS = ["n02124075", "n01443537", "n09246464"]  # deliberately unsorted in wnids.txt


def _write(root: Path) -> dict[str, int]:
    """Write a 3-class Tiny-ImageNet (2 train images per class, one grey-scale; 3 val images); return colours."""
    folder = root / FOLDER
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n", encoding="utf-8")
    shade = {wnid: 40 + 70 * index for index, wnid in enumerate(sorted(WNIDS))}
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        Image.new("RGB", (64, 64), (shade[wnid],) * 3).save(images / f"{wnid}_0.JPEG", quality=100)
        Image.new("L", (64, 64), shade[wnid]).save(images / f"{wnid}_1.JPEG", quality=100)
    lines = []
    for index, wnid in enumerate(reversed(WNIDS)):
        Image.new("RGB", (64, 64), (shade[wnid],) * 3).save(
            folder / "val" / "images" / f"val_{index}.JPEG", quality=100
        )
        lines.append(f"val_{index}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return shade


def test_tiny_imagenet_loads_its_layout_with_sorted_wnid_labels(tmp_path: Path) -> None:
    shade = _write(tmp_path)
    data = load_tiny_imagenet(tmp_path, download=False)
    assert tuple(data.train_images.shape) == (6, 3, 64, 64) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]  # sorted wnids: n01443537, n02124075, n09246464
    assert data.test_labels.tolist() == [2, 0, 1]  # from val_annotations.txt, reversed order written
    for image, label in zip(data.train_images, data.train_labels):
        expected = shade[sorted(WNIDS)[label]]
        assert np.abs(image.numpy().astype(int) - expected).max() <= 1  # grey-scale made RGB, JPEG at quality 100
    assert data.verified is None


def test_missing_or_malformed_tiny_imagenet_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"Tiny-ImageNet not found: expected .*tiny-imagenet-200/wnids.txt"):
        load_tiny_imagenet(tmp_path, download=False)
    _write(tmp_path)
    annotations = tmp_path / FOLDER / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n", encoding="utf-8")
    with pytest.raises(DataNotFoundError, match=r"val_annotations.txt:1: expected"):
        load_tiny_imagenet(tmp_path, download=False)


def test_the_dataset_is_registered_for_the_device_resident_path(host) -> None:
    spec = host.datasets.get("tiny-imagenet")
    assert (spec.num_classes, spec.image_size, spec.augment.pad, spec.augment.flip) == (200, (3, 64, 64), 4, True)
