"""The model-zoo plugins against the reference facts of the CIFAR KD zoo (shared/reference/models.md).

Every registered architecture is checked for exact parameter and state_dict
entry counts, feature-tap shapes and consistency (``relu(preact) == feats``, or
the model's documented relation where feature and preact come from different
modules), BN-before-ReLU names, a strict state_dict round trip and, for the cheaper
ones, fvcore MACs. The digits family gets the same checks plus a short
training run.
"""

from __future__ import annotations

import importlib
import time
import warnings
from functools import cache
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from kdbench_plugins.models.shufflenetv2 import channel_shuffle
from torch import nn

from kdbench import FeatureCapture, FeatureTaps, create_model, create_plugin_host

MODEL_PLUGINS = (
    "cifar_resnet",
    "cifar_resnet_bottleneck",
    "wrn",
    "vgg",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
    "digits_nets",
)


class Ref(NamedTuple):
    """Reference facts of one architecture (100 classes at 32×32; digits: 10 classes at 8×8)."""

    params: int
    entries: int
    macs_m: float | None
    """fvcore total MACs in millions at batch 1; None: too slow to count in a unit test."""
    stages: tuple[tuple[int, int, int], ...]
    embedding: int


_R16 = ((16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8))
_R64 = ((32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8))
_W2 = ((16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8))
_VGG = ((64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4))

#: models.md, row by row.
CIFAR_ZOO: dict[str, Ref] = {
    "resnet8": Ref(83_892, 56, 12.7, _R16, 64),
    "resnet14": Ref(181_108, 92, 26.9, _R16, 64),
    "resnet20": Ref(278_324, 128, 41.2, _R16, 64),
    "resnet32": Ref(472_756, 200, 69.8, _R16, 64),
    "resnet44": Ref(667_188, 272, 98.3, _R16, 64),
    "resnet56": Ref(861_620, 344, 126.8, _R16, 64),
    "resnet110": Ref(1_736_564, 668, None, _R16, 64),
    "resnet8x4": Ref(1_233_540, 62, 177.8, _R64, 256),
    "resnet32x4": Ref(7_433_860, 206, None, _R64, 256),
    "ResNet50": Ref(
        23_705_252, 320, None, ((64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)), 2048
    ),
    "wrn_16_1": Ref(180_916, 82, 26.9, _R16, 64),
    "wrn_16_2": Ref(703_284, 83, 101.6, _W2, 128),
    "wrn_40_1": Ref(569_780, 226, 84.0, _R16, 64),
    "wrn_40_2": Ref(2_255_156, 227, 329.0, _W2, 128),
    "vgg8": Ref(3_965_028, 37, 96.5, _VGG, 512),
    "vgg11": Ref(9_277_284, 58, 209.8, _VGG, 512),
    "vgg13": Ref(9_462_180, 72, 285.5, _VGG, 512),
    "vgg16": Ref(14_774_436, 93, None, _VGG, 512),
    "vgg19": Ref(20_086_692, 114, None, _VGG, 512),
    "MobileNetV2": Ref(812_836, 320, 6.9, ((16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)), 1280),
    "ShuffleV1": Ref(949_258, 296, 40.4, ((24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)), 960),
    "ShuffleV2": Ref(1_355_528, 338, 45.6, ((24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)), 1024),
}

#: kdbench's own digits family (measured once; the teacher must stay the largest).
DIGITS: dict[str, Ref] = {
    "digits_cnn_l": Ref(149_738, 38, None, ((32, 8, 8), (32, 8, 8), (64, 4, 4), (128, 2, 2)), 128),
    "digits_cnn_m": Ref(26_394, 26, None, ((16, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)), 64),
    "digits_cnn_s": Ref(6_866, 26, None, ((8, 8, 8), (8, 8, 8), (16, 4, 4), (32, 2, 2)), 32),
}

_RB = ((64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4))
_RN = ((64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4))

#: The rest of the reference zoo's resnetv2 family (seed 000's ResNet-18…101, seed 001's ResNet-34 teacher).
#: Not in models.md; parameter counts as commonly reported for these CIFAR-100 models (11.22 M, 21.33 M, 42.70 M).
RESNETV2: dict[str, Ref] = {
    "ResNet18": Ref(11_220_132, 122, None, _RB, 512),
    "ResNet34": Ref(21_328_292, 218, None, _RB, 512),
    "ResNet101": Ref(42_697_380, 626, None, _RN, 2048),
}

REFERENCE = {**CIFAR_ZOO, **RESNETV2, **DIGITS}
ALL = sorted(REFERENCE)

#: Models without a BatchNorm feeding each whole stage (the reference raises in get_bn_before_relu).
NO_BN_BEFORE_RELU = {"ShuffleV2"}

#: Models that name separate preact taps: ShuffleV2 (preact before the channel shuffle), the WRNs (raw features).
SEPARATE_PREACT = {"ShuffleV2", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: batches of two gain little from threads, and threads spin badly on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def host():
    """Return a plugin host built from the model modules themselves (no installed entry points needed)."""
    plugins = [(name, importlib.import_module(f"kdbench_plugins.models.{name}")) for name in MODEL_PLUGINS]
    return create_plugin_host(entry_points=False, strict=True, plugins=plugins)


@cache
def built(name: str) -> nn.Module:
    """Return one shared eval-mode instance of ``name`` (tests must not modify it)."""
    torch.manual_seed(0)
    return create_model(name, host=host()).eval()


def _input(name: str, batch: int = 2, size: int | None = None) -> torch.Tensor:
    channels, height, width = host().models.get(name).input_size
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, channels, size or height, size or width, generator=generator)


def _num_classes(name: str) -> int:
    return host().models.get(name).default_num_classes


def test_registry_is_exactly_the_reference_table() -> None:
    models = host().models
    assert set(models.names()) == set(REFERENCE)
    assert set(models.names()) - set(DIGITS) - set(RESNETV2) == set(CIFAR_ZOO)
    for name in CIFAR_ZOO:
        spec = models.get(name)
        assert (spec.input_size, spec.default_num_classes) == ((3, 32, 32), 100)
        assert "cifar" in spec.tags and spec.citation and spec.description
    for name in DIGITS:
        spec = models.get(name)
        assert (spec.input_size, spec.default_num_classes, spec.tags) == ((1, 8, 8), 10, ("digits",))


@pytest.mark.parametrize("name", ALL)
def test_parameter_and_state_dict_counts(name: str) -> None:
    model = built(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE[name].params
    assert len(model.state_dict()) == REFERENCE[name].entries


@pytest.mark.parametrize("name", ALL)
def test_feature_taps_shapes_and_preact(name: str) -> None:
    model, ref = built(name), REFERENCE[name]
    taps = model.feature_taps
    assert isinstance(taps, FeatureTaps)
    modules = dict(model.named_modules())
    with FeatureCapture(model, {"feats", "preact", "embedding"}) as capture, torch.no_grad():
        first = capture(_input(name, batch=1))
        signals = capture(_input(name))  # a capture serves every forward while it is open
    assert [t.shape[0] for t in (*first.feats, *first.preact)] == [1] * (2 * len(ref.stages))
    assert signals.logits.shape == (2, _num_classes(name))
    assert [tuple(f.shape[1:]) for f in signals.feats] == list(ref.stages)
    assert [tuple(p.shape[1:]) for p in signals.preact] == list(ref.stages)
    assert signals.embedding is not None and signals.embedding.shape == (2, ref.embedding)
    assert bool(taps.preact) == (name in SEPARATE_PREACT)
    for k, (stage, feat, preact) in enumerate(zip(taps.stages, signals.feats, signals.preact)):
        tap = modules[taps.preact_modules[k]]
        if isinstance(tap, nn.ReLU):
            assert not tap.inplace, f"{stage} is an inplace ReLU: it would overwrite the preact"
            assert (preact < 0).any(), f"{stage}: preact has no negative value, so it is not before the ReLU"
            activated = torch.relu(preact)
        else:
            assert isinstance(tap, nn.Identity), f"{stage}: a preact tap must be a ReLU or an Identity"
            activated = preact
        if taps.preact_modules[k] == stage:
            assert torch.equal(activated, feat), stage
        elif name == "ShuffleV2":  # the reference's preact is the concatenation before the channel shuffle
            assert torch.equal(channel_shuffle(activated), feat), stage
        else:  # a WRN stage ends raw; the next unit's BN (in eval mode here) and ReLU activate it
            assert torch.equal(preact, modules[taps.bn_before_relu[k]](feat)), stage
            assert not torch.equal(activated, feat), stage
    assert len(list(modules[taps.classifier].parameters())) > 0


@pytest.mark.parametrize("name", ALL)
def test_bn_before_relu_names_batchnorms_of_stage_width(name: str) -> None:
    model = built(name)
    taps = model.feature_taps
    if name in NO_BN_BEFORE_RELU:
        assert taps.bn_before_relu == ()
        return
    assert len(taps.bn_before_relu) == len(taps.stages)
    modules = dict(model.named_modules())
    for bn_name, (channels, _, _) in zip(taps.bn_before_relu, REFERENCE[name].stages):
        bn = modules[bn_name]
        assert isinstance(bn, nn.BatchNorm2d), bn_name
        assert bn.num_features == channels, bn_name


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(1)
    source = create_model(name, host=host())
    torch.manual_seed(2)
    target = create_model(name, host=host())
    before = {key: value.clone() for key, value in target.state_dict().items()}
    target.load_state_dict(source.state_dict(), strict=True)
    assert any(not torch.equal(before[k], v) for k, v in source.state_dict().items())
    x = _input(name)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def _keys(name: str) -> list[str]:
    return list(built(name).state_dict())


def test_reference_key_names() -> None:
    assert _keys("resnet8x4")[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    resnet = set(_keys("resnet8x4"))
    assert {"layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.bn2.running_var", "fc.weight"} <= resnet
    assert {"layer1.0.downsample.0.weight", "layer2.0.downsample.1.bias"} & set(_keys("resnet8")) == {
        "layer2.0.downsample.1.bias"
    }
    assert {"layer4.2.conv3.weight", "layer1.0.shortcut.0.weight", "linear.bias"} <= set(_keys("ResNet50"))
    wrn = set(_keys("wrn_16_2"))
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight", "bn1.weight"} <= wrn
    assert "fc.weight" in wrn and "block1.layer.0.convShortcut.weight" not in set(_keys("wrn_16_1"))
    vgg = _keys("vgg13")
    assert vgg[:2] == ["block0.0.weight", "block0.0.bias"] and vgg[-2:] == ["classifier.weight", "classifier.bias"]
    assert "block4.4.running_var" in vgg and "block0.1.weight" in _keys("vgg8")
    assert {"conv1.0.weight", "blocks.6.0.conv.7.weight", "conv2.1.weight", "classifier.0.weight"} <= set(
        _keys("MobileNetV2")
    )
    assert {"layer1.0.conv3.weight", "layer3.3.bn3.weight", "linear.weight"} <= set(_keys("ShuffleV1"))
    assert {"layer1.0.conv5.weight", "layer3.3.bn3.weight", "conv2.weight", "bn2.weight"} <= set(_keys("ShuffleV2"))
    for name in ALL:  # taps add modules but never state_dict entries
        assert not any(part in key for key in _keys(name) for part in ("relu", "linear_out"))


CHEAP = [name for name in sorted(CIFAR_ZOO) if CIFAR_ZOO[name].macs_m is not None]


@pytest.mark.parametrize("name", CHEAP)
def test_fvcore_macs(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and tracer warn about deprecated torch.jit APIs
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(built(name), _input(name, batch=1))
        total = analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
    assert total / 1e6 == pytest.approx(CIFAR_ZOO[name].macs_m, rel=0.01)


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("ShuffleV2", ((24, 64, 64), (116, 32, 32), (232, 16, 16), (464, 8, 8))),
        ("ShuffleV1", ((24, 64, 64), (240, 32, 32), (480, 16, 16), (960, 8, 8))),
        ("MobileNetV2", ((16, 32, 32), (12, 32, 32), (16, 16, 16), (48, 8, 8), (160, 4, 4))),
        ("resnet8", ((16, 64, 64), (16, 64, 64), (32, 32, 32), (64, 16, 16))),
        ("vgg8", ((64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4))),
    ],
)
def test_64px_inputs(name: str, stages: tuple[tuple[int, int, int], ...]) -> None:
    """64×64 (Tiny-ImageNet size) works: pooling adapts instead of breaking the classifier."""
    with FeatureCapture(built(name), {"feats", "embedding"}) as capture, torch.no_grad():
        signals = capture(_input(name, size=64))
    assert signals.logits.shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in signals.feats] == list(stages)
    assert signals.embedding is not None and signals.embedding.shape == (2, CIFAR_ZOO[name].embedding)


def test_num_classes_is_honoured() -> None:
    for name in ("resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "digits_cnn_s"):
        model = create_model(name, 7, host=host()).eval()
        with torch.no_grad():
            assert model(_input(name)).shape == (2, 7)


def test_digits_teacher_is_largest() -> None:
    params = {name: sum(p.numel() for p in built(name).parameters()) for name in DIGITS}
    assert params["digits_cnn_l"] > params["digits_cnn_m"] > params["digits_cnn_s"]
    assert 100_000 <= params["digits_cnn_l"] <= 200_000
    assert 2_000 <= params["digits_cnn_s"] < params["digits_cnn_m"] <= 30_000


def _digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return normalised float train/test images and labels, from the kdbench dataset or scikit-learn."""
    try:
        from kdbench_plugins.datasets.digits import load_digits

        data = load_digits()
        train, test = data.train_images.float() / 255, data.test_images.float() / 255
        train_y, test_y = data.train_labels, data.test_labels
    except Exception:
        datasets = pytest.importorskip("sklearn.datasets")
        raw = datasets.load_digits()
        images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16
        labels = torch.tensor(raw.target, dtype=torch.int64)
        is_test = torch.arange(len(labels)) % 5 == 2
        train, test, train_y, test_y = images[~is_test], images[is_test], labels[~is_test], labels[is_test]
    mean, std = train.mean(), train.std()
    return (train - mean) / std, train_y, (test - mean) / std, test_y


@pytest.mark.parametrize("name", ["digits_cnn_l", "digits_cnn_s"])
def test_digits_models_train_quickly(name: str) -> None:
    train, train_y, test, test_y = _digits_data()
    torch.manual_seed(0)
    model = create_model(name, host=host())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    epoch_times = []
    for _ in range(4):
        model.train()
        start = time.perf_counter()
        for batch in torch.randperm(len(train_y), generator=generator).split(64):
            loss = F.cross_entropy(model(train[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.9
    assert min(epoch_times) < 1.5  # ~0.35 s (teacher) on one idle core; loose for busy CI machines
