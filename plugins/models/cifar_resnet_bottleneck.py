"""CIFAR ResNet-18/34/50/101: the ImageNet ResNets with a 3×3 stem and no max-pool.

Architecture: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
CIFAR adaptation, parameter names and the ResNet50 teacher: the CRD benchmark of
Tian et al., "Contrastive Representation Distillation", ICLR 2020 (RepDistiller
``models/resnetv2.py``, after kuangliu's pytorch-cifar), reused by MDistiller.
State-dict keys, shapes and the forward computation match that code, so its
published ``ResNet50`` teacher loads with ``strict=True``.

kdbench changes nothing a checkpoint sees: the stem ReLU (``relu``) and each
block's final ReLU (``relu_out``) are non-inplace modules, so
:class:`kdbench.FeatureTaps` reads each stage's post-ReLU feature as their output
and the residual sum before the ReLU as their input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101"]


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Return the identity shortcut (empty Sequential) or a 1×1 conv + BN projection."""
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus shortcut; ReLU after the sum."""

    expansion = 1
    last_bn = "bn2"

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _shortcut(in_channels, channels * self.expansion, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; ReLU after the sum."""

    expansion = 4
    last_bn = "bn3"

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.shortcut(x))


class ResNet(nn.Module):
    """3×3 stem (64 channels, stride 1), four stages (64/128/256/512 × expansion), pooling, ``linear``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(block, 64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(block, 128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(block, 256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(block, 512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        lasts = [f"layer{i + 1}.{n - 1}" for i, n in enumerate(blocks_per_stage)]
        self.feature_taps = FeatureTaps(
            stages=("relu", *(f"{name}.relu_out" for name in lasts)),
            classifier="linear",
            bn_before_relu=("bn1", *(f"{name}.{block.last_bn}" for name in lasts)),
        )
        self._init_weights(zero_init_residual)

    def _make_stage(
        self, block: type[BasicBlock] | type[Bottleneck], channels: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_channels, channels, block_stride))
            self.in_channels = channels * block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(getattr(module, module.last_bn).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def _resnet(
    block: type[BasicBlock] | type[Bottleneck], blocks_per_stage: tuple[int, int, int, int], num_classes: int
) -> ResNet:
    return ResNet(block, blocks_per_stage, num_classes=num_classes)


def ResNet18(*, num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-18: basic blocks 2/2/2/2."""
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes)


def ResNet34(*, num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-34: basic blocks 3/4/6/3."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes)


def ResNet50(*, num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-50: bottlenecks 3/4/6/3."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes)


def ResNet101(*, num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-101: bottlenecks 3/4/23/3."""
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes)


def _spec(name: str, builder: Callable[..., ResNet], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation="He et al., CVPR 2016; CIFAR zoo of Tian et al., ICLR 2020 (CRD, models/resnetv2.py)",
        input_size=(3, 32, 32),
        default_num_classes=100,
        tags=("cifar", "resnet"),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("ResNet18", ResNet18, "CIFAR ResNet-18: basic blocks 2/2/2/2, 3×3 stem, no max-pool"),
        _spec("ResNet34", ResNet34, "CIFAR ResNet-34: basic blocks 3/4/6/3, 3×3 stem, no max-pool (seed 001 teacher)"),
        _spec("ResNet50", ResNet50, "CIFAR ResNet-50: bottlenecks 3/4/6/3, 3×3 stem, no max-pool (teacher)"),
        _spec("ResNet101", ResNet101, "CIFAR ResNet-101: bottlenecks 3/4/23/3, 3×3 stem, no max-pool"),
    ]
