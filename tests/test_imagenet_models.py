"""The ImageNet zoo equals its references: torchvision's ResNets (state dicts, logits) and MDistiller's MobileNetV1.

MobileNetV1's reference is re-typed below from MDistiller's ``mdistiller/models/imagenet/mobilenetv1.py``
(megvii-research/mdistiller @fae6658) for the comparison only: same modules, same forward, same taps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import kdbench
from kdbench.features import FeatureCapture
from kdbench.testing import check_model

#: torchvision's documented ``num_params`` of each ``IMAGENET1K_V1`` model (1000 classes).
PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_resnets_have_torchvisions_parameters_and_load_its_state_dict_strictly(host, name: str) -> None:
    ours = kdbench.create_model(name, 1000, host=host).eval()
    assert sum(p.numel() for p in ours.parameters()) == PARAMETERS[name]
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_resnet_taps_are_the_stem_and_stage_outputs(host) -> None:
    model = kdbench.create_model("resnet18", 1000, host=host).eval()
    with torch.no_grad(), FeatureCapture(model, {"feats", "preact", "embedding", "pooled_map"}) as capture:
        signals = capture(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
    assert [tuple(t.shape[1:]) for t in signals.feats] == [(64, 112, 112), (64, 56, 56), (128, 28, 28),
                                                           (256, 14, 14), (512, 7, 7)]  # fmt: skip
    for feat, preact in zip(signals.feats, signals.preact):
        assert torch.equal(feat, torch.relu(preact))
    assert torch.allclose(signals.pooled_map.mean(dim=(2, 3)), signals.embedding)


class ReferenceMobileNetV1(nn.Module):
    """MDistiller's MobileNetV1, re-typed for this comparison (its in-place ReLUs and AvgPool2d(7) kept)."""

    def __init__(self) -> None:
        super().__init__()

        def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(True))

        def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(True),
                nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(True),
            )  # fmt: skip

        widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
        widths += [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
        self.model = nn.Sequential(conv_bn(3, 32, 2), *(conv_dw(*w) for w in widths), nn.AvgPool2d(7))
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        feat1 = self.model[3][:-1](self.model[0:3](x))
        feat2 = self.model[5][:-1](self.model[4:5](F.relu(feat1)))
        feat3 = self.model[11][:-1](self.model[6:11](F.relu(feat2)))
        feat4 = self.model[13][:-1](self.model[12:13](F.relu(feat3)))
        avg = self.model[14](F.relu(feat4)).reshape(-1, 1024)
        feats = [F.relu(f) for f in (feat1, feat2, feat3, feat4)]
        return self.fc(avg), {"pooled_feat": avg, "feats": feats, "preact_feats": [feat1, feat2, feat3, feat4]}


def test_mobilenetv1_equals_mdistillers_under_the_same_weights(host) -> None:
    ours = kdbench.create_model("MobileNetV1", 1000, host=host).eval()
    assert sum(p.numel() for p in ours.parameters()) == 4_231_976
    torch.manual_seed(0)
    reference = ReferenceMobileNetV1().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), FeatureCapture(ours, {"feats", "preact", "embedding"}) as capture:
        signals = capture(x)
        logits, feats = reference(x)
    torch.testing.assert_close(signals.logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(signals.embedding, feats["pooled_feat"], rtol=0, atol=1e-6)
    for name, taps in (("feats", signals.feats), ("preact_feats", signals.preact)):
        for got, expected in zip(taps, feats[name], strict=True):
            assert torch.equal(got, expected), name


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "MobileNetV1"])
def test_imagenet_models_pass_the_plugin_kit(host, name: str) -> None:
    check_model(name, host=host)
