"""What the first-party loaders share: a map-style dataset of a request's batches for torch's DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from kdbench.stream import StreamRequest

__all__ = ["RequestBatches", "iterate"]


class RequestBatches(torch.utils.data.Dataset):
    """Item ``b`` is batch ``b`` of a request, made by a subclass's ``__getitem__`` (in a worker process)."""

    def __init__(self, request: StreamRequest) -> None:
        self.request = request
        self.bounds = request.bounds()

    def __len__(self) -> int:
        return len(self.bounds)

    def path(self, position: int) -> str:
        """Return the file of ``position``."""
        return self.request.path(position)


def iterate(batches: RequestBatches) -> Iterator[Any]:
    """Yield the batches in order, made in ``request.workers`` processes (or here, with 0)."""
    workers = batches.request.workers
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=batches.request.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    yield from loader
