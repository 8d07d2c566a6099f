"""Loader ``decode``: worker processes only read the files; JPEGs decode in batches on the device.

``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with nvJPEG (batched
decoding: pytorch/vision PR #8496); each image is then cropped and resized on the device with
``torchvision.transforms.v2.functional`` (bilinear, antialiased) and flipped when drawn. On the
CPU the same code decodes with libjpeg-turbo in this process (useful for tests, slower than
``pil``'s worker processes). A file that is not a JPEG, or one nvJPEG refuses (CMYK), is
decoded on the CPU (``decode_image``) and moved over. Crop boxes are the ones every loader
uses (:mod:`kdbench.stream`); the pixels differ from PIL's resize by rounding only (at most 1 level
in ``tests/test_streaming.py``). torchvision 0.29 deprecates its image decoders in favour of TorchCodec;
they still work, and a TorchCodec loader would be another plugin of this contract.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from kdbench import hookimpl
from kdbench.stream import LoaderSpec, StreamRequest, unreadable_image

from ._batches import RequestBatches, iterate

__all__ = ["decode_batch", "load_decode"]

_JPEG_MAGIC = b"\xff\xd8"


class _FileBytes(RequestBatches):
    def __getitem__(self, batch: int) -> list[torch.Tensor]:
        start, end = self.bounds[batch]
        return [_read(self.path(p)) for p in range(start, end)]


def _read(path: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as exc:
        raise unreadable_image(path, exc) from None


def _decode_one(data: torch.Tensor, device: torch.device, path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as exc:
        raise unreadable_image(path, exc) from None


def _decode_all(encoded: list[torch.Tensor], device: torch.device, paths: list[str]) -> list[torch.Tensor]:
    """Return every file decoded to a uint8 3×H×W tensor on ``device`` (JPEGs in one batched call)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == _JPEG_MAGIC]
    images: list[torch.Tensor | None] = [None] * len(encoded)
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file the batch decoder refuses: decode them one by one
            decoded = [_decode_one(encoded[i], device, paths[i]) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    return [image if image is not None else _decode_one(encoded[i], device, paths[i]) for i, image in enumerate(images)]


def decode_batch(encoded: list[torch.Tensor], request: StreamRequest, start: int) -> torch.Tensor:
    """Return the transformed batch of the files ``encoded`` (positions ``start``…) as uint8 N×3×S×S."""
    from torchvision.transforms.v2 import functional as tvf

    size = [request.size, request.size]
    out = []
    paths = [request.path(start + offset) for offset in range(len(encoded))]
    for offset, image in enumerate(_decode_all(encoded, request.device, paths)):
        resize, box = request.geometry(start + offset, image.shape[-1], image.shape[-2])
        if resize is not None:
            image = tvf.resize(image, [resize[1], resize[0]], antialias=True)
            image = tvf.crop(image, box.top, box.left, box.height, box.width)
        else:
            image = tvf.resized_crop(image, box.top, box.left, box.height, box.width, size, antialias=True)
        out.append(image.flip(-1) if box.flip else image)
    return torch.stack(out)


def load_decode(request: StreamRequest) -> Iterator[torch.Tensor]:
    """Yield the request's batches, decoded and transformed on its device."""
    for (start, _), encoded in zip(request.bounds(), iterate(_FileBytes(request)), strict=True):
        yield decode_batch(encoded, request, start)


def _unavailable(device: torch.device) -> str | None:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as exc:
        return f"torchvision.io.decode_jpeg is missing ({exc})"
    return None


@hookimpl
def kdbench_register_loaders() -> list[LoaderSpec]:
    return [
        LoaderSpec(
            name="decode",
            load=load_decode,
            description="batched torchvision.io.decode_jpeg on the device (nvJPEG on CUDA), crops and resizes there",
            unavailable=_unavailable,
            priority={"cuda": 20},
            citation="pytorch/vision PR #8496 (batched GPU JPEG decoding)",
        )
    ]
