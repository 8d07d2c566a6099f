"""MLKD: Jin, Wang & Lin, "Multi-level Logit Distillation", CVPR 2023.

The student matches the teacher's predictions at three levels, each over the
temperatures 2…6: per instance (KD), per batch (the B×B Gram matrix of the
softened predictions) and per class (the C×C Gram matrix), on a weakly (crop +
flip) and a strongly augmented view of every image, with the weak-view terms
scaled by confidence masks built from the teacher's weak-view predictions (the
samples, resp. classes, whose teacher confidence is at most its median).

The loss follows the authors' released code (``Jin-Ying/Multi-Level-Logit-Distillation``,
``mdistiller/distillers/KD_ours.py``) term for term, including three details in
which it differs from the paper's description; they produced the published
numbers, so we keep them and name them:

- the KD and Gram losses are batch means *before* the masks are applied
  (``reduce=False`` is commented out), so each mask enters as its mean — the
  weak-view terms are scaled by the fraction of samples (classes) at or below
  the median confidence (≈ ½) rather than restricted to them;
- the "strong-view" KD terms at T = 2 and T = 6 read the *weak* view's logits
  (``strong_kd_reads_weak_at``; set it to ``[]`` for the paper's formula);
- the batch- and class-level terms are computed on the weak view only (the
  strong-view ones are computed there but left out of the loss).

Defaults are the repository's: ``CFG.KD`` (CE 0.1, each distillation term
weighted 0.9, base temperature 4 among [2, 3, 4, 5, 6]); CE is applied to both
views. The strong view is FixMatch-style ``RandAugment(2, 10)`` after the usual
zero-padded crop and flip (``get_cifar100_train_transform_strong``, in the
dataset code of that code base; MLKD's own copy is not in our search index, we
read it in ``sunshangquan/logit-standardization-KD``, which is built on it):
two operations drawn uniformly with replacement from 14, each magnitude uniform
on its range, then a Cutout of side U[0, ½)·W filled with (125, 123, 114).
Here it is made on the device from ``batch.raw`` (uint8), vectorised over the
batch, with PIL's exact integer arithmetic (see ``tests/test_methods_logit.py``).

As in the reference, each model runs once per view (``Batch.chunks``), so each
view's BatchNorm batch statistics are its own and the student's running
statistics are updated twice per step. The authors' CIFAR configs also change
the recipe per pair (LR 0.025 for most pairs; 480 epochs for the ShuffleNet and
MobileNetV2 students, LR 0.01 resp. 0.0025): the CIFAR suites set them as the
method's own recipes (``method_recipes`` / ``pairs.recipes``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kdbench_plugins.distillers.kd import kd_loss

from kdbench import (
    AugmentSpec,
    Batch,
    DistillContext,
    Distiller,
    DistillerSpec,
    KdbenchError,
    Progress,
    Signals,
    hookimpl,
)
from kdbench.augment import apply_views, draw_views, normalize

__all__ = [
    "MLKD",
    "OPS",
    "apply_rand_augment_ops",
    "batch_consistency_loss",
    "class_consistency_loss",
    "confidence_masks",
    "cutout",
    "mlkd_loss",
    "rand_augment",
]

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


# ---------------------------------------------------------------- losses


def _softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.softmax(logits / temperature, dim=1)


def class_consistency_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return ‖PₜᵀPₜ − PₛᵀPₛ‖²_F / C for the B×C softened predictions P (the class-level alignment)."""
    p_s, p_t = _softmax(student, temperature), _softmax(teacher, temperature)
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


def batch_consistency_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return ‖PₜPₜᵀ − PₛPₛᵀ‖²_F / B for the B×C softened predictions P (the batch-level alignment)."""
    p_s, p_t = _softmax(student, temperature), _softmax(teacher, temperature)
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def confidence_masks(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (sample mask, class mask): teacher confidence at most its median (``np.percentile(·, 50)``).

    A sample's confidence is its top softmax probability (T = 1); a class's is
    the sum of its probabilities over the batch.
    """
    probs = _softmax(teacher_logits.detach(), 1.0)
    confidence = probs.max(dim=1).values
    class_confidence = probs.sum(dim=0)
    samples = confidence <= torch.quantile(confidence, 0.5)
    classes = class_confidence <= torch.quantile(class_confidence, 0.5)
    return samples, classes


def mlkd_loss(
    student_weak: torch.Tensor,
    teacher_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_strong: torch.Tensor,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    strong_kd_reads_weak_at: Sequence[float] = (2.0, 6.0),
) -> dict[str, torch.Tensor]:
    """Return MLKD's unweighted instance (``kd``), class (``cc``) and batch (``bc``) losses, summed over temperatures.

    kd = Σ_T m̄·KD_T(weak) + Σ_T KD_T(strong) (the weak view at the temperatures
    in ``strong_kd_reads_weak_at``), cc = c̄·Σ_T CC_T(weak), bc = m̄·Σ_T BC_T(weak),
    with m̄, c̄ the means of the sample and class confidence masks.
    """
    samples, classes = confidence_masks(teacher_weak)
    sample_share, class_share = samples.float().mean(), classes.float().mean()
    weak_kd = sum(kd_loss(student_weak, teacher_weak, t) for t in temperatures)
    strong_pairs = [
        (student_weak, teacher_weak, t) if t in strong_kd_reads_weak_at else (student_strong, teacher_strong, t)
        for t in temperatures
    ]
    strong_kd = sum(kd_loss(*pair) for pair in strong_pairs)
    cc = sum(class_consistency_loss(student_weak, teacher_weak, t) for t in temperatures)
    bc = sum(batch_consistency_loss(student_weak, teacher_weak, t) for t in temperatures)
    return {"kd": sample_share * weak_kd + strong_kd, "cc": class_share * cc, "bc": sample_share * bc}


# ---------------------------------------------------------------- the distiller


class MLKD(Distiller):
    """Multi-level (instance, batch, class) logit alignment on a weak and a device-made strong view."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext | None,
        temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
        strong_kd_reads_weak_at: Sequence[float] = (2.0, 6.0),
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        augment_ops: int = 2,
        cutout_max: float = 0.5,
    ):
        super().__init__()
        if context is None or not context.mean or not context.std:
            raise KdbenchError("MLKD makes its strong view itself: it needs the dataset's mean and std")
        if context.input_size[0] not in (1, 3):
            raise KdbenchError(f"MLKD's RandAugment is defined for RGB or grey images, not {context.input_size}")
        self.temperatures = [float(t) for t in temperatures]
        self.strong_kd_reads_weak_at = [float(t) for t in strong_kd_reads_weak_at]
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.augment_ops = augment_ops
        self.cutout_max = cutout_max
        self.mean, self.std = tuple(context.mean), tuple(context.std)
        self.augment = context.augment or AugmentSpec()

    def strong_view(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return the normalised strong view of uint8 ``raw``: crop + flip, RandAugment, Cutout."""
        views = draw_views(raw.shape[0], self.augment.pad, self.augment.flip, generator, raw.device)
        images = apply_views(raw, views, self.augment.pad)
        images = rand_augment(images, generator, self.augment_ops, self.cutout_max)
        return normalize(images, self.mean, self.std)

    def prepare_batch(self, batch: Batch) -> Batch:
        """Return the batch with images ``cat(weak, strong)``; the strong view is made from ``batch.raw``."""
        if batch.raw is None or batch.generator is None:
            raise KdbenchError("MLKD needs batch.raw and batch.generator to make its strong view")
        strong = self.strong_view(batch.raw, batch.generator).to(batch.images.dtype)
        images = torch.cat([batch.images, strong])
        if batch.images.dim() == 4 and batch.images.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        # The reference runs each model once per view: so does the engine, via chunks (BatchNorm per view).
        extras = {**(batch.extras or {}), "weak_size": len(strong)}
        return dataclasses.replace(batch, images=images, extras=extras, chunks=(len(strong), len(strong)))

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE (both views) and instance / class / batch alignment terms."""
        assert teacher is not None
        size = (batch.extras or {}).get("weak_size")
        if size is None:
            raise KdbenchError("MLKD's loss needs the two views made by its prepare_batch")
        s_weak, s_strong = student.logits[:size], student.logits[size:]
        t_weak, t_strong = teacher.logits[:size], teacher.logits[size:]
        ce = F.cross_entropy(s_weak, batch.targets) + F.cross_entropy(s_strong, batch.targets)
        levels = mlkd_loss(s_weak, t_weak, s_strong, t_strong, self.temperatures, self.strong_kd_reads_weak_at)
        return {"ce": self.ce_weight * ce, **{name: self.kd_weight * value for name, value in levels.items()}}


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="mlkd",
            builder=MLKD,
            description="Multi-level logit KD: instance, batch and class alignment at T=2…6 on weak and strong views",
            citation="Jin, Wang & Lin, CVPR 2023 (Multi-level Logit Distillation)",
            defaults={
                "temperatures": [2.0, 3.0, 4.0, 5.0, 6.0],
                "strong_kd_reads_weak_at": [2.0, 6.0],
                "ce_weight": 0.1,
                "kd_weight": 0.9,
                "augment_ops": 2,
                "cutout_max": 0.5,
            },
            family="logit",
        )
    ]
