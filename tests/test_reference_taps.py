"""Every feature tap of the CIFAR zoo equals the reference zoo's own forward under the same weights.

The reference is RepDistiller's ``models/*.py`` (the CRD benchmark of Tian et
al., ICLR 2020; MDistiller's copies agree in eval mode), whose
``forward(x, is_feat=True, preact=...)`` returns ``[f0, …, fK, pooled], logits``.
This file re-types those forwards compactly (written from reading that code, not
copied; parameter names as there, so kdbench's state_dict loads into them with
``strict=True``) and compares, per architecture:

* ``feats`` with the reference's ``is_feat`` list, ``embedding`` with its pooled
  entry and the spatial mean of ``pooled_map`` too, ``logits`` with its output;
* ``preact[1:]`` with its ``preact=True`` list; ``preact[0]`` with the stem's
  pre-activation (kdbench's convention, see :class:`kdbench.FeatureTaps`; the
  references repeat ``f0`` there);
* in train mode, a single forward from identical BN state: the same taps, and
  BatchNorm running statistics updated exactly as by one reference forward
  (once, although kdbench also captured the preacts the WRN reference computes
  by running its BNs a second time).
"""

from __future__ import annotations

import copy
import importlib
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import FeatureCapture, Signals, create_model, create_plugin_host

TOLERANCE = 1e-5

# ---------------------------------------------------------------------------------------------------------------------
# Re-typed reference forwards. Each model's forward(x, is_feat, preact) mirrors the reference; ``stem_preact`` keeps
# the stem's tensor before its activation, which the references compute but do not return.


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _last_of(blocks: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run blocks returning (output, pre-activation); give the last block's pair (the reference's ``is_last``)."""
    pre = x
    for block in blocks:
        x, pre = block(x)
    return x, pre


class RefBasic(nn.Module):
    """resnet.py BasicBlock: conv-BN-ReLU, conv-BN, + shortcut, ReLU."""

    def __init__(self, cin: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = _conv(cin, c, 3, stride), _bn(c), _conv(c, c, 3), _bn(c)
        self.downsample = nn.Sequential(_conv(cin, c, 1, stride), _bn(c)) if stride != 1 or cin != c else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        pre = pre + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre


class RefResNet(nn.Module):
    """resnet.py ResNet (basic blocks, three stages, AvgPool2d(8), ``fc``)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv(3, widths[0], 3), _bn(widths[0])
        cin = widths[0]
        for i, (c, s) in enumerate(zip(widths[1:], (1, 2, 2))):
            setattr(
                self,
                f"layer{i + 1}",
                nn.ModuleList(RefBasic(cin if j == 0 else c, c, s if j == 0 else 1) for j in range(n)),
            )
            cin = c
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        self.stem_preact = self.bn1(self.conv1(x))
        x = f0 = F.relu(self.stem_preact)
        feats, pres = [f0], [f0]
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = _last_of(layer, x)
            feats.append(x)
            pres.append(pre)
        pooled = F.avg_pool2d(x, 8).view(x.size(0), -1)
        return [*(pres if preact else feats), pooled], self.fc(pooled)


class RefBottleneck(nn.Module):
    """resnetv2.py Bottleneck: 1×1, 3×3 (strided), 1×1 ×4, each with BN; + shortcut, ReLU."""

    def __init__(self, cin: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, c, 1), _bn(c)
        self.conv2, self.bn2 = _conv(c, c, 3, stride), _bn(c)
        self.conv3, self.bn3 = _conv(c, 4 * c, 1), _bn(4 * c)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * c:
            self.shortcut = nn.Sequential(_conv(cin, 4 * c, 1, stride), _bn(4 * c))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre


class RefResNetV2(nn.Module):
    """resnetv2.py ResNet with bottlenecks (3×3 stem, four stages, adaptive pooling, ``linear``)."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 64, 3), _bn(64)
        cin = 64
        for i, (c, n, s) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 2, 2))):
            setattr(
                self,
                f"layer{i + 1}",
                nn.ModuleList(RefBottleneck(cin if j == 0 else 4 * c, c, s if j == 0 else 1) for j in range(n)),
            )
            cin = 4 * c
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        self.stem_preact = self.bn1(self.conv1(x))
        x = f0 = F.relu(self.stem_preact)
        feats, pres = [f0], [f0]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x, pre = _last_of(layer, x)
            feats.append(x)
            pres.append(pre)
        pooled = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return [*(pres if preact else feats), pooled], self.linear(pooled)


class RefWideBlock(nn.Module):
    """wrn.py BasicBlock (pre-activation): BN-ReLU, conv, BN-ReLU, conv; + x or a 1×1 conv of the activated x."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1, self.bn2, self.conv2 = (
            _bn(cin),
            _conv(cin, cout, 3, stride),
            _bn(cout),
            _conv(cout, cout, 3),
        )
        self.convShortcut = _conv(cin, cout, 1, stride) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.normalised_input = self.bn1(x)
        act = F.relu(self.normalised_input)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return (x if self.convShortcut is None else self.convShortcut(act)) + out


class RefWideStage(nn.Module):
    """wrn.py NetworkBlock: its units in ``layer``."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(RefWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RefWRN(nn.Module):
    """wrn.py WideResNet: stem conv, three stages, BN-ReLU, AvgPool(8), ``fc``; features are the raw stage outputs."""

    def __init__(self, depth: int, k: int, num_classes: int = 100) -> None:
        super().__init__()
        n, w = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
        self.conv1 = _conv(3, 16, 3)
        self.block1, self.block2, self.block3 = (RefWideStage(n, w[i], w[i + 1], s) for i, s in enumerate((1, 2, 2)))
        self.bn1, self.fc = _bn(w[3]), nn.Linear(w[3], num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        self.stem_preact = self.block1.layer[0].normalised_input
        pooled = F.avg_pool2d(F.relu(self.bn1(f3)), 8).view(x.size(0), -1)
        logits = self.fc(pooled)
        if preact:  # as the reference: the BNs that read each stage are applied to it once more
            f1, f2, f3 = self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)
        return [f0, f1, f2, f3, pooled], logits


class RefVGG(nn.Module):
    """vgg.py VGG with BN: five blocks (conv-BN-ReLU …, conv-BN), max-pools, global average pool, ``classifier``."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        cin = 3
        for i, widths in enumerate(cfg):
            layers: list[nn.Module] = []
            for c in widths:
                layers += [_conv(cin, c, 3, bias=True), _bn(c), nn.ReLU()]
                cin = c
            setattr(self, f"block{i}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        height = x.shape[2]
        self.stem_preact = self.block0(x)
        x = f0 = F.relu(self.stem_preact)
        feats, pres = [f0], [f0]
        for i in range(1, 5):
            if i < 4 or height == 64:  # the fourth max-pool only at 64×64 inputs
                x = F.max_pool2d(x, 2, 2)
            pre = getattr(self, f"block{i}")(x)
            x = F.relu(pre)
            feats.append(x)
            pres.append(pre)
        pooled = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return [*(pres if preact else feats), pooled], self.classifier(pooled)


class RefInvertedResidual(nn.Module):
    """mobilenetv2.py InvertedResidual: 1×1 expand, depthwise 3×3, linear 1×1 (with BNs); residual if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        h = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv(cin, h, 1),
            _bn(h),
            nn.ReLU(),
            _conv(h, h, 3, stride, groups=h),
            _bn(h),
            nn.ReLU(),
            _conv(h, cout, 1),
            _bn(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class RefMobileNetV2(nn.Module):
    """mobilenetv2.py MobileNetV2 (T=6, width 0.5 for ``mobile_half``); features after block groups 1, 2, 4, 6."""

    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), _bn(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            cout = int(c * width)
            units = []
            for j in range(n):
                units.append(RefInvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*units))
        self.conv2 = nn.Sequential(_conv(cin, 1280, 1), _bn(1280), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        self.stem_preact = self.conv1[1](self.conv1[0](x))
        x = F.relu(self.stem_preact)
        feats = [x]
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in (1, 2, 4, 6):
                feats.append(x)
        pooled = F.avg_pool2d(self.conv2(x), 2, ceil_mode=True).view(x.size(0), -1)
        return [*feats, pooled], self.classifier(pooled)  # the reference has no separate preact list


class RefShuffleUnit(nn.Module):
    """ShuffleNetv1.py Bottleneck: grouped 1×1, shuffle, depthwise 3×3, grouped 1×1; add, or concat an avg-pooled x."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid, self.stride = cout // 4, stride
        self.g1 = 1 if cin == 24 else groups
        self.conv1, self.bn1 = _conv(cin, mid, 1, groups=self.g1), _bn(mid)
        self.conv2, self.bn2 = _conv(mid, mid, 3, stride, groups=mid), _bn(mid)
        self.conv3, self.bn3 = _conv(mid, cout, 1, groups=groups), _bn(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.stride == 2 else out + x
        return F.relu(pre), pre


class RefShuffleV1(nn.Module):
    """ShuffleNetv1.py ShuffleNet, groups 3, widths 240/480/960, blocks 4/8/4."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), _bn(24)
        cin = 24
        for i, (width, n) in enumerate(zip((240, 480, 960), (4, 8, 4))):
            units = [
                RefShuffleUnit(cin, width - cin, 2, 3),
                *(RefShuffleUnit(width, width, 1, 3) for _ in range(n - 1)),
            ]
            setattr(self, f"layer{i + 1}", nn.ModuleList(units))
            cin = width
        self.linear = nn.Linear(960, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        self.stem_preact = self.bn1(self.conv1(x))
        x = f0 = F.relu(self.stem_preact)
        feats, pres = [f0], [f0]
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = _last_of(layer, x)
            feats.append(x)
            pres.append(pre)
        pooled = F.avg_pool2d(x, 4).view(x.size(0), -1)
        return [*(pres if preact else feats), pooled], self.linear(pooled)


class RefDown(nn.Module):
    """ShuffleNetv2.py DownBlock: two stride-2 branches over the whole input, concat, shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv(cin, cin, 3, 2, groups=cin), _bn(cin)
        self.conv2, self.bn2 = _conv(cin, mid, 1), _bn(mid)
        self.conv3, self.bn3 = _conv(cin, mid, 1), _bn(mid)
        self.conv4, self.bn4 = _conv(mid, mid, 3, 2, groups=mid), _bn(mid)
        self.conv5, self.bn5 = _conv(mid, mid, 1), _bn(mid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        out = _shuffle(torch.cat([left, right], 1), 2)
        return out, out


class RefSplitUnit(nn.Module):
    """ShuffleNetv2.py BasicBlock: keep half the channels, transform the other half; preact is the concat unshuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = h = channels // 2
        self.conv1, self.bn1 = _conv(h, h, 1), _bn(h)
        self.conv2, self.bn2 = _conv(h, h, 3, groups=h), _bn(h)
        self.conv3, self.bn3 = _conv(h, h, 1), _bn(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, x2 = x[:, : self.half], x[:, self.half :]
        branch = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        return _shuffle(torch.cat([kept, F.relu(branch)], 1), 2), torch.cat([kept, branch], 1)


class RefShuffleV2(nn.Module):
    """ShuffleNetv2.py ShuffleNetV2 net size 1: 1×1 stem, three stages, 1×1 conv head, AvgPool(4), ``linear``."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), _bn(24)
        cin = 24
        for i, (width, n) in enumerate(zip((116, 232, 464), (3, 7, 3))):
            setattr(
                self, f"layer{i + 1}", nn.ModuleList([RefDown(cin, width), *(RefSplitUnit(width) for _ in range(n))])
            )
            cin = width
        self.conv2, self.bn2 = _conv(464, 1024, 1), _bn(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        self.stem_preact = self.bn1(self.conv1(x))
        x = f0 = F.relu(self.stem_preact)
        feats, pres = [f0], [f0]
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = _last_of(layer, x)
            feats.append(x)
            pres.append(pre)
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).view(x.size(0), -1)
        return [*(pres if preact else feats), pooled], self.linear(pooled)


_VGG_CFG = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
_NARROW, _WIDE = (16, 16, 32, 64), (32, 64, 128, 256)

#: kdbench name → a builder of its re-typed reference (all 22 CIFAR architectures).
REFERENCES = {
    **{f"resnet{d}": (lambda d=d: RefResNet(d, _NARROW)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda: RefResNet(8, _WIDE),
    "resnet32x4": lambda: RefResNet(32, _WIDE),
    "ResNet50": lambda: RefResNetV2((3, 4, 6, 3)),
    **{f"wrn_{d}_{k}": (lambda d=d, k=k: RefWRN(d, k)) for d in (16, 40) for k in (1, 2)},
    **{f"vgg{n}": (lambda c=c: RefVGG(_VGG_CFG[c])) for n, c in ((8, "S"), (11, "A"), (13, "B"), (16, "D"), (19, "E"))},
    "MobileNetV2": RefMobileNetV2,
    "ShuffleV1": RefShuffleV1,
    "ShuffleV2": RefShuffleV2,
}

#: All four WRNs and ShuffleV2 (where kdbench's taps once differed), and one architecture of every other family.
TESTED = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "ShuffleV2", "resnet20", "resnet8x4", "vgg13"]
TESTED += ["MobileNetV2", "ShuffleV1", "ResNet50"]

# ---------------------------------------------------------------------------------------------------------------------
# Comparison


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: batches of four gain little from threads, and threads spin badly on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _host():
    modules = ("cifar_resnet", "cifar_resnet_bottleneck", "wrn", "vgg", "mobilenetv2", "shufflenetv1", "shufflenetv2")
    plugins = [(name, importlib.import_module(f"kdbench_plugins.models.{name}")) for name in modules]
    return create_plugin_host(entry_points=False, strict=True, plugins=plugins)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics, so that eval mode is no identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return model


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    """Return kdbench's model and its re-typed reference, with the same (randomised) state, in float64.

    Double precision keeps the comparison about the computation: random BN statistics blow deep nets' activations
    up to thousands, where float32 rounding of pooling kernels alone exceeds the tolerance.
    """
    torch.manual_seed(0)
    model = _randomised(create_model(name, host=_host()), seed=1).double()
    reference = REFERENCES[name]().double()
    reference.load_state_dict(model.state_dict(), strict=True)
    return model, reference


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    difference = (actual - expected).abs().max().item()
    assert difference <= TOLERANCE, f"{what}: max |difference| {difference:.3g}"


def _capture(model: nn.Module, images: torch.Tensor) -> Signals:
    with FeatureCapture(model, {"logits", "feats", "preact", "embedding", "pooled_map"}) as capture:
        return capture(images)


def _compare(signals: Signals, feats: list[torch.Tensor], logits: torch.Tensor, preacts: list[torch.Tensor]) -> None:
    """Compare kdbench's signals with a reference ``is_feat`` list, its logits and its ``preact=True`` list."""
    stages = len(feats) - 1
    assert len(signals.feats) == len(signals.preact) == stages
    _close(signals.logits, logits, "logits")
    _close(signals.embedding, feats[-1], "embedding")
    # The map SDD pools: the reference's pooled vector is its spatial mean (WRN: after the final BN + ReLU).
    _close(signals.pooled_map.mean(dim=(2, 3)), feats[-1], "pooled_map averaged")
    for k in range(stages):
        _close(signals.feats[k], feats[k], f"feats[{k}]")
    for k in range(1, stages):
        _close(signals.preact[k], preacts[k], f"preact[{k}]")


@pytest.mark.parametrize("name", TESTED)
def test_eval_taps_equal_the_reference(name: str) -> None:
    model, reference = _pair(name)
    model.eval()
    reference.eval()
    images = _images()
    with torch.no_grad():
        signals = _capture(model, images)
        feats, logits = reference(images, is_feat=True)
        stem_preact = reference.stem_preact
        preacts, _ = reference(images, is_feat=True, preact=True)
    _compare(signals, feats, logits, preacts)
    # preact[0]: kdbench's convention (the stem before its activation), where the references repeat f0.
    _close(signals.preact[0], stem_preact, "preact[0]")
    assert torch.equal(preacts[0], feats[0])


@pytest.mark.parametrize("name", TESTED)
def test_train_mode_taps_and_batchnorm_updates_equal_one_reference_forward(name: str) -> None:
    model, reference = _pair(name)
    twin = copy.deepcopy(reference)  # for the preact=True forward, which may update some BNs a second time
    for module in (model, reference, twin):
        module.train()
    images = _images()
    with torch.no_grad():
        signals = _capture(model, images)
        feats, logits = reference(images, is_feat=True)
        preacts, _ = twin(images, is_feat=True, preact=True)
    _compare(signals, feats, logits, preacts)
    _close(signals.preact[0], reference.stem_preact, "preact[0]")
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == expected[key].item() == 1, key
        elif "running" in key:
            _close(value, expected[key], key)
        else:
            assert torch.equal(value, expected[key]), f"{key} changed in a forward pass"
