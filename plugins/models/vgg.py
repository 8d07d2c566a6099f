"""VGG-8/11/13/16/19 with batch norm for CIFAR (no fully connected head).

Architecture: Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015, with BN after every convolution.
CIFAR variant, the 8-layer configuration, parameter names and the ``vgg13``
teacher: the CRD benchmark of Tian et al., "Contrastive Representation
Distillation", ICLR 2020 (RepDistiller ``models/vgg.py``, its ``vgg*_bn``
builders, which its model table names ``vgg8`` … ``vgg19``), reused by
MDistiller. State-dict keys (``block0.0.weight`` … ``classifier.bias``), shapes
and the forward computation match that code, so its teachers load with
``strict=True``.

Each of the five conv blocks ends with a BatchNorm; its ReLU is a separate
non-inplace module (``relu0`` … ``relu4``, no parameters) so that
:class:`kdbench.FeatureTaps` reads the post-ReLU block output and the BN output
before it. As in the reference, the fourth max-pool is used only for 64×64
inputs, and the last pooling is a global average.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["CONFIGS", "VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

#: Output channels of the convolutions of each of the five blocks.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """Return conv3×3-BN-ReLU units, the last one without its ReLU (it ends with the BN)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five BN conv blocks with 2×2 max-pools between them, global average pooling, ``classifier``."""

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            self.add_module(f"block{index}", conv_block(in_channels, widths))
            in_channels = widths[-1]
        for index in range(4):
            self.add_module(f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        for index in range(5):
            self.add_module(f"relu{index}", nn.ReLU())
        self.classifier = nn.Linear(in_channels, num_classes)
        self.feature_taps = FeatureTaps(
            stages=tuple(f"relu{i}" for i in range(5)),
            classifier="classifier",
            bn_before_relu=tuple(f"block{i}.{3 * len(widths) - 2}" for i, widths in enumerate(config)),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if height == 64:  # the reference pools a fourth time only for 64×64 inputs
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _vgg(config: str, num_classes: int) -> VGG:
    return VGG(CONFIGS[config], num_classes=num_classes)


def vgg8(*, num_classes: int = 100) -> VGG:
    """VGG-8 with BN (configuration "S": one conv per block)."""
    return _vgg("S", num_classes)


def vgg11(*, num_classes: int = 100) -> VGG:
    """VGG-11 with BN (configuration "A")."""
    return _vgg("A", num_classes)


def vgg13(*, num_classes: int = 100) -> VGG:
    """VGG-13 with BN (configuration "B")."""
    return _vgg("B", num_classes)


def vgg16(*, num_classes: int = 100) -> VGG:
    """VGG-16 with BN (configuration "D")."""
    return _vgg("D", num_classes)


def vgg19(*, num_classes: int = 100) -> VGG:
    """VGG-19 with BN (configuration "E")."""
    return _vgg("E", num_classes)


def _spec(name: str, builder: Callable[..., nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation="Simonyan & Zisserman, ICLR 2015; CIFAR zoo of Tian et al., ICLR 2020 (CRD)",
        input_size=(3, 32, 32),
        default_num_classes=100,
        tags=("cifar", "vgg"),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("vgg8", vgg8, "VGG-8 with BN, one conv per block, global average pooling"),
        _spec("vgg11", vgg11, "VGG-11 with BN, global average pooling"),
        _spec("vgg13", vgg13, "VGG-13 with BN, global average pooling (teacher)"),
        _spec("vgg16", vgg16, "VGG-16 with BN, global average pooling"),
        _spec("vgg19", vgg19, "VGG-19 with BN, global average pooling"),
    ]
