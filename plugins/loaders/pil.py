"""Loader ``pil``: PIL decodes and transforms each image in DataLoader worker processes — works everywhere.

The reference toolkits' way (MDistiller, torchdistill: ``ImageFolder`` + torchvision transforms on
PIL images), with the crop of every sample given by its key (:mod:`kdbench.stream`) instead of
torch's global generator. Per image, as torchvision's transforms do it on a PIL image:
train ``crop`` → ``resize((S, S), BILINEAR)`` → ``FLIP_LEFT_RIGHT`` when drawn; eval
``resize`` (shorter side) → centre ``crop``. Batches travel to the device as uint8.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from kdbench import hookimpl
from kdbench.stream import LoaderSpec, StreamRequest, unreadable_image

from ._batches import RequestBatches, iterate

__all__ = ["load_pil", "transform_image"]


def transform_image(path: str, request: StreamRequest, position: int) -> np.ndarray:
    """Return the transformed image of ``position`` as an S×S×3 uint8 array."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for missing, truncated or foreign files
        raise unreadable_image(path, exc) from None
    resize, box = request.geometry(position, image.width, image.height)
    if resize is not None:
        image = image.resize(resize, Image.Resampling.BILINEAR)
    image = image.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    if resize is None:
        image = image.resize((request.size, request.size), Image.Resampling.BILINEAR)
    if box.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image, dtype=np.uint8)


class _PilBatches(RequestBatches):
    def __getitem__(self, batch: int) -> torch.Tensor:
        start, end = self.bounds[batch]
        out = np.empty((end - start, self.request.size, self.request.size, 3), dtype=np.uint8)
        for row, position in enumerate(range(start, end)):
            out[row] = transform_image(self.path(position), self.request, position)
        return torch.from_numpy(out).permute(0, 3, 1, 2)  # N×C×H×W view of the N×H×W×C pixels


def load_pil(request: StreamRequest) -> Iterator[torch.Tensor]:
    """Yield the request's batches as contiguous uint8 N×3×S×S tensors on its device."""
    for images in iterate(_PilBatches(request)):
        yield images.to(request.device, non_blocking=True).contiguous()


@hookimpl
def kdbench_register_loaders() -> list[LoaderSpec]:
    return [
        LoaderSpec(
            name="pil",
            load=load_pil,
            description="PIL decode + torchvision-equivalent transforms in DataLoader worker processes (any device)",
            priority={"cpu": 20, "cuda": 10},
            citation="the reference toolkits' ImageFolder + torchvision.transforms pipeline",
        )
    ]
