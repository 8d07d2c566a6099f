"""Device-side crop+flip (reachability, zero padding, equality with torchvision, uniformity, normalisation),
RandAugment and Cutout (equality with PIL), policies: MLKD's pinned bit for bit, Streamlined KD's against a PIL
re-implementation of its code."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms
from torchvision.transforms import functional as TF1
from torchvision.transforms.v2 import functional as TF

from kdbench.augment import (
    CUTOUT_FILL,
    FIXMATCH,
    OPS,
    STREAMLINED,
    STREAMLINED_OPS,
    PolicyDraws,
    RandAugmentPolicy,
    Views,
    apply_policy,
    apply_policy_draws,
    apply_rand_augment_ops,
    apply_views,
    cutout,
    draw_policy,
    draw_views,
    normalize,
    num_views,
    rand_augment,
    random_crop_flip,
    view_index,
)

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _all_views(pad: int, flip: bool) -> Views:
    """Return every (dy, dx, flip) combination once."""
    side = torch.arange(2 * pad + 1)
    flips = torch.arange(2 if flip else 1)
    dy, dx, fl = torch.meshgrid(side, side, flips, indexing="ij")
    return Views(dy=dy.flatten(), dx=dx.flatten(), flip=fl.flatten().bool())


def _reference(images: torch.Tensor, views: Views, pad: int) -> torch.Tensor:
    """Return the views computed one sample at a time with torchvision's own pad / crop / flip."""
    height, width = images.shape[-2:]
    out = []
    for image, dy, dx, flip in zip(images, views.dy.tolist(), views.dx.tolist(), views.flip.tolist()):
        padded = TF.pad(image, [pad], fill=0)
        crop = TF.crop(padded, top=dy, left=dx, height=height, width=width)
        out.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(out)


def _chi_square(indices: torch.Tensor, cells: int) -> float:
    counts = np.bincount(indices.numpy(), minlength=cells).astype(np.float64)
    expected = counts.sum() / cells
    return float(((counts - expected) ** 2 / expected).sum())


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """Return the chi-square quantile for upper-tail normal quantile ``z`` (Wilson–Hilferty; z=3.09 is p=0.001)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize(("pad", "flip", "expected"), [(4, True, 162), (4, False, 81), (1, False, 9), (0, True, 2)])
def test_view_index_is_a_bijection(pad: int, flip: bool, expected: int) -> None:
    assert num_views(pad, flip) == expected
    index = view_index(_all_views(pad, flip), pad, flip)
    assert index.dtype == torch.int64
    assert torch.equal(index.sort().values, torch.arange(expected))


def test_every_view_is_drawn() -> None:
    views = draw_views(20_000, 4, True, _generator(0), "cpu")
    assert views.dy.dtype == views.dx.dtype == torch.int64 and views.flip.dtype == torch.bool
    assert int(views.dy.min()) == int(views.dx.min()) == 0 and int(views.dy.max()) == int(views.dx.max()) == 8
    assert set(view_index(views, 4, True).tolist()) == set(range(162))


def test_no_flip_draws_no_flip() -> None:
    views = draw_views(1000, 1, False, _generator(0), "cpu")
    assert not bool(views.flip.any())
    assert set(view_index(views, 1, False).tolist()) == set(range(9))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (5, 7)])
def test_padding_is_zero_where_the_offset_says(height: int, width: int) -> None:
    pad = 4
    views = _all_views(pad, True)
    images = torch.full((len(views.dy), 3, height, width), 255, dtype=torch.uint8)
    out = apply_views(images, views, pad)
    y = torch.arange(height).view(1, height, 1)
    x = torch.arange(width).view(1, 1, width)
    # The output column x shows column W-1-x of the unflipped crop.
    unflipped_x = torch.where(views.flip.view(-1, 1, 1), width - 1 - x, x)
    source_y = y + views.dy.view(-1, 1, 1) - pad
    source_x = unflipped_x + views.dx.view(-1, 1, 1) - pad
    inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
    expected = (inside.to(torch.uint8) * 255).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(("shape", "pad"), [((3, 32, 32), 4), ((1, 8, 8), 1), ((2, 6, 9), 3), ((3, 10, 10), 0)])
def test_apply_views_matches_torchvision_per_sample(shape: tuple[int, int, int], pad: int) -> None:
    generator = _generator(1)
    images = torch.randint(0, 256, (300, *shape), dtype=torch.uint8, generator=generator)
    views = draw_views(300, pad, True, generator, "cpu")
    out = apply_views(images, views, pad)
    assert out.is_contiguous() and out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, _reference(images, views, pad))


def test_random_crop_flip_composes_draw_and_apply() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=_generator(2))
    views = draw_views(64, 4, True, _generator(3), "cpu")
    assert torch.equal(random_crop_flip(images, 4, True, _generator(3)), apply_views(images, views, 4))


def test_torchvision_random_crop_draws_offsets_from_zero_to_two_pad() -> None:
    padded = torch.zeros(3, 40, 40)
    offsets = {transforms.RandomCrop.get_params(padded, (32, 32))[:2] for _ in range(3000)}
    assert {i for i, _ in offsets} == {j for _, j in offsets} == set(range(9))


def test_views_are_uniform_over_162_cells() -> None:
    draws = 100_000
    critical = _chi_square_critical(161)
    views = draw_views(draws, 4, True, _generator(12345), "cpu")
    assert _chi_square(view_index(views, 4, True), 162) < critical

    # The same test rejects samplers that are only slightly off.
    generator = _generator(12345)
    short_dy = Views(
        dy=torch.randint(0, 8, (draws,), generator=generator),
        dx=torch.randint(0, 9, (draws,), generator=generator),
        flip=torch.rand(draws, generator=generator) < 0.5,
    )
    assert _chi_square(view_index(short_dy, 4, True), 162) > critical
    biased_flip = Views(
        dy=torch.randint(0, 9, (draws,), generator=generator),
        dx=torch.randint(0, 9, (draws,), generator=generator),
        flip=torch.rand(draws, generator=generator) < 0.47,
    )
    assert _chi_square(view_index(biased_flip, 4, True), 162) > critical


def test_draws_are_reproducible_given_the_seed() -> None:
    first, second = draw_views(500, 4, True, _generator(7), "cpu"), draw_views(500, 4, True, _generator(7), "cpu")
    assert torch.equal(first.dy, second.dy) and torch.equal(first.dx, second.dx)
    assert torch.equal(first.flip, second.flip)
    other = draw_views(500, 4, True, _generator(8), "cpu")
    assert not torch.equal(view_index(first, 4, True), view_index(other, 4, True))
    images = torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8, generator=_generator(0))
    assert torch.equal(
        random_crop_flip(images, 4, True, _generator(7)), random_crop_flip(images, 4, True, _generator(7))
    )


def test_normalize_matches_to_tensor_and_normalize() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    expected = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)(transforms.ToTensor()(Image.fromarray(pixels)))
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    got = normalize(chw.unsqueeze(0), CIFAR100_MEAN, CIFAR100_STD)
    assert got.dtype == torch.float32 and got.shape == (1, 3, 32, 32)
    # Same float32 operations in the same order: the numbers are identical, not just close.
    assert torch.equal(got[0], expected)
    assert torch.equal(normalize(chw, CIFAR100_MEAN, CIFAR100_STD), expected)


# ------------------------------------------------------------------------------------------------ RandAugment, Cutout


def _pil_op(name: str, image: Image.Image, v: float) -> Image.Image:
    """The reference's RandAugment operations, called on PIL (``mdistiller/dataset/cifar100.py``)."""
    size = image.size
    return {
        "AutoContrast": lambda: ImageOps.autocontrast(image),
        "Brightness": lambda: ImageEnhance.Brightness(image).enhance(v),
        "Color": lambda: ImageEnhance.Color(image).enhance(v),
        "Contrast": lambda: ImageEnhance.Contrast(image).enhance(v),
        "Equalize": lambda: ImageOps.equalize(image),
        "Identity": lambda: image,
        "Posterize": lambda: ImageOps.posterize(image, max(1, int(v))),
        "Rotate": lambda: image.rotate(v),
        "Sharpness": lambda: ImageEnhance.Sharpness(image).enhance(v),
        "ShearX": lambda: image.transform(size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "ShearY": lambda: image.transform(size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "Solarize": lambda: ImageOps.solarize(image, v),
        "TranslateX": lambda: image.transform(size, Image.AFFINE, (1, 0, v * size[0], 0, 1, 0)),
        "TranslateY": lambda: image.transform(size, Image.AFFINE, (1, 0, 0, 0, 1, v * size[1])),
    }[name]()


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _from_pil(image: Image.Image) -> torch.Tensor:
    array = np.array(image)
    return torch.from_numpy(array[:, :, None] if array.ndim == 2 else array).permute(2, 0, 1)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
@pytest.mark.parametrize("op", range(len(OPS)))
def test_rand_augment_ops_equal_pil(op: int, shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(100 + op)
    images = torch.randint(0, 256, (8, *shape), generator=generator, dtype=torch.uint8)
    images[:3] = images[:3] // 4 + 60  # low-contrast images: autocontrast and equalize have work to do
    name, low, high = OPS[op]
    values = low + (high - low) * torch.rand(8, generator=generator, dtype=torch.float64)
    got = apply_rand_augment_ops(images, torch.full((8,), op), values)
    for i in range(8):
        expected = _from_pil(_pil_op(name, _to_pil(images[i]), float(values[i])))
        assert torch.equal(got[i], expected), (name, i, float(values[i]))


def test_cutout_equals_pil_rectangle() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=generator, dtype=torch.uint8)
    fractions = torch.rand(40, generator=generator, dtype=torch.float64) * 0.5
    fractions[:3] = 0.0
    x, y = (32 - 31 * torch.rand(40, generator=generator, dtype=torch.float64) for _ in range(2))
    got = cutout(images, fractions, x, y)
    for i in range(40):
        image, side = _to_pil(images[i]).copy(), float(fractions[i]) * 32
        if side > 0:
            x0, y0 = int(max(0, float(x[i]) - side / 2)), int(max(0, float(y[i]) - side / 2))
            ImageDraw.Draw(image).rectangle((x0, y0, min(32, x0 + side), min(32, y0 + side)), (125, 123, 114))
        assert torch.equal(got[i], _from_pil(image)), i


def test_rand_augment_is_reproducible_and_the_identity_without_operations() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=_generator(0))
    first = rand_augment(images, _generator(5))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, rand_augment(images, _generator(5)))
    assert not torch.equal(first, rand_augment(images, _generator(6)))
    assert torch.equal(rand_augment(images, _generator(5), num_ops=0, cutout_max=0.0), images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=_generator(0))
    views = draw_views(256, 4, True, generator, device)
    assert views.dy.device.type == "cuda"
    out = apply_views(images.to(device), views, 4)
    cpu_views = Views(dy=views.dy.cpu(), dx=views.dx.cpu(), flip=views.flip.cpu())
    assert out.is_contiguous() and torch.equal(out.cpu(), apply_views(images, cpu_views, 4))
    normalized = normalize(out, CIFAR100_MEAN, CIFAR100_STD)
    torch.testing.assert_close(normalized.cpu(), normalize(out.cpu(), CIFAR100_MEAN, CIFAR100_STD), rtol=0, atol=1e-6)


def test_cutout_on_grey_images_fills_the_colours_pil_luma() -> None:
    # The references' Cutout fails on one-channel images (PIL takes no RGB ink for mode "L"); kdbench fills the
    # colour's luma, as PIL's convert("L") computes it.
    with pytest.raises(TypeError):
        ImageDraw.Draw(Image.new("L", (4, 4))).rectangle((0, 0, 2, 2), CUTOUT_FILL)
    luma = Image.new("RGB", (1, 1), CUTOUT_FILL).convert("L").getpixel((0, 0))
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (20, 1, 16, 16), generator=generator, dtype=torch.uint8)
    fractions = 0.1 + 0.4 * torch.rand(20, generator=generator, dtype=torch.float64)
    x, y = (16 - 15 * torch.rand(20, generator=generator, dtype=torch.float64) for _ in range(2))
    got = cutout(images, fractions, x, y)
    for i in range(20):
        image, side = _to_pil(images[i]).copy(), float(fractions[i]) * 16
        x0, y0 = int(max(0, float(x[i]) - side / 2)), int(max(0, float(y[i]) - side / 2))
        ImageDraw.Draw(image).rectangle((x0, y0, min(16, x0 + side), min(16, y0 + side)), luma)
        assert torch.equal(got[i], _from_pil(image)), i


# ------------------------------------------------------------------------------------------------ policies

#: sha256 of ``rand_augment``'s output (CPU) for the inputs of :func:`_pinned_outputs`, recorded before
#: RandAugment became a policy: MLKD's strong view must not change by one bit. The PIL tests above are the
#: portable check; this one pins the draws and their order as well.
_RAND_AUGMENT_DIGESTS = (
    "82f28d8eeb7fa45a1b9cbcc71feb68e58c96b2c78d218c98438a791dd607d325",
    "d53e4453c08de41673aec52c11c996bc3a368b2732807b5ee86d07080536e4b1",
)


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def _pinned_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=_generator(0))
    images[:64] = images[:64] // 4 + 60
    rgb = rand_augment(images, _generator(2024))
    grey = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=_generator(1))
    return rgb, rand_augment(grey, _generator(7), num_ops=3, cutout_max=0.4)


def test_rand_augment_is_unchanged_bit_for_bit() -> None:
    assert tuple(_digest(out) for out in _pinned_outputs()) == _RAND_AUGMENT_DIGESTS


def test_rand_augment_is_the_fixmatch_policy() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=_generator(3))
    assert torch.equal(rand_augment(images, _generator(4)), apply_policy(images, FIXMATCH, _generator(4)))
    three = replace(FIXMATCH, num_ops=3, cutout_max=0.25)
    assert torch.equal(rand_augment(images, _generator(4), 3, 0.25), apply_policy(images, three, _generator(4)))
    assert FIXMATCH.ops is OPS and (FIXMATCH.num_ops, FIXMATCH.cutout_max, FIXMATCH.cutout_fill) == (
        2,
        0.5,
        CUTOUT_FILL,
    )


def test_apply_policy_composes_draw_and_apply() -> None:
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=_generator(5))
    draws = draw_policy(STREAMLINED, 32, _generator(6), "cpu")
    assert (
        draws.ops.shape == draws.units.shape == (32, 2) and draws.side.shape == (32,) and draws.centre.shape == (32, 2)
    )
    assert draws.ops.dtype == torch.int64 and draws.units.dtype == draws.side.dtype == torch.float64
    assert torch.equal(apply_policy(images, STREAMLINED, _generator(6)), apply_policy_draws(images, STREAMLINED, draws))
    out = apply_policy(images, STREAMLINED, _generator(6))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(out, apply_policy(images, STREAMLINED, _generator(7)))
    # Same draws, different policies: the images differ only where a Posterize was drawn.
    fixmatch = apply_policy_draws(images, FIXMATCH, draws)
    posterized = (draws.ops == 6).any(1)
    assert torch.equal(fixmatch[~posterized], out[~posterized]) and not torch.equal(fixmatch, out)


def test_policy_draws_cover_every_operation_and_the_unit_interval() -> None:
    draws = draw_policy(STREAMLINED, 5000, _generator(8))
    assert set(draws.ops.flatten().tolist()) == set(range(14))
    for units in (draws.units, draws.side, draws.centre):
        assert float(units.min()) >= 0.0 and float(units.max()) < 1.0 and float(units.max()) > 0.99
    counts = torch.bincount(draws.ops.flatten(), minlength=14)
    assert _chi_square(draws.ops.flatten(), 14) < _chi_square_critical(13), counts


@pytest.mark.parametrize(
    ("changes", "culprit"),
    [
        ({"ops": ()}, "at least one operation"),
        ({"ops": (("Invert", 0.0, 1.0),)}, "'Invert'"),
        ({"ops": (("Rotate", 30.0, -30.0),)}, "low <= high"),
        ({"num_ops": -1}, "num_ops"),
        ({"cutout_max": -0.1}, "cutout_max"),
        ({"cutout_max": float("nan")}, "cutout_max"),
        ({"cutout_fill": (0, 0)}, "cutout_fill"),
        ({"cutout_fill": (0, 0, 256)}, "cutout_fill"),
    ],
)
def test_policies_are_checked(changes: dict[str, object], culprit: str) -> None:
    with pytest.raises(ValueError, match="'streamlined'") as error:
        replace(STREAMLINED, **changes)
    assert culprit in str(error.value)


def test_policies_are_frozen_values() -> None:
    assert replace(STREAMLINED) == STREAMLINED and hash(replace(STREAMLINED)) == hash(STREAMLINED)
    with pytest.raises(AttributeError):
        STREAMLINED.num_ops = 3  # type: ignore[misc]
    assert isinstance(STREAMLINED, RandAugmentPolicy) and STREAMLINED.name == "streamlined"


# -------------------------------------------------------- Streamlined KD's strong transform, re-implemented on PIL
# From HyunJunSik/StreamLined @ 4681da2 (the same blob since e4ab795), CIFAR-100/Utils/train.py:97-231 and the
# strong transform of load_dataset, :323-331. ``random`` and ``np.random`` are replaced by ``_Replay``, which
# hands the reference kdbench's draws for one image, so both sides see the same random numbers.


class _Replay:
    """Stands in for ``random`` and ``np.random`` in the reference code: one image's draws, in the order it asks."""

    def __init__(self, draws: PolicyDraws, i: int) -> None:
        self._ops = draws.ops[i].tolist()
        self._random: Iterator[float] = iter([*draws.units[i].tolist(), float(draws.side[i])])
        self._uniform: Iterator[float] = iter(draws.centre[i].tolist())

    def choices(self, population: list, k: int) -> list:
        assert k == len(self._ops)
        return [population[i] for i in self._ops]

    def random(self) -> float:
        return next(self._random)

    def uniform(self, low: float, high: float = 1.0) -> float:
        # NumPy's legacy uniform is low + (high - low) · random_sample() (checked below).
        return low + (high - low) * next(self._uniform)

    def used_up(self) -> bool:
        return next(self._random, None) is None and next(self._uniform, None) is None


def _skd_autocontrast(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def _skd_brightness(img: Image.Image, v: float) -> Image.Image:
    assert v >= 0.0
    return ImageEnhance.Brightness(img).enhance(v)


def _skd_color(img: Image.Image, v: float) -> Image.Image:
    assert v >= 0.0
    return ImageEnhance.Color(img).enhance(v)


def _skd_contrast(img: Image.Image, v: float) -> Image.Image:
    assert v >= 0.0
    return ImageEnhance.Contrast(img).enhance(v)


def _skd_equalize(img: Image.Image, _: float) -> Image.Image:
    return ImageOps.equalize(img)


def _skd_identity(img: Image.Image, v: float) -> Image.Image:
    return img


def _skd_posterize(img: Image.Image, v: float) -> Image.Image:  # train.py:121-124
    v = int(v)
    v = max(1, v)
    return ImageOps.posterize(img, v)


def _skd_rotate(img: Image.Image, v: float) -> Image.Image:  # the sign flip is commented out (train.py:128-129)
    return img.rotate(v)


def _skd_sharpness(img: Image.Image, v: float) -> Image.Image:
    assert v >= 0.0
    return ImageEnhance.Sharpness(img).enhance(v)


def _skd_shear_x(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))


def _skd_shear_y(img: Image.Image, v: float) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))


def _skd_translate_x(img: Image.Image, v: float) -> Image.Image:
    v = v * img.size[0]
    return img.transform(img.size, Image.AFFINE, (1, 0, v, 0, 1, 0))


def _skd_translate_y(img: Image.Image, v: float) -> Image.Image:
    v = v * img.size[1]
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v))


def _skd_solarize(img: Image.Image, v: float) -> Image.Image:
    assert 0 <= v <= 256
    return ImageOps.solarize(img, v)


def _skd_cutout_abs(img: Image.Image, v: float, rng: _Replay) -> Image.Image:  # train.py:160-176
    if v < 0:
        return img
    w, h = img.size
    x0 = rng.uniform(w)
    y0 = rng.uniform(h)
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    xy = (x0, y0, x1, y1)
    color = (125, 123, 114)
    img = img.copy()
    ImageDraw.Draw(img).rectangle(xy, color)
    return img


def _skd_cutout(img: Image.Image, v: float, rng: _Replay) -> Image.Image:  # train.py:178-184
    assert 0.0 <= v <= 0.5
    if v <= 0.0:
        return img
    v = v * img.size[0]
    return _skd_cutout_abs(img, v, rng)


#: train.py:187-204, with the operation's name first.
_SKD_AUGMENT_LIST = [
    ("AutoContrast", _skd_autocontrast, 0, 1),
    ("Brightness", _skd_brightness, 0.05, 0.95),
    ("Color", _skd_color, 0.05, 0.95),
    ("Contrast", _skd_contrast, 0.05, 0.95),
    ("Equalize", _skd_equalize, 0, 1),
    ("Identity", _skd_identity, 0, 1),
    ("Posterize", _skd_posterize, 0, 1),
    ("Rotate", _skd_rotate, -30, 30),
    ("Sharpness", _skd_sharpness, 0.05, 0.95),
    ("ShearX", _skd_shear_x, -0.3, 0.3),
    ("ShearY", _skd_shear_y, -0.3, 0.3),
    ("Solarize", _skd_solarize, 0, 256),
    ("TranslateX", _skd_translate_x, -0.3, 0.3),
    ("TranslateY", _skd_translate_y, -0.3, 0.3),
]


def _skd_rand_augment(img: Image.Image, n: int, rng: _Replay) -> Image.Image:  # RandAugment.__call__, train.py:224-231
    ops = rng.choices([(op, low, high) for _, op, low, high in _SKD_AUGMENT_LIST], k=n)
    for op, min_val, max_val in ops:
        val = min_val + float(max_val - min_val) * rng.random()
        img = op(img, val)
    cutout_val = rng.random() * 0.5
    img = _skd_cutout(img, cutout_val, rng)
    return img


def _skd_strong(img: Image.Image, dy: int, dx: int, flip: bool, rng: _Replay) -> Image.Image:
    """train.py:325-327: RandomCrop(32, padding=4) at (dy, dx), RandomHorizontalFlip, RandAugment(2, 10)."""
    img = TF1.crop(TF1.pad(img, 4), dy, dx, 32, 32)
    if flip:
        img = TF1.hflip(img)
    return _skd_rand_augment(img, 2, rng)


def test_replay_draws_as_numpy_and_random_do() -> None:
    for seed in range(20):
        # CutoutAbs's np.random.uniform(w): uniform(low=w, high=1.0), drawn as low + (high - low) · u.
        assert np.random.RandomState(seed).uniform(32) == 32 + (1.0 - 32) * np.random.RandomState(seed).random_sample()
        # random.choices(population, k): population[floor(random() · len)], each independently.
        r = random.Random(seed)
        picks = [math.floor(r.random() * 14) for _ in range(2)]
        assert random.Random(seed).choices(range(14), k=2) == picks


def test_streamlined_policy_is_their_augment_list() -> None:
    assert STREAMLINED.ops == STREAMLINED_OPS
    assert STREAMLINED.ops == tuple((name, float(low), float(high)) for name, _, low, high in _SKD_AUGMENT_LIST)
    assert (STREAMLINED.num_ops, STREAMLINED.cutout_max, STREAMLINED.cutout_fill) == (2, 0.5, (125, 123, 114))
    differences = [(a, b) for a, b in zip(FIXMATCH.ops, STREAMLINED.ops) if a != b]
    assert differences == [(("Posterize", 4.0, 8.0), ("Posterize", 0.0, 1.0))]


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
@pytest.mark.parametrize("op", range(len(STREAMLINED_OPS)))
def test_streamlined_ops_equal_their_pil_code(op: int, shape: tuple[int, int, int]) -> None:
    generator = _generator(200 + op)
    images = torch.randint(0, 256, (10, *shape), generator=generator, dtype=torch.uint8)
    images[:3] = images[:3] // 4 + 60
    units = torch.rand((10, 1), generator=generator, dtype=torch.float64)
    units[0], units[1] = 0.0, 1.0 - 2.0**-53  # both ends of the range
    # One operation, Cutout off (side 0): each operation on its own, through their RandAugment.__call__.
    draws = PolicyDraws(
        ops=torch.full((10, 1), op),
        units=units,
        side=torch.zeros(10, dtype=torch.float64),
        centre=torch.rand((10, 2), generator=generator, dtype=torch.float64),
    )
    got = apply_policy_draws(images, replace(STREAMLINED, num_ops=1), draws)
    for i in range(10):
        replay = _Replay(draws, i)
        expected = _from_pil(_skd_rand_augment(_to_pil(images[i]), 1, replay))
        assert torch.equal(got[i], expected), (STREAMLINED_OPS[op][0], i, float(units[i]))


def test_streamlined_posterize_keeps_one_bit() -> None:
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=_generator(9))
    posterize_only = replace(STREAMLINED, ops=(("Posterize", 0.0, 1.0),), num_ops=1, cutout_max=0.0)
    assert torch.equal(apply_policy(images, posterize_only, _generator(10)), images & 0x80)


@pytest.mark.parametrize("seed", [0, 1])
def test_streamlined_strong_view_equals_their_pil_code(seed: int) -> None:
    n = 200
    generator = _generator(300 + seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    images[: n // 4] = images[: n // 4] // 4 + 60
    views = draw_views(n, 4, True, generator, "cpu")
    draws = draw_policy(STREAMLINED, n, generator, "cpu")
    got = apply_policy_draws(apply_views(images, views, 4), STREAMLINED, draws)
    assert set(draws.ops.flatten().tolist()) == set(range(14))
    for i in range(n):
        replay = _Replay(draws, i)
        expected = _skd_strong(_to_pil(images[i]), int(views.dy[i]), int(views.dx[i]), bool(views.flip[i]), replay)
        assert replay.used_up()
        assert torch.equal(got[i], _from_pil(expected)), (i, draws.ops[i].tolist(), draws.units[i].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_policies_on_cuda_match_cpu_without_host_syncs() -> None:
    device = torch.device("cuda")
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=_generator(0))
    on_device = images.to(device)
    for policy in (FIXMATCH, STREAMLINED):
        apply_policy(on_device, policy, torch.Generator(device=device).manual_seed(0))  # fills the caches
        generator = torch.Generator(device=device).manual_seed(1)
        draws = draw_policy(policy, 512, generator)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = apply_policy_draws(on_device, policy, draws)
            again = apply_policy(on_device, policy, generator)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cpu_draws = PolicyDraws(*(t.cpu() for t in (draws.ops, draws.units, draws.side, draws.centre)))
        assert torch.equal(out.cpu(), apply_policy_draws(images, policy, cpu_draws))
        assert again.device.type == "cuda" and again.dtype == torch.uint8
