"""Small CNNs for scikit-learn's 8×8 handwritten digits: one teacher and two students.

A kdbench-native family for fast CPU experiments and end-to-end tests on the
UCI "Optical Recognition of Handwritten Digits" data as shipped with
scikit-learn (Alpaydin & Kaynak, 1998; 1,797 images, 1×8×8, 10 classes).
They follow the CIFAR zoo's conventions: a stem and three stages (8×8, 8×8,
4×4, 2×2), conv → BN → ReLU everywhere, each stage's final ReLU a non-inplace
module read by :class:`kdbench.FeatureTaps`, global average pooling, ``fc``.

=============== ======================= ========== ========
name            widths (stem, stages)   convs/stage params
=============== ======================= ========== ========
digits_cnn_l    32 / 32 / 64 / 128      2 / 2 / 1  ~148 k
digits_cnn_m    16 / 16 / 32 / 64       1 / 1 / 1  ~26 k
digits_cnn_s    8 / 8 / 16 / 32         1 / 1 / 1  ~7 k
=============== ======================= ========== ========
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["ConvBNReLU", "DigitsCNN", "digits_cnn_l", "digits_cnn_m", "digits_cnn_s"]


class ConvBNReLU(nn.Module):
    """3×3 conv (no bias), BN, non-inplace ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _stage(in_channels: int, out_channels: int, convs: int, stride: int) -> nn.Sequential:
    """Return ``convs`` conv-BN-ReLU units, the first one strided."""
    units = [ConvBNReLU(in_channels, out_channels, stride)]
    units += [ConvBNReLU(out_channels, out_channels) for _ in range(1, convs)]
    return nn.Sequential(*units)


class DigitsCNN(nn.Module):
    """Stem + three stages (strides 1, 2, 2), global average pooling, ``fc``."""

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        convs: tuple[int, int, int],
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.stem = ConvBNReLU(in_channels, widths[0])
        self.stage1 = _stage(widths[0], widths[1], convs[0], stride=1)
        self.stage2 = _stage(widths[1], widths[2], convs[1], stride=2)
        self.stage3 = _stage(widths[2], widths[3], convs[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        lasts = ["stem", *(f"stage{i + 1}.{n - 1}" for i, n in enumerate(convs))]
        self.feature_taps = FeatureTaps(
            stages=tuple(f"{name}.relu" for name in lasts),
            classifier="fc",
            bn_before_relu=tuple(f"{name}.bn" for name in lasts),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def digits_cnn_l(*, num_classes: int = 10) -> DigitsCNN:
    """Teacher: widths 32/32/64/128, two convs in stages 1 and 2."""
    return DigitsCNN((32, 32, 64, 128), (2, 2, 1), num_classes=num_classes)


def digits_cnn_m(*, num_classes: int = 10) -> DigitsCNN:
    """Student: widths 16/16/32/64, one conv per stage."""
    return DigitsCNN((16, 16, 32, 64), (1, 1, 1), num_classes=num_classes)


def digits_cnn_s(*, num_classes: int = 10) -> DigitsCNN:
    """Student: widths 8/8/16/32, one conv per stage."""
    return DigitsCNN((8, 8, 16, 32), (1, 1, 1), num_classes=num_classes)


def _spec(name: str, builder: Callable[..., nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation="kdbench; data: Alpaydin & Kaynak 1998 (UCI optical digits, scikit-learn load_digits)",
        input_size=(1, 8, 8),
        default_num_classes=10,
        tags=("digits",),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("digits_cnn_l", digits_cnn_l, "8×8 digits CNN teacher, widths 32/32/64/128, 5 convs + stem"),
        _spec("digits_cnn_m", digits_cnn_m, "8×8 digits CNN student, widths 16/16/32/64, 3 convs + stem"),
        _spec("digits_cnn_s", digits_cnn_s, "8×8 digits CNN student, widths 8/8/16/32, 3 convs + stem"),
    ]
