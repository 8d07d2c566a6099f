"""ImageNet ResNet-18/34/50/101, state-dict compatible with torchvision's ``resnet*``.

Architecture: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, in
torchvision's form (the "v1.5" bottleneck: stride on the 3×3 convolution), the teachers and
students of the ImageNet KD tables (MDistiller ``mdistiller/models/imagenet/resnet.py``,
torchdistill). Module and parameter names equal torchvision's, so its ``IMAGENET1K_V1``
weights load with ``strict=True`` and give the same logits (tested against torchvision).

What kdbench adds changes nothing a checkpoint sees: each block ends in its own non-inplace
``relu_out`` (torchvision reuses one in-place ``relu`` twice per block), so
:class:`kdbench.FeatureTaps` reads each stage's post-ReLU feature as that module's output and
the residual sum before it as its input; the stem's feature is the ReLU output before the
max-pool (as MDistiller's ``feats[0]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["BasicBlock", "Bottleneck", "ImageNetResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Return torchvision's 1×1 conv + BN projection where the shape changes, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
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
        self.downsample = _downsample(in_channels, channels, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; ReLU after the sum (torchvision's v1.5)."""

    expansion = 4
    last_bn = "bn3"

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + identity)


class ImageNetResNet(nn.Module):
    """7×7/2 stem, 3×3/2 max-pool, four stages (64, 128, 256, 512 channels × expansion), global pool, fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = []
            for position in range(blocks):
                stage.append(block(channels, width, stride if position == 0 else 1))
                channels = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()
        last = [f"layer{i + 1}.{n - 1}" for i, n in enumerate(layers)]
        self.feature_taps = FeatureTaps(
            stages=("relu", *(f"{name}.relu_out" for name in last)),
            classifier="fc",
            bn_before_relu=("bn1", *(f"{name}.{block.last_bn}" for name in last)),
        )

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming normal (fan-out) convolutions, unit BN, default Linear."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-18: BasicBlock × (2, 2, 2, 2); 11,689,512 parameters with 1000 classes."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-34: BasicBlock × (3, 4, 6, 3); 21,797,672 parameters with 1000 classes."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-50: Bottleneck × (3, 4, 6, 3); 25,557,032 parameters with 1000 classes."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def resnet101(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-101: Bottleneck × (3, 4, 23, 3); 44,549,160 parameters with 1000 classes."""
    return ImageNetResNet(Bottleneck, (3, 4, 23, 3), num_classes)


def _spec(name: str, builder: Callable[..., nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation="He et al., CVPR 2016; torchvision models/resnet.py (state-dict names), MDistiller's ImageNet zoo",
        input_size=(3, 224, 224),
        default_num_classes=1000,
        tags=("imagenet", "resnet"),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("resnet18", resnet18, "ImageNet ResNet-18 (torchvision names; the R34→R18 student)"),
        _spec("resnet34", resnet34, "ImageNet ResNet-34 (torchvision names; the R34→R18 teacher)"),
        _spec("resnet50", resnet50, "ImageNet ResNet-50 (torchvision v1.5; the R50→MobileNetV1 teacher)"),
        _spec("resnet101", resnet101, "ImageNet ResNet-101 (torchvision v1.5)"),
    ]
