"""The loader contract: how a streaming dataset's images reach the device, batch by batch.

A dataset too large for the device (ImageNet) is :class:`~kdbench.ImageFiles`. Each epoch
the engine draws, from (run seed, epoch), the order of the train images and one 62-bit key
per position; every sample's random crop and flip follow from its key and its image's size
alone (:func:`train_geometry`). So the batches do not depend on which loader decodes them,
how many worker processes it uses or which DDP rank asks for them, and a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would.

A loader is a plugin (``kdbench_register_loaders`` returns :class:`LoaderSpec` s):
``load(request)`` yields, for each batch of a :class:`StreamRequest`, a uint8 B×3×S×S
tensor on ``request.device`` holding the transformed images in the requested order.
The first-party ones: ``pil`` (PIL in DataLoader worker processes: works everywhere),
``decode`` (``torchvision.io.decode_jpeg`` in batches on the device, crops and resizes
there), ``dali`` (NVIDIA DALI, when installed). ``kdbench run --loader auto`` picks
the available loader with the highest :attr:`LoaderSpec.priority` for the device.

Transforms (torchvision's ImageNet recipe, :class:`~kdbench.ResizedCropSpec`):

- train: ``RandomResizedCrop(S, scale, ratio)`` — up to 10 tries of an area fraction
  uniform on ``scale`` and a log-uniform aspect ratio on ``ratio``, the box's top-left
  uniform among the positions that fit; else the central crop clamped to ``ratio`` —
  then resized to S×S (bilinear, antialiased) and flipped when the key's coin says so.
- eval: ``Resize(eval_resize)`` (shorter side; the longer one truncated as torchvision
  does) then ``CenterCrop(S)``.

The random numbers come from numpy's Philox generator keyed by the sample's key, not from
torch's global generator, so the distribution is torchvision's and the stream is kdbench's.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import numpy as np

from kdbench.errors import DataNotFoundError
from kdbench.specs import ResizedCropSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "Box",
    "LoaderSpec",
    "StreamRequest",
    "eval_geometry",
    "path_array",
    "train_geometry",
    "unreadable_image",
]

#: Keys are drawn below this bound (they fit an int64 tensor on any device).
KEY_BOUND = 1 << 62


@final
@dataclass(frozen=True, slots=True)
class Box:
    """Where to cut one image: rows ``top:top+height``, columns ``left:left+width``, then flip or not."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def train_geometry(width: int, height: int, key: int, augment: ResizedCropSpec) -> Box:
    """Return the random-resized-crop box (and flip) of an image of ``width``×``height`` for sample ``key``."""
    rng = np.random.Generator(np.random.Philox(key=int(key)))
    flip = bool(augment.flip and rng.random() < 0.5)
    area = width * height
    log_low, log_high = math.log(augment.ratio[0]), math.log(augment.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(augment.scale[0], augment.scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Box(top, left, h, w, flip)
    ratio = width / height  # torchvision's fallback: the central crop, clamped to the ratio range
    if ratio < augment.ratio[0]:
        w, h = width, round(width / augment.ratio[0])
    elif ratio > augment.ratio[1]:
        w, h = round(height * augment.ratio[1]), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w, flip)


def eval_geometry(width: int, height: int, resize: int, size: int) -> tuple[tuple[int, int], Box]:
    """Return the (width, height) an image is resized to and the centre crop of ``size`` cut from it."""
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if new_w < size or new_h < size:
        raise ValueError(f"an image resized to {new_w}×{new_h} is smaller than the {size}×{size} centre crop")
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return (new_w, new_h), Box(top, left, size, size)


def unreadable_image(path: str, exc: BaseException) -> DataNotFoundError:
    """Return the error a loader raises for an image it cannot read (missing, truncated, not an image), naming it."""
    return DataNotFoundError(
        f"cannot read image {path}: {exc} (replace or restore the file and run again: the run resumes from its "
        "last checkpoint)"
    )


def path_array(paths: Sequence[str]) -> np.ndarray:
    """Return ``paths`` as one numpy array of file-system bytes.

    Worker processes forked from the trainer then read it without touching a Python object's reference
    count, so they share its pages instead of each copying a list of 1.28 M strings.
    """
    return np.array([os.fsencode(path) for path in paths], dtype=np.bytes_)


@final
@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One pass over image files, cut into batches: what a loader is asked to deliver.

    ``order`` gives the file (an index into ``files``: paths, or a :func:`path_array`) of every
    position, batch after batch (``batch_sizes`` says where each ends); ``keys`` one key per
    position for train transforms, or None for eval transforms. ``workers`` is how many
    processes may decode (0: in this process). Read a position's file with :meth:`path`.
    """

    files: Sequence[str] | np.ndarray
    order: np.ndarray
    keys: np.ndarray | None
    batch_sizes: tuple[int, ...]
    size: int
    augment: ResizedCropSpec
    device: torch.device
    workers: int = 0

    def __post_init__(self) -> None:
        if sum(self.batch_sizes) != len(self.order):
            raise ValueError(f"batch sizes add up to {sum(self.batch_sizes)}, the order has {len(self.order)}")
        if self.keys is not None and len(self.keys) != len(self.order):
            raise ValueError("a train request needs one key per position")

    @property
    def train(self) -> bool:
        """Return whether the request asks for train transforms (random crops) rather than eval ones."""
        return self.keys is not None

    def bounds(self) -> list[tuple[int, int]]:
        """Return each batch's [start, end) positions."""
        ends = np.cumsum((0, *self.batch_sizes))
        return [(int(a), int(b)) for a, b in itertools.pairwise(ends)]

    def path(self, position: int) -> str:
        """Return the file of ``position``."""
        name = self.files[int(self.order[position])]
        return os.fsdecode(name) if isinstance(name, bytes) else str(name)

    def geometry(self, position: int, width: int, height: int) -> tuple[tuple[int, int] | None, Box]:
        """Return the resize before the crop (eval only; None in train) and the crop box of ``position``."""
        if self.keys is None:
            return eval_geometry(width, height, self.augment.eval_resize, self.size)
        return None, train_geometry(width, height, int(self.keys[position]), self.augment)


@final
@dataclass(frozen=True, slots=True)
class LoaderSpec:
    """A way of reading a streaming dataset's batches onto the device.

    ``load(request)`` yields one uint8 B×3×S×S device tensor per batch of the request, in
    order. ``unavailable(device)`` returns why the loader cannot serve that device (a
    missing package, no GPU) or None. ``priority`` per device type ranks the available
    loaders for ``--loader auto`` (a type it lacks: never picked automatically).
    """

    name: str
    load: Callable[[StreamRequest], Iterator[torch.Tensor]]
    description: str
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    priority: Mapping[str, int] = field(default_factory=dict)
    citation: str = ""
