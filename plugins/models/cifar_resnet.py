"""CIFAR ResNets (basic blocks, 6n+2 layers) as used by every CIFAR-100 KD benchmark.

Architecture: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
(the CIFAR variant of section 4.2: a 3×3 stem and three stages of basic blocks).
Zoo, widths and parameter names: the CRD benchmark of Tian et al., "Contrastive
Representation Distillation", ICLR 2020 (RepDistiller ``models/resnet.py``), reused
unchanged by MDistiller. State-dict keys, shapes and the forward computation match
that code, so its published teacher checkpoints load with ``strict=True``.

kdbench changes nothing a checkpoint sees. Each stage's final ReLU is its own
non-inplace ``nn.ReLU`` module (``relu`` for the stem, ``relu_out`` in every
block) so that :class:`kdbench.FeatureTaps` reads the post-ReLU stage feature
as its output and the residual sum before the ReLU as its input. Global pooling
is adaptive, which equals the reference ``AvgPool2d(8)`` at 32×32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]

_CITATION = "He et al., CVPR 2016; CIFAR zoo of Tian et al., ICLR 2020 (CRD)"


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """Return a bias-free 3×3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a (projected) shortcut; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Return the 1×1 conv + BN shortcut used when shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class CifarResNet(nn.Module):
    """3×3 stem, three stages of ``blocks_per_stage`` basic blocks, global pooling, ``fc``."""

    def __init__(self, blocks_per_stage: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        self.in_channels = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(widths[3], blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        last = blocks_per_stage - 1
        self.feature_taps = FeatureTaps(
            stages=("relu", *(f"layer{i}.{last}.relu_out" for i in (1, 2, 3))),
            classifier="fc",
            bn_before_relu=("bn1", *(f"layer{i}.{last}.bn2" for i in (1, 2, 3))),
        )
        self._init_weights()

    def _make_stage(self, channels: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = channels * BasicBlock.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = _projection(self.in_channels, out_channels, stride)
        layers = [BasicBlock(self.in_channels, channels, stride, downsample)]
        self.in_channels = out_channels
        layers += [BasicBlock(out_channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"a basic-block CIFAR ResNet needs depth 6n+2, got {depth}")
    return CifarResNet((depth - 2) // 6, widths, num_classes=num_classes)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-8 (widths 16/16/32/64)."""
    return _cifar_resnet(8, _NARROW, num_classes)


def resnet14(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-14 (widths 16/16/32/64)."""
    return _cifar_resnet(14, _NARROW, num_classes)


def resnet20(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-20 (widths 16/16/32/64)."""
    return _cifar_resnet(20, _NARROW, num_classes)


def resnet32(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-32 (widths 16/16/32/64)."""
    return _cifar_resnet(32, _NARROW, num_classes)


def resnet44(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-44 (widths 16/16/32/64)."""
    return _cifar_resnet(44, _NARROW, num_classes)


def resnet56(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-56 (widths 16/16/32/64)."""
    return _cifar_resnet(56, _NARROW, num_classes)


def resnet110(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-110 (widths 16/16/32/64)."""
    return _cifar_resnet(110, _NARROW, num_classes)


def resnet8x4(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-8 with 4× widths (32/64/128/256)."""
    return _cifar_resnet(8, _WIDE, num_classes)


def resnet32x4(*, num_classes: int = 100) -> CifarResNet:
    """ResNet-32 with 4× widths (32/64/128/256)."""
    return _cifar_resnet(32, _WIDE, num_classes)


def _spec(name: str, builder: Callable[..., nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation=_CITATION,
        input_size=(3, 32, 32),
        default_num_classes=100,
        tags=("cifar", "resnet"),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("resnet8", resnet8, "CIFAR ResNet-8, basic blocks, widths 16/16/32/64"),
        _spec("resnet14", resnet14, "CIFAR ResNet-14, basic blocks, widths 16/16/32/64"),
        _spec("resnet20", resnet20, "CIFAR ResNet-20, basic blocks, widths 16/16/32/64"),
        _spec("resnet32", resnet32, "CIFAR ResNet-32, basic blocks, widths 16/16/32/64"),
        _spec("resnet44", resnet44, "CIFAR ResNet-44, basic blocks, widths 16/16/32/64"),
        _spec("resnet56", resnet56, "CIFAR ResNet-56, basic blocks, widths 16/16/32/64 (teacher)"),
        _spec("resnet110", resnet110, "CIFAR ResNet-110, basic blocks, widths 16/16/32/64 (teacher)"),
        _spec("resnet8x4", resnet8x4, "CIFAR ResNet-8 ×4 width, basic blocks, widths 32/64/128/256"),
        _spec("resnet32x4", resnet32x4, "CIFAR ResNet-32 ×4 width, basic blocks, widths 32/64/128/256 (teacher)"),
    ]
