"""Device-side crop+flip (reachability, zero padding, equality with torchvision, uniformity, normalisation),
RandAugment and Cutout (equality with PIL)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms
from torchvision.transforms.v2 import functional as TF

from kdbench.augment import (
    OPS,
    Views,
    apply_rand_augment_ops,
    apply_views,
    cutout,
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
