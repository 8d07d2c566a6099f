"""ShuffleNet (v1) for CIFAR: groups 3, stage widths 240/480/960, blocks 4/8/4.

Architecture: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018. CIFAR variant (1×1 stem, no
max-pool), parameter names and the ``ShuffleV1`` configuration: the CRD benchmark
of Tian et al., "Contrastive Representation Distillation", ICLR 2020 (RepDistiller
``models/ShuffleNetv1.py``, after kuangliu's pytorch-cifar), reused by MDistiller.
State-dict keys, shapes and the forward computation match that code.

Feature taps: the stem ReLU (``relu``) and the final ReLU of each stage's last
unit (``relu_out``), both non-inplace, so each tap's input is the residual sum
(or, in a strided unit, the concatenation) before the ReLU. The reference has no
``get_bn_before_relu``; kdbench names the stem BN and the last unit's ``bn3``
(whose output, plus the identity shortcut, feeds that ReLU). Global pooling is
adaptive: equal to the reference's 4×4 average pool at 32×32, and it also works
at 64×64, where the reference's fixed pool breaks the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["ShuffleNet", "ShuffleUnit", "ShuffleV1", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels: view as (groups, C/groups), transpose, flatten back."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1×1, shuffle, depthwise 3×3, grouped 1×1; add (stride 1) or concat an avg-pooled input (stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_channels = out_channels // 4
        self.first_groups = 1 if in_channels == 24 else groups  # the stem output is not grouped
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        merged = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return self.relu_out(merged)


class ShuffleNet(nn.Module):
    """1×1 stem (24), three stages (first unit strided, concatenating), pooling, ``linear``."""

    def __init__(
        self,
        widths: tuple[int, int, int],
        blocks: tuple[int, int, int],
        groups: int,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_stage(widths[0], blocks[0], groups)
        self.layer2 = self._make_stage(widths[1], blocks[1], groups)
        self.layer3 = self._make_stage(widths[2], blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[2], num_classes)
        lasts = [f"layer{i + 1}.{n - 1}" for i, n in enumerate(blocks)]
        self.feature_taps = FeatureTaps(
            stages=("relu", *(f"{name}.relu_out" for name in lasts)),
            classifier="linear",
            bn_before_relu=("bn1", *(f"{name}.bn3" for name in lasts)),
        )

    def _make_stage(self, width: int, blocks: int, groups: int) -> nn.Sequential:
        # The strided first unit concatenates its input, so its branch makes only the missing channels.
        units = [ShuffleUnit(self.in_channels, width - self.in_channels, stride=2, groups=groups)]
        units += [ShuffleUnit(width, width, stride=1, groups=groups) for _ in range(1, blocks)]
        self.in_channels = width
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def ShuffleV1(*, num_classes: int = 100) -> ShuffleNet:
    """ShuffleNet v1, groups 3, widths 240/480/960, blocks 4/8/4."""
    return ShuffleNet((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="ShuffleV1",
            builder=ShuffleV1,
            description="CIFAR ShuffleNet v1, groups 3, widths 240/480/960",
            citation="Zhang et al., CVPR 2018; CIFAR zoo of Tian et al., ICLR 2020 (CRD)",
            input_size=(3, 32, 32),
            default_num_classes=100,
            tags=("cifar", "shufflenet"),
        ),
    ]
