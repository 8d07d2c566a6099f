"""Reading a streamed dataset: images/s of each loader on one generated JPEG set, side by side (``make bench``).

The set: 128 JPEGs (quality 90) of ImageNet's typical size, 500×375 and 375×500 alternately, smooth
colour fields plus noise (so they compress as photographs do, ~60 KB each). One round reads all 128
through one loader as the engine asks for a train epoch — RandomResizedCrop(224) + flip, batches of
32 — and delivers uint8 N×3×224×224 batches on the device; the round ends with a host sync.

| benchmark | loader |
|---|---|
| ``pil`` (workers 0, 2) | PIL decode + crop + resize in DataLoader worker processes (the reference toolkits' way) |
| ``decode`` | ``torchvision.io.decode_jpeg`` of the batch on the device, crops and resizes there; on the CPU it decodes
  in the training process, on CUDA with nvJPEG (PR pytorch/vision#8496) |
| ``dali`` (if installed) | NVIDIA DALI: ROI decode of each crop, resize, flip (CPU operators; ``mixed`` on CUDA) |

Images/s per benchmark is in its ``extra_info`` and printed at the end. On CUDA the GPU rows join
``benchmarks/gpu_check.sh`` (section 2).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import kdbench
from kdbench import ResizedCropSpec
from kdbench.stream import StreamRequest

IMAGES, BATCH, SIZE = 128, 32, 224
GROUP = "loader-imagenet-jpeg-224"
_RATES: list[tuple[str, float]] = []


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    files = []
    for index in range(IMAGES):
        width, height = (500, 375) if index % 2 == 0 else (375, 500)
        field = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        pixels = np.clip(np.asarray(field, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255)
        path = root / f"{index:04d}.JPEG"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        files.append(str(path))
    return tuple(files)


def _request(files: tuple[str, ...], device: torch.device, workers: int, epoch: int) -> StreamRequest:
    rng = np.random.default_rng(epoch)
    order = rng.permutation(len(files))
    keys = rng.integers(0, 1 << 62, len(files), dtype=np.int64)
    sizes = (BATCH,) * (len(files) // BATCH)
    return StreamRequest(files, order, keys, sizes, SIZE, ResizedCropSpec(), device, workers)


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


WORKERS = min(8, os.cpu_count() or 1)
CASES = [("pil", "cpu", 0), ("pil", "cpu", min(2, WORKERS)), ("decode", "cpu", 0)]
CASES += [("dali", "cpu", min(2, WORKERS))] if _has_dali() else []
if torch.cuda.is_available():
    CASES += [("pil", "cuda", WORKERS), ("decode", "cuda", WORKERS)]
    CASES += [("dali", "cuda", WORKERS)] if _has_dali() else []


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize(("loader", "device", "workers"), CASES, ids=[f"{n}-{d}-w{w}" for n, d, w in CASES])
def test_loader_images_per_second(
    benchmark: Any, jpegs: tuple[str, ...], loader: str, device: str, workers: int
) -> None:
    spec = kdbench.create_plugin_host().loaders.get(loader)
    target = torch.device(device)
    epochs = iter(range(1_000_000))

    def one_epoch() -> None:
        for batch in spec.load(_request(jpegs, target, workers, next(epochs))):
            assert batch.shape == (BATCH, 3, SIZE, SIZE)
        if target.type == "cuda":
            torch.cuda.synchronize()

    rounds = int(os.environ.get("KDBENCH_BENCH_ROUNDS", "3"))
    benchmark.pedantic(one_epoch, rounds=rounds, warmup_rounds=1, iterations=1)
    label = f"{loader} on {device}, {workers} worker(s)"
    if benchmark.stats is not None:
        rate = IMAGES / benchmark.stats.stats.median
        benchmark.extra_info.update(images_per_second=round(rate, 1), device=device, workers=workers)
        _RATES.append((label, rate))


def test_print_loader_rates(capsys: pytest.CaptureFixture[str]) -> None:
    """Not timed: the images/s of every loader benchmarked above, one line each (runs last in this file)."""
    with capsys.disabled():
        stamp = time.strftime("%Y-%m-%d")
        setup = f"{IMAGES} JPEGs 500×375 → RandomResizedCrop(224), batch {BATCH}"
        print(f"\nloaders, {setup} ({stamp}, {os.cpu_count()} CPUs):")
        for label, rate in _RATES:
            print(f"  {label:36s} {rate:8.1f} images/s")
