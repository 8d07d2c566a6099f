"""Loader ``dali``: NVIDIA DALI decodes only each crop's region of the JPEG, on the GPU (``kdbench[dali]``).

DALI (github.com/NVIDIA/DALI) is the fast path of the KD literature's ImageNet recipes (SemCKD's
``--dali gpu``); on an A100/H100 its ``mixed`` decoder can use the hardware JPEG engines. Here
it decodes with kdbench's crop boxes, not its own random ones: each batch's encoded files and
their boxes (from :mod:`kdbench.stream`, the image size read from the file's header) are fed to
a DALI pipeline through ``external_source``, so a run's batches are the ones every other loader
gives — same crops, same flips, resume exact — up to the decoder's and resizer's rounding.

Train: ``decoders.image_slice`` (the box only) → ``resize`` to S×S (linear, antialiased) →
``flip``. Eval: ``decoders.image`` → ``resize`` (shorter side) → ``slice`` (the centre box).
On the CPU the same pipeline runs with DALI's CPU operators (what the tests check here); on
CUDA the decode is ``mixed`` and the rest runs on the GPU.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kdbench import hookimpl
from kdbench.stream import LoaderSpec, StreamRequest, unreadable_image

__all__ = ["load_dali"]

_INPUTS = ("encoded", "anchor", "shape", "flip", "resize")


def _unavailable(device: torch.device) -> str | None:
    """Say whether DALI is installed without importing it (``--loader auto`` asks before every run command)."""
    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no ``nvidia`` package at all
        found = False
    return None if found else "NVIDIA DALI is not installed (pip install 'kdbench[dali]')"


def _pipeline(request: StreamRequest) -> Any:
    """Return the built DALI pipeline of the request's transform (train or eval), fed batch by batch."""
    from nvidia.dali import fn, pipeline_def, types

    cuda = request.device.type == "cuda"
    device_id = (request.device.index or 0) if cuda else None

    @pipeline_def(batch_size=max(request.batch_sizes), num_threads=max(1, request.workers), device_id=device_id,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)  # fmt: skip
    def transform() -> Any:
        encoded, anchor, shape, flip, resize = (fn.external_source(name=name) for name in _INPUTS)
        decoder = "mixed" if cuda else "cpu"
        size = request.size
        absolute = {"axis_names": "WH", "normalized_anchor": False, "normalized_shape": False}
        if request.train:
            images = fn.decoders.image_slice(encoded, anchor, shape, device=decoder, output_type=types.RGB, **absolute)
            images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        else:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            images = fn.resize(images, size=resize, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.slice(images, anchor, shape, **absolute)
        images = fn.flip(images, horizontal=flip)
        return fn.transpose(images, perm=[2, 0, 1])

    pipe = transform()
    pipe.build()
    return pipe


def _feeds(request: StreamRequest, start: int, end: int) -> dict[str, list[np.ndarray]]:
    """Return the external sources of positions [start, end): bytes, crop anchor / shape (x, y), flip, resize."""
    from PIL import Image

    feeds: dict[str, list[np.ndarray]] = {name: [] for name in _INPUTS}
    for position in range(start, end):
        path = request.path(position)
        try:
            data = np.fromfile(path, dtype=np.uint8)
            with Image.open(io.BytesIO(data.tobytes())) as header:  # reads the header, not the pixels
                width, height = header.size
        except (OSError, ValueError, SyntaxError) as exc:
            raise unreadable_image(path, exc) from None
        resize, box = request.geometry(position, width, height)
        feeds["encoded"].append(data)
        feeds["anchor"].append(np.array([box.left, box.top], dtype=np.float32))
        feeds["shape"].append(np.array([box.width, box.height], dtype=np.float32))
        feeds["flip"].append(np.array(int(box.flip), dtype=np.int32))
        feeds["resize"].append(np.array(resize[::-1] if resize else (height, width), dtype=np.float32))  # (H, W)
    return feeds


def _to_torch(output: Any, device: torch.device) -> torch.Tensor:
    """Return a DALI batch of equal-shape uint8 C×S×S images as an N×C×S×S tensor on ``device``."""
    dense = output.as_tensor()
    if device.type != "cuda":
        return torch.from_numpy(np.array(dense))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensor = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
    feed_ndarray(dense, tensor, cuda_stream=torch.cuda.current_stream(device))
    return tensor


def load_dali(request: StreamRequest) -> Iterator[torch.Tensor]:
    """Yield the request's batches, decoded and transformed by DALI on its device."""
    pipe = _pipeline(request)
    try:
        for start, end in request.bounds():
            for name, values in _feeds(request, start, end).items():
                if name != "resize" or not request.train:  # train crops need no resize before the box
                    pipe.feed_input(name, values)
            (output,) = pipe.run()
            yield _to_torch(output, request.device)
    finally:
        del pipe


@hookimpl
def kdbench_register_loaders() -> list[LoaderSpec]:
    return [
        LoaderSpec(
            name="dali",
            load=load_dali,
            description="NVIDIA DALI: ROI JPEG decode of each crop (mixed GPU decoder on CUDA), kdbench's crop boxes",
            unavailable=_unavailable,
            priority={"cuda": 30},
            citation="NVIDIA DALI (github.com/NVIDIA/DALI); SemCKD's --dali gpu ImageNet recipe",
        )
    ]
