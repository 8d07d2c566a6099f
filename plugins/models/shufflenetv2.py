"""ShuffleNetV2 for CIFAR (net size 1: widths 116/232/464, head 1024, blocks 3/7/3).

Architecture: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018. CIFAR variant (1×1 stem, no max-pool),
parameter names and the ``ShuffleV2`` configuration: the CRD benchmark of Tian et
al., "Contrastive Representation Distillation", ICLR 2020 (RepDistiller
``models/ShuffleNetv2.py``, after kuangliu's pytorch-cifar), reused by MDistiller.
State-dict keys, shapes and the logits match that code.

Two deliberate differences, neither visible to a checkpoint:

* Global pooling is adaptive. The reference pools with a fixed 4×4 window, which
  is the same at 32×32 but leaves a 2×2 map at 64×64 and breaks the classifier
  (MDistiller's Tiny-ImageNet ShuffleV2 defect).
* The final ReLU of a basic unit. The reference rectifies the branch
  (``relu(bn3 output)``) before concatenating it with the untouched half
  ``x1``; kdbench rectifies the concatenation ``[x1, bn3 output]`` with one
  non-inplace ``nn.ReLU`` (``relu_out``) and then shuffles. ``x1`` is itself a
  ReLU output (every unit and down-sampling unit ends in ReLUs), so ReLU
  leaves it unchanged and the unit's output equals the reference's exactly.

Feature taps, as the reference's ``forward(x, is_feat=True, preact=...)``: the
stem ReLU (``relu``: feature its output, preact its input) and, per stage, the
output of its last basic unit (the shuffled feature) with, as preact, the input
of that unit's ``relu_out``: the reference's ``[x1, bn3 output]`` in its
channel order *before* the shuffle, so ``relu(preact)`` is the feature before
its channel shuffle. No single BatchNorm feeds a whole stage's ReLU (``bn3``
covers half of the channels), so ``bn_before_relu`` is empty, as the
reference's ``get_bn_before_relu`` raises. The map global pooling averages is
the 1×1 head's ``relu(bn2(conv2 output))``: the ``pooled_map`` (the input of
``avgpool``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["CONFIGS", "BasicUnit", "DownUnit", "ShuffleNetV2", "ShuffleV2", "channel_shuffle"]

#: net size → (stage widths, head width), blocks per stage.
CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channels: view as (groups, C/groups), transpose, flatten back."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class BasicUnit(nn.Module):
    """Split channels in half; 1×1-BN-ReLU, depthwise 3×3-BN, 1×1-BN-ReLU on the second half; concat; shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = int(channels * split_ratio)
        half = self.split
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = torch.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        # x1 >= 0 (a ReLU output), so relu([x1, out]) == [x1, relu(out)], the reference's concatenation.
        return channel_shuffle(self.relu_out(torch.cat([x1, out], 1)))


class DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input; concat doubles the width; shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """1×1 stem (24), three stages (down unit + basic units), 1×1 conv head, pooling, ``linear``."""

    def __init__(self, net_size: float = 1, num_classes: int = 100) -> None:
        super().__init__()
        widths, blocks = CONFIGS[net_size]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_stage(widths[0], blocks[0])
        self.layer2 = self._make_stage(widths[1], blocks[1])
        self.layer3 = self._make_stage(widths[2], blocks[2])
        self.conv2 = nn.Conv2d(widths[2], widths[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)
        # Stage i is a DownUnit at index 0 followed by blocks[i] basic units.
        lasts = [f"layer{i + 1}.{n}" for i, n in enumerate(blocks)]
        self.feature_taps = FeatureTaps(
            stages=("relu", *lasts),
            classifier="linear",
            preact=("relu", *(f"{name}.relu_out" for name in lasts)),
            pooled_map="avgpool",
        )

    def _make_stage(self, width: int, blocks: int) -> nn.Sequential:
        units: list[nn.Module] = [DownUnit(self.in_channels, width)]
        units += [BasicUnit(width) for _ in range(blocks)]
        self.in_channels = width
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def ShuffleV2(*, num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNetV2 net size 1: widths 116/232/464, head 1024."""
    return ShuffleNetV2(1, num_classes=num_classes)


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="ShuffleV2",
            builder=ShuffleV2,
            description="CIFAR ShuffleNetV2 net size 1, widths 116/232/464, head 1024",
            citation="Ma et al., ECCV 2018; CIFAR zoo of Tian et al., ICLR 2020 (CRD)",
            input_size=(3, 32, 32),
            default_num_classes=100,
            tags=("cifar", "shufflenet"),
        ),
    ]
