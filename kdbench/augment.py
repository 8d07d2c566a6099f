"""Device-side train augmentation: zero-padded random crop + horizontal flip, batched.

The engine keeps a whole train set on the device as uint8 N×C×H×W and augments
each batch here without per-sample Python or host syncs. The random parameters
are drawn explicitly (:func:`draw_views`) and applied separately
(:func:`apply_views`) so that a view can be named by an integer
(:func:`view_index`): with padding ``p`` and flipping there are
``(2p + 1)² · 2`` views per image (162 for the CIFAR recipe), which lets a
frozen teacher's outputs be tabulated by (sample, view).

The distribution equals torchvision's ``RandomCrop(size, padding=p)`` (zero
fill) followed by ``RandomHorizontalFlip(0.5)``: the crop's top and left offsets
into the padded image are independent and uniform on ``0..2p`` and the flip is
an independent fair coin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["Views", "apply_views", "draw_views", "normalize", "num_views", "random_crop_flip", "view_index"]


@dataclass(frozen=True, slots=True)
class Views:
    """Per-sample augmentation parameters: crop offsets into the padded image and flip bits."""

    dy: torch.Tensor
    """int64 (B,): top offset into the padded image, in ``0..2·pad``."""
    dx: torch.Tensor
    """int64 (B,): left offset into the padded image, in ``0..2·pad``."""
    flip: torch.Tensor
    """bool (B,): flip horizontally after cropping."""


def draw_views(
    n: int, pad: int, flip: bool, generator: torch.Generator, device: torch.device | str | None = None
) -> Views:
    """Return ``n`` independent views: offsets uniform on ``0..2·pad``, flips fair coins (or all False).

    Numbers are drawn on ``generator``'s device and then moved to ``device``
    (default: the generator's); give a generator on the target device to stay
    free of host-device copies.
    """
    source = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=source)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=source)
    if flip:
        flips = torch.rand(n, generator=generator, device=source) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=source)
    target = source if device is None else torch.device(device)
    return Views(dy=dy.to(target), dx=dx.to(target), flip=flips.to(target))


def num_views(pad: int, flip: bool) -> int:
    """Return how many distinct views an image has: ``(2·pad + 1)²``, doubled with flipping."""
    return (2 * pad + 1) ** 2 * (2 if flip else 1)


def view_index(views: Views, pad: int, flip: bool) -> torch.Tensor:
    """Return each view's int64 index in ``0..num_views(pad, flip) - 1``: ``(dy·(2p+1) + dx)·2 + flip``.

    Without flipping the index is ``dy·(2p+1) + dx``.
    """
    side = 2 * pad + 1
    crop = views.dy * side + views.dx
    if not flip:
        return crop
    return crop * 2 + views.flip.to(torch.int64)


def apply_views(images: torch.Tensor, views: Views, pad: int) -> torch.Tensor:
    """Return the B×C×H×W crops of ``images`` zero-padded by ``pad``, at (dy, dx), flipped where asked.

    One gather for the whole batch; works for any dtype and device and returns
    a contiguous tensor.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    device = images.device
    rows = views.dy.to(device).unsqueeze(1) + torch.arange(height, device=device)
    offsets = torch.arange(width, device=device)
    # A flipped crop reads its columns right to left.
    offsets = torch.where(views.flip.to(device).unsqueeze(1), width - 1 - offsets, offsets)
    cols = views.dx.to(device).unsqueeze(1) + offsets
    sample = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    channel = torch.arange(channels, device=device).view(1, channels, 1, 1)
    out = padded[sample, channel, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
    return out.contiguous()


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Return ``images`` randomly cropped after zero padding by ``pad`` and (if ``flip``) h-flipped."""
    views = draw_views(images.shape[0], pad, flip, generator, images.device)
    return apply_views(images, views, pad)


@lru_cache(maxsize=32)
def _channel_column(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Return ``values`` as a float32 C×1×1 tensor on ``device`` (cached; never modify it)."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Return float32 ``(images / 255 - mean) / std`` per channel for uint8 (B×)C×H×W ``images``.

    Same operations, in the same order, as torchvision's ``ToTensor`` followed
    by ``Normalize(mean, std)``.
    """
    mean_col = _channel_column(tuple(float(m) for m in mean), images.device)
    std_col = _channel_column(tuple(float(s) for s in std), images.device)
    return images.to(torch.float32).div(255).sub(mean_col).div(std_col)
