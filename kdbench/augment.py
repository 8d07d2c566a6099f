"""Device-side train augmentation, batched: zero-padded random crop + horizontal flip; RandAugment + Cutout policies.

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

RandAugment + Cutout is a :class:`RandAugmentPolicy`: the operations with their
magnitude ranges, how many are applied per image, and the Cutout's largest side
fraction and fill. Per image, ``num_ops`` operations are drawn uniformly with
replacement from the policy's, each magnitude uniform on its range, and applied in
turn; then a square of side U[0, ``cutout_max``)·W whose raw centre is
``np.random.uniform(W)`` (uniform on (1, W]) is filled with the policy's colour.
:func:`apply_policy` does this to a uint8 N×C×H×W batch (RGB or grey) with every
random number from one ``torch.Generator``, vectorised over the batch and free of
host synchronisation; :func:`draw_policy` and :func:`apply_policy_draws` split the
draws from the pixels (as :func:`draw_views` / :func:`apply_views` do). PIL's
integer arithmetic is reproduced exactly, so each operation
(:func:`apply_rand_augment_ops`) and the Cutout (:func:`cutout`) equal their PIL
counterparts pixel for pixel. Both references apply it after ``RandomCrop(32,
padding=4)`` and ``RandomHorizontalFlip()`` and before ``ToTensor`` / ``Normalize``,
so a strong view is ``apply_policy(apply_views(raw, views, 4), policy, generator)``.

Two policies are defined, equal in everything but Posterize's range:

- :data:`FIXMATCH`: FixMatch's ``RandAugment(2, 10)`` as MLKD's code draws it (the
  strong view of ``mlkd``). ``Jin-Ying/Multi-Level-Logit-Distillation`` @ 5ee473f,
  ``mdistiller/dataset/cifar100.py``: the 14 operations and ranges :272-289, the
  draws :298-304, ``Cutout`` / ``CutoutAbs`` :242-269 (centre :256-257, fill :265),
  after RandomCrop + HFlip :332-334. :func:`rand_augment` is this policy with
  ``num_ops`` and ``cutout_max`` overridable, draw for draw as before policies existed.
- :data:`STREAMLINED`: the strong copy of Streamlined KD's CIFAR-100 recipe.
  ``HyunJunSik/StreamLined`` @ e4ab795 / 4681da2 (``CIFAR-100/Utils/train.py`` is one
  blob from e4ab795 to 7458628), whose ``distillation_train.py`` imports
  ``load_dataset`` from ``train.py`` (:167) and trains on it (:192). In
  ``CIFAR-100/Utils/train.py``: strong = RandomCrop(32, padding=4) :325,
  RandomHorizontalFlip :326, ``RandAugment(2, 10)`` :327 (``m`` unused, :221);
  operations and ranges :187-204; ``random.choices(k=n)`` :225 and
  ``min + float(max - min) * random.random()`` :227 (no sign flips: Rotate's is
  commented out, :128-129); Cutout fraction ``random.random() * 0.5`` :229, side
  fraction·W :183, centre ``np.random.uniform(w)`` :164-165, corners :167-170, fill
  (125, 123, 114) :173, ``ImageDraw.rectangle`` :175. The operations' code is
  MLKD's line for line (only comments differ).

  Differences from :data:`FIXMATCH`:

  1. Posterize's range is [0, 1] (``train.py:195``; MLKD ``cifar100.py:280`` has
     [4, 8]). ``Posterize`` does ``max(1, int(v))`` (``train.py:121-124``, its
     ``# [4, 8]`` comment is stale), so with v in [0, 1) it always keeps 1 bit
     per channel, where MLKD keeps 4 to 7 (8 never: v < 8).
  2. Not in the transform but in how it is used: the strong copy is a separate
     sample of ``ConcatDataset([weak, strong])`` (``train.py:343-351``, shuffled
     100,000 samples an epoch, :355), not paired with a weak view of the same
     image in the same batch as MLKD's ``MultipleApply`` (``cifar100.py:340``).
     That is the caller's business; this module only makes the views.

  The reference's ``requirements.txt`` (:72-73) lists both ``pillow==11.1.0`` and
  ``Pillow-SIMD==7.0.0.post3``; which one drew the published numbers is unknown.
  The tests compare with the installed Pillow.

Randomness differs from the references only in its source: they draw from
Python's ``random`` and NumPy's global generator per image in a DataLoader
worker; here one ``torch.Generator`` draws the same distributions for the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import final

import torch
import torch.nn.functional as F

__all__ = [
    "CUTOUT_FILL",
    "FIXMATCH",
    "OPS",
    "POLICIES",
    "STREAMLINED",
    "STREAMLINED_OPS",
    "PolicyDraws",
    "RandAugmentPolicy",
    "Views",
    "apply_policy",
    "apply_policy_draws",
    "apply_rand_augment_ops",
    "apply_views",
    "cutout",
    "draw_policy",
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
#: Streamlined KD's operations: :data:`OPS` with Posterize on [0, 1], i.e. always 1 bit (``train.py:187-204``).
STREAMLINED_OPS: tuple[tuple[str, float, float], ...] = tuple(
    (name, 0.0, 1.0) if name == "Posterize" else (name, low, high) for name, low, high in OPS
)
#: Cutout's fill colour in the reference (an RGB triple; its PIL luma for one-channel images).
CUTOUT_FILL = (125, 123, 114)


@final
@dataclass(frozen=True, slots=True)
class RandAugmentPolicy:
    """A RandAugment + Cutout policy: which operations, their magnitude ranges, how many, and the Cutout."""

    name: str
    """What the policy is called (for records and messages)."""
    ops: tuple[tuple[str, float, float], ...]
    """(operation, low, high): the operations drawn from, each a name of :data:`OPS` with its magnitude range."""
    num_ops: int = 2
    """Operations applied per image, drawn uniformly with replacement."""
    cutout_max: float = 0.5
    """The Cutout square's side is U[0, ``cutout_max``)·W (clipped to the image); 0 turns Cutout off."""
    cutout_fill: tuple[int, int, int] = CUTOUT_FILL
    """The square's RGB colour (its PIL luma on one-channel images)."""

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError(f"RandAugment policy {self.name!r}: ops must name at least one operation")
        for op in self.ops:
            if len(op) != 3 or op[0] not in _INDEX or not op[1] <= op[2]:
                known = ", ".join(_INDEX)
                raise ValueError(
                    f"RandAugment policy {self.name!r}: {op!r} is not (name, low, high) with low <= high "
                    f"and a name among {known}"
                )
        if self.num_ops < 0:
            raise ValueError(f"RandAugment policy {self.name!r}: num_ops must be >= 0, got {self.num_ops}")
        if not self.cutout_max >= 0.0:
            raise ValueError(f"RandAugment policy {self.name!r}: cutout_max must be >= 0, got {self.cutout_max}")
        if len(self.cutout_fill) != 3 or not all(0 <= v <= 255 for v in self.cutout_fill):
            raise ValueError(
                f"RandAugment policy {self.name!r}: cutout_fill must be an RGB triple in 0..255, "
                f"got {self.cutout_fill!r}"
            )


#: MLKD's strong view: FixMatch's ``RandAugment(2, 10)`` + Cutout U[0, ½)·W (``mdistiller/dataset/cifar100.py``).
FIXMATCH = RandAugmentPolicy("fixmatch", OPS, num_ops=2, cutout_max=0.5)
#: Streamlined KD's strong copy: as :data:`FIXMATCH` but Posterize on [0, 1] (``CIFAR-100/Utils/train.py``).
STREAMLINED = RandAugmentPolicy("streamlined", STREAMLINED_OPS, num_ops=2, cutout_max=0.5)
#: The policies by name: what a recipe's ``strong_copy`` may name.
POLICIES: dict[str, RandAugmentPolicy] = {policy.name: policy for policy in (FIXMATCH, STREAMLINED)}


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


def _apply_ops(
    images: torch.Tensor, ops: torch.Tensor, values: torch.Tensor, geometric: bool, pixel: tuple[str, ...]
) -> torch.Tensor:
    """Return ``images`` with ``OPS[ops[i]]`` of magnitude ``values[i]`` applied, computing only the kinds named."""
    out = _geometric(images, ops, values) if geometric else images
    for name in pixel:
        out = torch.where((ops == _INDEX[name]).view(-1, 1, 1, 1), _pixel_op(name, out, values), out)
    return out


def apply_rand_augment_ops(images: torch.Tensor, ops: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return uint8 N×C×H×W ``images`` with operation ``OPS[ops[i]]`` of magnitude ``values[i]`` applied to image i.

    Vectorised: the affine operations are one gather; each other operation is
    computed for the batch and kept where drawn. No host synchronisation.
    """
    return _apply_ops(images, ops, values, True, _PIXEL)


def cutout(
    images: torch.Tensor,
    fractions: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    fill: tuple[int, int, int] = CUTOUT_FILL,
) -> torch.Tensor:
    """Return the reference's ``Cutout(img, fraction)`` with the square's raw centre (x, y) given per image.

    As ``CutoutAbs``: side v = fraction·W, x0 = int(max(0, x − v/2)),
    x1 = min(W, x0 + v) (likewise y), PIL's ``rectangle`` filling columns x0 …
    int(x1) and rows y0 … int(y1) inclusive with ``fill``; nothing for fraction ≤ 0.
    One-channel images get the fill's PIL luma (the references' code fails on
    them: PIL takes no RGB ink for mode "L").
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
    colour = _fill_column(tuple(fill), c == 1, images.device)
    return torch.where(square.unsqueeze(1), colour.expand(n, c, h, w), images)


@lru_cache(maxsize=32)
def _fill_column(fill: tuple[int, ...], grey: bool, device: torch.device) -> torch.Tensor:
    """Return ``fill`` as uint8 1×3×1×1 on ``device``, or its PIL luma as 1×1×1×1 (cached; never modify it)."""
    colour = torch.tensor(fill, dtype=torch.uint8, device=device).view(1, 3, 1, 1)
    return _luma(colour).to(torch.uint8) if grey else colour


@final
@dataclass(frozen=True, slots=True)
class PolicyDraws:
    """The random numbers of one :class:`RandAugmentPolicy` application, raw; the policy maps them to magnitudes."""

    ops: torch.Tensor
    """int64 (N, num_ops): each image's operations, indices into ``policy.ops``, applied left to right."""
    units: torch.Tensor
    """float64 (N, num_ops) in [0, 1): magnitude = low + (high − low)·unit, as ``min + float(max − min)·random()``."""
    side: torch.Tensor
    """float64 (N,) in [0, 1): Cutout's side fraction = unit·``cutout_max``."""
    centre: torch.Tensor
    """float64 (N, 2) in [0, 1): the square's raw centre x = W + (1 − W)·u, y likewise: ``np.random.uniform(W)``."""


def draw_policy(
    policy: RandAugmentPolicy, n: int, generator: torch.Generator, device: torch.device | str | None = None
) -> PolicyDraws:
    """Return the draws of ``policy`` for ``n`` images: operations uniform with replacement, units uniform on [0, 1).

    Drawn on ``generator``'s device, then moved to ``device`` (default: the
    generator's), in the order operations, magnitudes, Cutout sides, centres.
    """
    source = generator.device
    ops = torch.randint(0, len(policy.ops), (n, policy.num_ops), generator=generator, device=source)
    units = torch.rand((n, policy.num_ops), generator=generator, device=source, dtype=torch.float64)
    side = torch.rand(n, generator=generator, device=source, dtype=torch.float64)
    centre = torch.rand((n, 2), generator=generator, device=source, dtype=torch.float64)
    target = source if device is None else torch.device(device)
    return PolicyDraws(ops=ops.to(target), units=units.to(target), side=side.to(target), centre=centre.to(target))


@lru_cache(maxsize=32)
def _policy_tables(policy: RandAugmentPolicy, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the policy's operations as int64 indices into :data:`OPS` and float64 lows and highs (cached)."""
    index = torch.tensor([_INDEX[name] for name, _, _ in policy.ops], dtype=torch.int64, device=device)
    low = torch.tensor([float(lo) for _, lo, _ in policy.ops], dtype=torch.float64, device=device)
    high = torch.tensor([float(hi) for _, _, hi in policy.ops], dtype=torch.float64, device=device)
    return index, low, high


def apply_policy_draws(images: torch.Tensor, policy: RandAugmentPolicy, draws: PolicyDraws) -> torch.Tensor:
    """Return uint8 N×C×H×W ``images`` with ``policy`` applied as ``draws`` say: the operations in turn, then Cutout."""
    _, _, h, w = images.shape
    device = images.device
    index, low, high = _policy_tables(policy, device)
    ops = draws.ops.to(device)
    values = low[ops] + (high[ops] - low[ops]) * draws.units.to(device)
    names = {name for name, _, _ in policy.ops}
    geometric = any(name in names for name in _GEOMETRIC)
    pixel = tuple(name for name in _PIXEL if name in names)
    out = images
    for k in range(ops.shape[1]):
        out = _apply_ops(out, index[ops[:, k]], values[:, k], geometric, pixel)
    fractions = draws.side.to(device) * policy.cutout_max
    centre = draws.centre.to(device)
    x, y = w + (1 - w) * centre[:, 0], h + (1 - h) * centre[:, 1]
    return cutout(out, fractions, x, y, policy.cutout_fill)


def apply_policy(images: torch.Tensor, policy: RandAugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """Return ``policy`` (RandAugment + Cutout) applied to uint8 N×C×H×W ``images``, all randomness from ``generator``.

    Give a generator on ``images``' device to stay free of host-device copies.
    """
    return apply_policy_draws(images, policy, draw_policy(policy, images.shape[0], generator, images.device))


def rand_augment(
    images: torch.Tensor, generator: torch.Generator, num_ops: int = 2, cutout_max: float = 0.5
) -> torch.Tensor:
    """Return FixMatch-style ``RandAugment(num_ops)`` + Cutout of uint8 images, all randomness from ``generator``.

    :data:`FIXMATCH` with ``num_ops`` and ``cutout_max`` replaced: per image,
    ``num_ops`` operations drawn uniformly with replacement, each magnitude
    uniform on its range, then a Cutout of side fraction U[0, ``cutout_max``)
    whose raw centre is ``np.random.uniform(W)`` (uniform on (1, W]).
    """
    policy = FIXMATCH
    if (num_ops, cutout_max) != (policy.num_ops, policy.cutout_max):
        policy = replace(policy, num_ops=num_ops, cutout_max=cutout_max)
    return apply_policy(images, policy, generator)
