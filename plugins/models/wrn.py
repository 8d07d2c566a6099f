"""Wide ResNets (pre-activation, depth 6n+4) for CIFAR.

Architecture: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
Zoo, widths and parameter names: the CRD benchmark of Tian et al., "Contrastive
Representation Distillation", ICLR 2020 (RepDistiller ``models/wrn.py``, after
Wei Yang's port), reused by MDistiller. State-dict keys, shapes and the forward
computation match that code, so its ``wrn_40_2`` teacher loads with ``strict=True``.

Feature taps, as the reference's ``forward(x, is_feat=True, preact=...)``.
A WRN block is pre-activation: a stage ends without an activation, and its
output is normalised and rectified only by the *next* unit
(``block{k+1}.layer.0.bn1``/``relu1``, and the final ``bn1``/``relu`` for the
last stage). So the features are the raw outputs of ``conv1`` (the stem) and of
``block1`` … ``block3``, and each stage's preact is the input of the ReLU that
activates it, ``bn(stage output)``: the reference's ``preact=True`` features
and ``get_bn_before_relu()`` for stages 1..3, read from the forward itself
instead of applying those BNs a second time (which, in training mode, would
update their running statistics twice). The stem's preact is, by the same rule,
``block1.layer.0.bn1(conv1 output)`` (kdbench's ``preact[0]`` convention; the
reference repeats the raw stem there). The tapped ReLUs are non-inplace. Global
pooling is adaptive, equal to the reference's 8×8 average pool at 32×32; the map
it pools, ``relu(bn1(block3 output))``, is the ``pooled_map`` (the input of
``avgpool``), not the raw last stage feature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["NetworkBlock", "WideBasicBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3×3 twice; identity shortcut or 1×1 conv on the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None
        if in_channels != out_channels:
            self.convShortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``layers`` wide blocks in ``self.layer``, the first one strided."""

    def __init__(self, layers: int, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, drop_rate
                )
                for i in range(layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: 3×3 stem (16), three stages of width 16k/32k/64k, BN-ReLU, pooling, ``fc``."""

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet needs depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_taps = FeatureTaps(
            stages=("conv1", "block1", "block2", "block3"),
            classifier="fc",
            bn_before_relu=("block1.layer.0.bn1", "block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"),
            preact=("block1.layer.0.relu1", "block2.layer.0.relu1", "block3.layer.0.relu1", "relu"),
            pooled_map="avgpool",
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _wrn(depth: int, widen_factor: int, num_classes: int) -> WideResNet:
    return WideResNet(depth, widen_factor, num_classes=num_classes)


def wrn_16_1(*, num_classes: int = 100) -> WideResNet:
    """WRN-16-1."""
    return _wrn(16, 1, num_classes)


def wrn_16_2(*, num_classes: int = 100) -> WideResNet:
    """WRN-16-2."""
    return _wrn(16, 2, num_classes)


def wrn_40_1(*, num_classes: int = 100) -> WideResNet:
    """WRN-40-1."""
    return _wrn(40, 1, num_classes)


def wrn_40_2(*, num_classes: int = 100) -> WideResNet:
    """WRN-40-2."""
    return _wrn(40, 2, num_classes)


def _spec(name: str, builder: Callable[..., nn.Module], description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        citation="Zagoruyko & Komodakis, BMVC 2016; CIFAR zoo of Tian et al., ICLR 2020 (CRD)",
        input_size=(3, 32, 32),
        default_num_classes=100,
        tags=("cifar", "wrn"),
    )


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        _spec("wrn_16_1", wrn_16_1, "Wide ResNet 16-1 (pre-activation), widths 16/16/32/64"),
        _spec("wrn_16_2", wrn_16_2, "Wide ResNet 16-2 (pre-activation), widths 16/32/64/128"),
        _spec("wrn_40_1", wrn_40_1, "Wide ResNet 40-1 (pre-activation), widths 16/16/32/64"),
        _spec("wrn_40_2", wrn_40_2, "Wide ResNet 40-2 (pre-activation), widths 16/32/64/128 (teacher)"),
    ]
