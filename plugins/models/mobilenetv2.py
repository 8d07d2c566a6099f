"""MobileNetV2 for CIFAR: the half-width variant (expansion 6, width 0.5) of the KD tables.

Architecture: Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. CIFAR variant (stride-2 stem, 1280-channel head),
parameter names and the ``mobile_half`` configuration: the CRD benchmark of Tian
et al., "Contrastive Representation Distillation", ICLR 2020 (RepDistiller
``models/mobilenetv2.py``, from Jin et al.'s "Knowledge Distillation via Route
Constrained Optimization"), named ``MobileNetV2`` by MDistiller. State-dict keys,
shapes and the forward computation match that code, so its checkpoints load with
``strict=True``.

Feature taps, as in the reference's ``is_feat`` features: the stem output
(``conv1``, post-ReLU) then the outputs of block groups 1, 2, 4 and 6. Those
groups end in a *linear* bottleneck (no activation), so their tap is an
``nn.Identity`` (``linear_out``) at the end of the group's last block: preact
and feature are the same tensor, the block output after its residual add. The
stem's tapped ReLU is non-inplace. ``bn_before_relu`` follows the reference's
``get_bn_before_relu()`` (the projection BN of each tapped block) plus the stem
BN. Global pooling is adaptive, equal to the reference's 2×2 average pool at
32×32 (and usable at other input sizes); the map it pools, the 1280-channel head
``conv2``'s output, is the ``pooled_map`` (the input of ``avgpool``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench import FeatureTaps, ModelSpec, hookimpl

__all__ = ["InvertedResidual", "MobileNetV2", "mobile_half", "mobilenetv2_t_w"]

#: (expansion t, output channels c, blocks n, first stride s) per block group; t=None: the network's expansion.
SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
#: Block groups whose outputs are stage features (after the stem).
TAPPED_GROUPS = (1, 2, 4, 6)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Return conv (no bias) + BN + non-inplace ReLU, keys ``0.*`` and ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, 1×1 linear projection (each with BN); residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expansion
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.linear_out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return self.linear_out(x + out if self.use_res_connect else out)


class MobileNetV2(nn.Module):
    """Stride-2 3×3 stem, seven inverted-residual groups, 1×1 conv to 1280, pooling, ``classifier``."""

    def __init__(self, expansion: int = 6, width_mult: float = 1.0, num_classes: int = 100) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, in_channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out_channels = int(c * width_mult)
            group = []
            for stride in [s] + [1] * (n - 1):
                group.append(InvertedResidual(in_channels, out_channels, stride, expansion if t is None else t))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(in_channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        lasts = [f"blocks.{g}.{SETTINGS[g][2] - 1}" for g in TAPPED_GROUPS]
        self.feature_taps = FeatureTaps(
            stages=("conv1.2", *(f"{name}.linear_out" for name in lasts)),
            classifier="classifier",
            bn_before_relu=("conv1.1", *(f"{name}.conv.7" for name in lasts)),
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
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv2_t_w(expansion: int, width_mult: float, num_classes: int = 100) -> MobileNetV2:
    """Return a CIFAR MobileNetV2 with expansion ``expansion`` and width multiplier ``width_mult``."""
    return MobileNetV2(expansion, width_mult, num_classes=num_classes)


def mobile_half(*, num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2, expansion 6, width 0.5 (the KD benchmark student)."""
    return mobilenetv2_t_w(6, 0.5, num_classes)


@hookimpl
def kdbench_register_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="MobileNetV2",
            builder=mobile_half,
            description="CIFAR MobileNetV2, expansion 6, width 0.5 (RepDistiller mobile_half)",
            citation="Sandler et al., CVPR 2018; CIFAR zoo of Tian et al., ICLR 2020 (CRD)",
            input_size=(3, 32, 32),
            default_num_classes=100,
            tags=("cifar", "mobilenet"),
        ),
    ]
