"""The classic KD training loop of the reference toolkits, written out as the baseline of the step benchmark.

This is how RepDistiller- and MDistiller-style scripts train a student: a
torchvision ``CIFAR``-style dataset hands out PIL images, ``RandomCrop`` +
``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` run per sample on the
host, a ``DataLoader`` collates the batch, which is then copied to the device;
the teacher runs under ``no_grad``, the student with autograd, CE·0.1 + KD·0.9
is back-propagated, SGD steps, and ``loss.item()`` reads the loss back to the
host on every step to log it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdbench.losses import kd_loss

__all__ = ["ClassicKDLoop", "SyntheticCIFAR", "train_transform"]


class SyntheticCIFAR(Dataset):
    """A dataset shaped like torchvision's ``CIFAR100``: ``data`` N×H×W×C uint8, ``targets`` ints, PIL samples."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        self.data: np.ndarray = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets: list[int] = [int(label) for label in labels.tolist()]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def train_transform(mean: tuple[float, ...], std: tuple[float, ...], pad: int = 4) -> transforms.Compose:
    """Return the reference CIFAR train transform: random crop with zero padding, h-flip, to tensor, normalise."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=pad),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class ClassicKDLoop:
    """Teacher→student KD training the way the reference scripts write it; :meth:`run_epoch` is one pass."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        dataset: Dataset,
        device: torch.device,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ) -> None:
        self.device = device
        self.student = student.to(device)
        self.teacher = teacher.to(device).eval()
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        # Persistent workers so that a short benchmark epoch does not pay the worker start-up every round.
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def run_epoch(self) -> float:
        """Train one pass over the loader and return the mean loss (read back to the host every step)."""
        self.student.train()
        total, steps = 0.0, 0
        for images, targets in self.loader:
            images = images.to(self.device)
            targets = targets.to(self.device)
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            student_logits = self.student(images)
            loss = self.ce_weight * F.cross_entropy(student_logits, targets) + self.kd_weight * kd_loss(
                student_logits, teacher_logits, self.temperature
            )
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            steps += 1
        return total / max(steps, 1)
