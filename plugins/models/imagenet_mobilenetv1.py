"""MobileNetV1 for ImageNet, as MDistiller builds it (the student of its ResNet-50 → MobileNetV1 table).

Architecture: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", arXiv:1704.04861, 2017. Layout, parameter names and feature taps as
MDistiller's ``mdistiller/models/imagenet/mobilenetv1.py`` (a 3×3/2 conv-BN-ReLU stem and 13
depthwise-separable blocks in ``model``, global pooling, ``fc``): its four stages end at
``model[3]``, ``model[5]``, ``model[11]`` and ``model[13]``; each stage's feature is the final
ReLU's output and its preact that ReLU's input (``feats`` / ``preact_feats`` there). kdbench's
ReLUs are not in-place (no parameter changes), and the pooling is adaptive: identical to
MDistiller's ``AvgPool2d(7)`` on 224-pixel inputs, and usable at other sizes. MDistiller fixes
1000 classes; ``num_classes`` is a parameter here.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["MobileNetV1"]

#: (input channels, output channels, stride) of the 13 depthwise-separable blocks after the stem.
BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1),
)  # fmt: skip
#: Indices in ``model`` of the block that ends each of the four stages (MDistiller's feat1..feat4).
STAGE_ENDS = (3, 5, 11, 13)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """A 3×3/2 stem and 13 depthwise-separable blocks (to 1024 channels), global average pooling, ``fc``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.model = nn.Sequential(
            _conv_bn(3, 32, 2), *(_conv_dw(i, o, s) for i, o, s in BLOCKS), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(1024, num_classes)
        self.feature_taps = FeatureTaps(
            stages=tuple(f"model.{index}.5" for index in STAGE_ENDS),
            classifier="fc",
            bn_before_relu=tuple(f"model.{index}.4" for index in STAGE_ENDS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def mobilenetv1(num_classes: int = 1000) -> MobileNetV1:
    """MDistiller's MobileNetV1: 4,231,976 parameters with 1000 classes."""
    return MobileNetV1(num_classes)


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="MobileNetV1",
            builder=mobilenetv1,
            description="ImageNet MobileNetV1 as MDistiller builds it (the R50→MobileNetV1 student)",
            citation="Howard et al., arXiv:1704.04861; MDistiller mdistiller/models/imagenet/mobilenetv1.py",
            input_size=(3, 224, 224),
            default_num_classes=1000,
            tags=("imagenet", "mobilenet"),
        )
    ]
