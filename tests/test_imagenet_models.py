"""The ImageNet zoo equals its references: torchvision's ResNets and MobileNetV2 (state dicts, logits) and
MDistiller's MobileNetV1.

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
PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
              "mobilenet_v2": 3_504_872}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_models_have_torchvisions_parameters_and_load_its_state_dict_strictly(host, name: str) -> None:
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


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "MobileNetV1", "mobilenet_v2"])
def test_imagenet_models_pass_the_plugin_kit(host, name: str) -> None:
    check_model(name, host=host)


# --- teachers: torchvision's IMAGENET1K_V1 files, from --teacher-root or torch's hub cache ---------------------------


def test_torchvision_v1_teachers_are_named_explicitly_with_their_published_top1(host) -> None:
    specs = {spec.model: spec for spec in host.teachers if spec.name.endswith("@torchvision-v1")}
    assert {name: (s.path, s.reported_top1) for name, s in specs.items()} == {
        "resnet18": ("resnet18-f37072fd.pth", 69.758),
        "resnet34": ("resnet34-b627a593.pth", 73.314),
        "resnet50": ("resnet50-0676ba61.pth", 76.130),  # V1: V2 (the DEFAULT) would be 80.858
        "resnet101": ("resnet101-63fe2227.pth", 77.374),
    }
    assert all(s.sha256 == s.path.removesuffix(".pth").split("-")[1] and s.state_key == "" for s in specs.values())


def test_a_teacher_file_is_found_in_torchs_hub_cache_and_its_digest_checked(
    host, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from kdbench import TeacherSpec, hookimpl
    from kdbench.errors import CheckpointError
    from kdbench.weights import find_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    weights = kdbench.create_model("resnet18", 1000, host=host).state_dict()
    torch.save(weights, cache / "resnet18-f37072fd.pth")  # torchvision's name, not torchvision's bytes
    with pytest.raises(CheckpointError, match="does not match its published sha256 f37072fd"):
        find_checkpoint("resnet18@torchvision-v1", host, tmp_path / "teachers")
    prefix = hashlib.sha256((cache / "resnet18-f37072fd.pth").read_bytes()).hexdigest()[:8]
    (cache / "resnet18-f37072fd.pth").rename(cache / f"mine-{prefix}.pth")

    class Mine:
        @hookimpl
        def kdbench_register_teachers(self):
            return [TeacherSpec(name="resnet18@mine", model="resnet18", dataset="imagenet", path=f"mine-{prefix}.pth",
                                state_key="", sha256=prefix)]  # fmt: skip

    mine = kdbench.create_plugin_host(plugins=[("mine", Mine())])
    model = kdbench.create_model("resnet18", 1000, weights="resnet18@mine", teacher_root=tmp_path / "none", host=mine)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(CheckpointError, match=r"nor in torch's hub cache"):
        find_checkpoint("resnet34@torchvision-v1", host, tmp_path / "teachers")
