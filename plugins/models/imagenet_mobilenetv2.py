"""ImageNet MobileNetV2, state-dict compatible with torchvision's ``mobilenet_v2``.

Architecture: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
in torchvision's form (width 1.0: a 3×3/2 stem, 17 inverted residual blocks, a 1×1 conv to 1280
channels, dropout 0.2 and a linear classifier). Module and parameter names are torchvision's
(``features.N…``, ``classifier.1``), so its ``IMAGENET1K_V1`` weights load strictly and give the same
logits (tested against torchvision).

kdbench adds parameter-free modules only: each block's output passes an ``nn.Identity`` (``out``), so
the five stages — the last block at strides 2, 4, 8, 16 and 32 (``features.1``, ``.3``, ``.6``,
``.13``, ``.17``) — can be tapped (their blocks end linearly, so preact and feature are one tensor),
and global pooling is a module (``avgpool``), whose input is the pooled map (the 1280-channel head
convolution's output).
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["ImageNetMobileNetV2", "InvertedResidual", "mobilenet_v2"]

#: (expansion t, output channels c, repeats n, first stride s) of torchvision's MobileNetV2 (width 1.0).
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: The ``features`` index of the last block at each output stride (2, 4, 8, 16, 32).
STAGE_ENDS = (1, 3, 6, 13, 17)


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias), BN, ReLU6 — as ``0``, ``1``, ``2``."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1×1 expansion (unless t = 1), 3×3 depthwise, 1×1 linear projection; a residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [] if expand_ratio == 1 else [_conv_bn_relu6(inp, hidden, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.conv(x) if self.use_res_connect else self.conv(x))


class ImageNetMobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) with tappable stage outputs and pooling."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        channels = 32
        for t, c, n, s in SETTINGS:
            for index in range(n):
                layers.append(InvertedResidual(channels, c, s if index == 0 else 1, t))
                channels = c
        layers.append(_conv_bn_relu6(channels, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        self._init_weights()
        self.feature_taps = FeatureTaps(
            stages=tuple(f"features.{index}.out" for index in STAGE_ENDS),
            classifier="classifier",
            bn_before_relu=tuple(f"features.{index}.conv.{len(self.features[index].conv) - 1}" for index in STAGE_ENDS),
            pooled_map="avgpool",
        )

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming normal (fan-out) convs, unit BN, N(0, 0.01) linear, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 1000) -> ImageNetMobileNetV2:
    """MobileNetV2 (width 1.0): 3,504,872 parameters with 1000 classes."""
    return ImageNetMobileNetV2(num_classes)


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="mobilenet_v2",
            builder=mobilenet_v2,
            description="ImageNet MobileNetV2, width 1.0 (torchvision names)",
            citation="Sandler et al., CVPR 2018; torchvision models/mobilenetv2.py (state-dict names)",
            input_size=(3, 224, 224),
            default_num_classes=1000,
            tags=("imagenet", "mobilenet"),
        )
    ]
