"""Device-side train augmentation, batched: zero-padded random crop + horizontal flip; RandAugment + Cutout.

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

:func:`rand_augment` is FixMatch's ``RandAugment(2, 10)`` followed by a Cutout,
as MLKD's reference code draws them (the strong view of ``mlkd``): per image,
operations drawn uniformly with replacement from the 14 of :data:`OPS`, each
magnitude uniform on its range, then a square of side U[0, ½)·W filled with
:data:`CUTOUT_FILL`. It works on uint8 N×C×H×W images (RGB or grey), vectorised
over the batch without host synchronisation, and reproduces PIL's integer
arithmetic exactly, so each operation (:func:`apply_rand_augment_ops`) and the
Cutout (:func:`cutout`) equal their PIL counterparts pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "CUTOUT_FILL",
    "OPS",
    "Views",
    "apply_rand_augment_ops",
    "apply_views",
    "cutout",
    "draw_views",
    "normalize",
    "num_views",
    "rand_augment",
    "random_crop_flip",
    "view_index",
]


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


# ---------------------------------------------------------------- RandAugment and Cutout (uint8 N×C×H×W)


#: The 14 operations of FixMatch's RandAugment as the reference draws them: (name, low, high) of the magnitude.
OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0),
    ("Identity", 0.0, 1.0),
    ("Posterize", 4.0, 8.0),
    ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)
_INDEX = {name: i for i, (name, _, _) in enumerate(OPS)}
#: Cutout's fill colour in the reference (an RGB triple; its PIL luma for one-channel images).
CUTOUT_FILL = (125, 123, 114)


# ---------------------------------------------------------------- pixel operations (uint8 N×C×H×W, PIL semantics)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """Return PIL's ``convert("L")`` of N×C×H×W uint8 images as int64 N×1×H×W (identity for one channel)."""
    if images.shape[1] == 1:
        return images.long()
    r, g, b = images.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return PIL's ``Image.blend(degenerate, images, factor)`` for factors in [0, 1] (float32, truncated)."""
    start = degenerate.float()
    out = start + factor.float().view(-1, 1, 1, 1) * (images.float() - start)
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Return ``ImageOps.autocontrast`` per channel: [lo, hi] stretched to [0, 255], truncated."""
    low = images.amin(dim=(2, 3), keepdim=True).double()
    high = images.amax(dim=(2, 3), keepdim=True).double()
    stretch = high > low
    # A true division (``255 / t`` would be computed as ``t.reciprocal() * 255`` and round differently).
    scale = torch.full_like(high, 255.0) / torch.where(stretch, high - low, torch.ones_like(high))
    out = (images.double() * scale + (-low * scale)).clamp_(0, 255).to(torch.uint8)
    return torch.where(stretch, out, images)


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """Return ``ImageOps.equalize`` per channel, PIL's integer histogram-equalisation table."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    table = (step // 2 + hist.cumsum(1) - hist) // step.clamp(min=1)
    out = table.clamp_(max=255).gather(1, flat)
    return torch.where(step > 0, out, flat).to(torch.uint8).view(n, c, h, w)


def _posterize(images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return ``ImageOps.posterize(image, int(v))``: keep the top ``int(v)`` bits."""
    bits = values.floor().clamp(1, 8).long()
    mask = torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits).bitwise_and(0xFF)
    mask = mask.to(torch.uint8).view(-1, 1, 1, 1)
    return images & mask


def _solarize(images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return ``ImageOps.solarize(image, v)``: invert the pixels at or above the threshold."""
    return torch.where(images.float() >= values.view(-1, 1, 1, 1).float(), 255 - images, images)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """Return PIL's ``ImageFilter.SMOOTH`` (3×3 ones with centre 5, over 13, rounded), borders copied."""
    h, w = images.shape[2:]
    x = images.int()
    total = 4 * x[:, :, 1 : h - 1, 1 : w - 1]
    for dy in range(3):
        for dx in range(3):
            total = total + x[:, :, dy : h - 2 + dy, dx : w - 2 + dx]
    # round(total / 13) in integers: the quotient is never within 1/26 of a rounding boundary.
    out = images.clone()
    out[:, :, 1 : h - 1, 1 : w - 1] = torch.div(2 * total + 13, 26, rounding_mode="floor").to(torch.uint8)
    return out


def _pixel_op(name: str, images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return the non-geometric operation ``name`` with per-sample magnitudes ``values``."""
    if name == "AutoContrast":
        return _autocontrast(images)
    if name == "Brightness":
        return _blend(torch.zeros_like(images), images, values)
    if name == "Color":
        return _blend(_luma(images).expand_as(images), images, values)
    if name == "Contrast":
        mean = (_luma(images).double().mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
        return _blend(mean.expand_as(images), images, values)
    if name == "Equalize":
        return _equalize(images)
    if name == "Posterize":
        return _posterize(images, values)
    if name == "Sharpness":
        return _blend(_smooth(images), images, values)
    if name == "Solarize":
        return _solarize(images, values)
    raise KeyError(name)


_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_PIXEL = tuple(name for name, _, _ in OPS if name not in (*_GEOMETRIC, "Identity"))


def _affine_coefficients(ops: torch.Tensor, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return N×6 float64 output→input affine maps (a, b, c, d, e, f) as PIL's transform data."""
    v = values.double()
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    # Image.rotate: angle → −radians(angle mod 360), coefficients rounded to 15 decimals, about the centre.
    theta = -torch.deg2rad(torch.remainder(v, 360.0))
    cos, sin = torch.round(torch.cos(theta), decimals=15), torch.round(torch.sin(theta), decimals=15)
    cx, cy = width / 2, height / 2
    rotate = torch.stack([cos, sin, -cx * cos - cy * sin + cx, -sin, cos, cx * sin - cy * cos + cy], 1)
    table = {
        "Rotate": rotate,
        "ShearX": torch.stack([one, v, zero, zero, one, zero], 1),
        "ShearY": torch.stack([one, zero, zero, v, one, zero], 1),
        "TranslateX": torch.stack([one, zero, v * width, zero, one, zero], 1),
        "TranslateY": torch.stack([one, zero, zero, zero, one, v * height], 1),
    }
    coefficients = torch.stack([one, zero, zero, zero, one, zero], 1)
    for name, rows in table.items():
        coefficients = torch.where((ops == _INDEX[name]).view(-1, 1), rows, coefficients)
    return coefficients


def _source_pixels(coefficients: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return N×H×W source rows and columns of PIL's nearest-neighbour affine transform (−1: outside).

    PIL samples output pixel (x, y) at ``a·(x + ½) + b·(y + ½) + c`` (and likewise
    for y). Pure scalings and translations (b = d = 0) go through its
    floating-point path (truncation, negatives outside); every other map through
    its 16.16 fixed-point path (``affine_fixed`` in ``libImaging/Geometry.c``).
    """
    device = coefficients.device
    a, b, c, d, e, f = (t.view(-1, 1, 1) for t in coefficients.unbind(1))
    y = torch.arange(height, device=device, dtype=torch.float64).view(1, -1, 1)
    x = torch.arange(width, device=device, dtype=torch.float64).view(1, 1, -1)
    # Floating-point path: COORD(v) = −1 for v < 0, else (int) v; columns depend on x only, rows on y only.
    col_float = torch.floor(c + a * (x + 0.5)).long().expand(-1, height, -1)
    row_float = torch.floor(f + e * (y + 0.5)).long().expand(-1, -1, width)

    def fix(value: torch.Tensor) -> torch.Tensor:
        return torch.floor(value * 65536.0 + 0.5).long()

    xi, yi = x.long(), y.long()
    col_fixed = (fix(c + a * 0.5 + b * 0.5) + xi * fix(a) + yi * fix(b)) >> 16
    row_fixed = (fix(f + d * 0.5 + e * 0.5) + xi * fix(d) + yi * fix(e)) >> 16
    scaling = (b == 0) & (d == 0)
    cols = torch.where(scaling, col_float, col_fixed)
    rows = torch.where(scaling, row_float, row_fixed)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return torch.where(inside, rows, -1), torch.where(inside, cols, -1)


def _geometric(images: torch.Tensor, ops: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return every image resampled by its affine operation (identity for the others), black outside."""
    n, c, h, w = images.shape
    rows, cols = _source_pixels(_affine_coefficients(ops, values, h, w), h, w)
    inside = rows >= 0
    index = (rows.clamp(min=0) * w + cols.clamp(min=0)).view(n, 1, h * w).expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.zeros_like(out))


def apply_rand_augment_ops(images: torch.Tensor, ops: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return uint8 N×C×H×W ``images`` with operation ``OPS[ops[i]]`` of magnitude ``values[i]`` applied to image i.

    Vectorised: the affine operations are one gather; each other operation is
    computed for the batch and kept where drawn. No host synchronisation.
    """
    out = _geometric(images, ops, values)
    for name in _PIXEL:
        out = torch.where((ops == _INDEX[name]).view(-1, 1, 1, 1), _pixel_op(name, out, values), out)
    return out


def cutout(images: torch.Tensor, fractions: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the reference's ``Cutout(img, fraction)`` with the square's raw centre (x, y) given per image.

    As ``CutoutAbs``: side v = fraction·W, x0 = int(max(0, x − v/2)),
    x1 = min(W, x0 + v) (likewise y), PIL's ``rectangle`` filling columns x0 …
    int(x1) and rows y0 … int(y1) inclusive; nothing for fraction ≤ 0.
    """
    n, c, h, w = images.shape
    side = fractions.double() * w
    x0 = (x.double() - side / 2).clamp(min=0).floor()
    y0 = (y.double() - side / 2).clamp(min=0).floor()
    x1 = torch.clamp(x0 + side, max=w).floor()
    y1 = torch.clamp(y0 + side, max=h).floor()
    cols = torch.arange(w, device=images.device, dtype=torch.float64).view(1, 1, -1)
    rows = torch.arange(h, device=images.device, dtype=torch.float64).view(1, -1, 1)

    def within(t: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return (t >= low.view(-1, 1, 1)) & (t <= high.view(-1, 1, 1))

    square = within(cols, x0, x1) & within(rows, y0, y1) & (fractions > 0).view(-1, 1, 1)
    fill = torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=images.device).view(1, 3, 1, 1)
    if c == 1:
        fill = _luma(fill).to(torch.uint8)
    return torch.where(square.unsqueeze(1), fill.expand(n, c, h, w), images)


def rand_augment(
    images: torch.Tensor, generator: torch.Generator, num_ops: int = 2, cutout_max: float = 0.5
) -> torch.Tensor:
    """Return FixMatch-style ``RandAugment(num_ops)`` + Cutout of uint8 images, all randomness from ``generator``.

    Per image: ``num_ops`` operations drawn uniformly with replacement, each
    magnitude uniform on its range, then a Cutout of side fraction
    U[0, ``cutout_max``) whose raw centre is ``np.random.uniform(W)`` (uniform on (1, W]).
    """
    n, _, h, w = images.shape
    device = generator.device
    ops = torch.randint(0, len(OPS), (n, num_ops), generator=generator, device=device)
    unit = torch.rand((n, num_ops), generator=generator, device=device, dtype=torch.float64)
    low = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64, device=device)
    high = torch.tensor([hi for _, _, hi in OPS], dtype=torch.float64, device=device)
    values = low[ops] + (high[ops] - low[ops]) * unit
    fractions = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * cutout_max
    centre = torch.rand((n, 2), generator=generator, device=device, dtype=torch.float64)
    out = images
    target = images.device
    for k in range(num_ops):
        out = apply_rand_augment_ops(out, ops[:, k].to(target), values[:, k].to(target))
    x, y = w + (1 - w) * centre[:, 0], h + (1 - h) * centre[:, 1]
    return cutout(out, fractions.to(target), x.to(target), y.to(target))
