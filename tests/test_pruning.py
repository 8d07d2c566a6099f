"""Pruning: torch-pruning wiring, MACs reductions, guards, pruner plugins, SSA importance, pruned-model files."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import kdbench
from kdbench.errors import CheckpointError, KdbenchError
from kdbench.profile import count_macs
from kdbench.pruning import (
    DEFAULT_TARGET_STEPS,
    Calibration,
    PruneSettings,
    calibration_from_batches,
    describe_architecture,
    load_pruned,
    prune_model,
    prune_structured,
    save_pruned,
    sparsity,
)

PRUNER_MODULES = ("magnitude", "taylor", "bn_scale", "random_channels", "lamp", "ssa", "l1_unstructured")
SIZE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """Run single-threaded: these tiny CPU tensors are slower with two threads, many times so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def host() -> kdbench.PluginHost:
    """The installed plugins, with the pruner plugins registered in code if their entry points are not installed."""
    installed = kdbench.create_plugin_host(strict=True)
    if "l1" in installed.pruners:
        return installed
    modules = [(name, importlib.import_module(f"kdbench_plugins.pruners.{name}")) for name in PRUNER_MODULES]
    return kdbench.create_plugin_host(strict=True, plugins=modules)


def fresh(host: kdbench.PluginHost, arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return kdbench.create_model(arch, 100, host=host)


def example() -> torch.Tensor:
    return torch.randn(1, *SIZE)


def calibration(batches: int = 2) -> Calibration:
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, *SIZE, generator=generator), torch.randint(0, 100, (8,), generator=generator))]
    return calibration_from_batches(data * batches)


def l1_importance() -> object:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1)


def reduction_of(host: kdbench.PluginHost, arch: str, settings: PruneSettings, pruner: str = "l1") -> float:
    model = fresh(host, arch)
    before = count_macs(model, SIZE)
    prune_model(host, model, pruner, {}, example(), settings)
    return before / count_macs(model, SIZE)


# ---------------------------------------------------------------------------------------------------------------------
# Settings


def test_settings_need_exactly_one_target() -> None:
    with pytest.raises(KdbenchError, match="exactly one"):
        PruneSettings()
    with pytest.raises(KdbenchError, match="exactly one"):
        PruneSettings(ratio=0.5, target_macs_reduction=2.0)
    with pytest.raises(KdbenchError, match="between 0 and 1"):
        PruneSettings(ratio=1.0)
    with pytest.raises(KdbenchError, match="above 1"):
        PruneSettings(target_macs_reduction=0.5)
    with pytest.raises(KdbenchError, match="round_to"):
        PruneSettings(ratio=0.5, round_to=0)
    assert PruneSettings(ratio=0.5).steps == 1
    assert PruneSettings(target_macs_reduction=2.0).steps == DEFAULT_TARGET_STEPS
    assert PruneSettings(ratio=0.5, ignored=["fc"]).ignored == ("fc",)


# ---------------------------------------------------------------------------------------------------------------------
# Structured pruning: shapes, MACs, classifier, ignored layers


@pytest.mark.parametrize("arch", ["resnet56", "resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2"])
def test_pruned_models_forward_with_consistent_taps(host: kdbench.PluginHost, arch: str) -> None:
    model = fresh(host, arch)
    params = sum(p.numel() for p in model.parameters())
    prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5))
    assert sum(p.numel() for p in model.parameters()) < params / 2
    taps = model.feature_taps
    with kdbench.FeatureCapture(model.eval(), {"feats", "preact", "embedding"}) as capture:
        signals = capture(torch.randn(2, *SIZE))
    assert signals.logits.shape == (2, 100)
    linear = next(m for m in model.get_submodule(taps.classifier).modules() if isinstance(m, nn.Linear))
    assert signals.embedding.shape == (2, linear.in_features)
    for feat, preact, bn in zip(signals.feats, signals.preact, taps.bn_before_relu):
        assert feat.shape == preact.shape
        assert feat.shape[1] == model.get_submodule(bn).num_features


def test_shufflenet_v1_is_refused_not_broken(host: kdbench.PluginHost) -> None:
    # Grouped 1×1 convolutions fed by concatenations and channel shuffles: torch-pruning 1.6
    # would crash or silently mis-wire them, so every group is refused and the model kept.
    model = fresh(host, "ShuffleV1")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KdbenchError, match="grouped convolution.*channel shuffle|channel shuffle.*grouped"):
        prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(torch.randn(2, *SIZE)).shape == (2, 100)


@pytest.mark.parametrize("arch", ["resnet20", "MobileNetV2", "wrn_16_2"])
def test_pruning_dead_channels_keeps_the_function(host: kdbench.PluginHost, arch: str) -> None:
    # Channels whose BN scale and shift are zero contribute nothing; bn_scale removes them
    # first, so the pruned network must compute exactly what the original did.
    model = fresh(host, arch).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            dead = -(-6 * module.num_features // 10)
            module.weight.data[:dead] = 0
            module.bias.data[:dead] = 0
    images = torch.randn(4, *SIZE)
    with torch.no_grad():
        reference = model(images)
    prune_model(host, model, "bn_scale", {}, example(), PruneSettings(ratio=0.5, round_to=None))
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference, atol=1e-5, rtol=1e-5)


def test_published_macs_reductions(host: kdbench.PluginHost) -> None:
    # Published: resnet56 at channel ratio 0.5 ≈ 3.9×, resnet8x4 at 0.3 ≈ 2.07× (no round_to).
    resnet56 = reduction_of(host, "resnet56", PruneSettings(ratio=0.5, round_to=None))
    assert 3.5 <= resnet56 <= 4.3
    resnet8x4 = reduction_of(host, "resnet8x4", PruneSettings(ratio=0.3, round_to=None))
    assert 2.0 <= resnet8x4 <= 2.15
    # round_to=8 keeps whole multiples of 8 channels: fewer channels survive, MACs fall further.
    assert reduction_of(host, "resnet8x4", PruneSettings(ratio=0.3, round_to=8)) > resnet8x4


def test_target_macs_reduction_stops_at_the_first_step_reaching_it(host: kdbench.PluginHost) -> None:
    model = fresh(host, "resnet20")
    before = count_macs(model, SIZE)
    seen: list[float] = []
    settings = PruneSettings(target_macs_reduction=2.0, iterative_steps=20, round_to=None)
    prune_structured(
        model, l1_importance(), example(), settings, on_step=lambda _step, reduction: seen.append(reduction)
    )
    assert seen[-1] >= 2.0
    assert len(seen) == 1 or seen[-2] < 2.0
    assert seen[-1] < 2.0 * 1.25  # one step of 5 % of the channels
    assert before / count_macs(model, SIZE) == pytest.approx(seen[-1])


def test_unreachable_target_is_an_error(host: kdbench.PluginHost) -> None:
    with pytest.raises(KdbenchError, match="short of 1000"):
        prune_model(
            host,
            fresh(host, "resnet8"),
            "l1",
            {},
            example(),
            PruneSettings(target_macs_reduction=1000, iterative_steps=3),
        )


def test_classifier_keeps_its_outputs_and_weights(host: kdbench.PluginHost) -> None:
    model = fresh(host, "resnet20")
    weight, bias = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
    prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5, round_to=None))
    assert model.fc.out_features == 100
    assert model.fc.in_features == 32
    torch.testing.assert_close(model.fc.bias, bias, rtol=0, atol=0)
    # Every surviving input column is an original column, in order (only embedding channels went).
    columns = [int((weight - column[:, None]).abs().sum(0).argmin()) for column in model.fc.weight.detach().T]
    assert columns == sorted(set(columns))
    torch.testing.assert_close(model.fc.weight, weight[:, columns], rtol=0, atol=0)


def test_named_ignored_layers_are_untouched(host: kdbench.PluginHost) -> None:
    model = fresh(host, "resnet20")
    kept = ("layer2.1.conv1", "layer1.0.bn1")
    originals = {name: model.get_submodule(name).weight.detach().clone() for name in kept}
    prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5, round_to=None, ignored=kept))
    for name in kept:
        torch.testing.assert_close(model.get_submodule(name).weight, originals[name], rtol=0, atol=0)
    assert model.layer2[0].conv1.out_channels == 16  # the rest is pruned
    with pytest.raises(KdbenchError, match="no module 'layer9'"):
        prune_model(host, fresh(host, "resnet8"), "l1", {}, example(), PruneSettings(ratio=0.5, ignored=("layer9",)))


def test_train_eval_modes_are_restored(host: kdbench.PluginHost) -> None:
    model = fresh(host, "resnet8").train()
    model.layer1.eval()
    prune_model(host, model, "taylor", {}, example(), PruneSettings(ratio=0.5, iterative_steps=2), calibration())
    assert model.training and not model.layer1.training and not model.layer1[0].bn1.training
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Gradient criteria


@pytest.mark.parametrize("pruner", ["taylor", "ssa"])
def test_gradient_pruners_need_calibration(host: kdbench.PluginHost, pruner: str) -> None:
    with pytest.raises(KdbenchError, match="calibration"):
        prune_model(host, fresh(host, "resnet8"), pruner, {}, example(), PruneSettings(ratio=0.5))
    with pytest.raises(KdbenchError, match="no gradient"):
        prune_model(host, fresh(host, "resnet8"), pruner, {}, example(), PruneSettings(ratio=0.5), lambda _m: None)


def test_calibration_runs_before_every_step(host: kdbench.PluginHost) -> None:
    calls: list[int] = []
    inner = calibration(1)

    def counting(model: nn.Module) -> None:
        calls.append(1)
        inner(model)

    settings = PruneSettings(ratio=0.5, iterative_steps=3, round_to=None)
    prune_model(host, fresh(host, "resnet8"), "ssa", {"theta": 0.3}, example(), settings, counting)
    assert len(calls) == 3


def independent_ssa(weight: torch.Tensor, grad: torch.Tensor, theta: float) -> torch.Tensor:
    """SSA-KD's score written out filter by filter: θ·T/‖T‖₂ + (1−θ)·M/‖M‖₂, T = Σ|w·g|, M = (Σw²)²."""
    taylor, magnitude = [], []
    for c in range(weight.shape[0]):
        taylor.append(sum(abs(float(w) * float(g)) for w, g in zip(weight[c].flatten(), grad[c].flatten())))
        magnitude.append(sum(float(w) ** 2 for w in weight[c].flatten()) ** 2)
    t_norm = sum(t * t for t in taylor) ** 0.5
    m_norm = sum(m * m for m in magnitude) ** 0.5
    return torch.tensor([theta * t / t_norm + (1 - theta) * m / m_norm for t, m in zip(taylor, magnitude)])


def test_ssa_scores_equal_an_independent_computation() -> None:
    from kdbench_plugins.pruners.ssa import ssa_scores

    generator = torch.Generator().manual_seed(3)
    weight, grad = torch.randn(6, 3, 3, 3, generator=generator), torch.randn(6, 3, 3, 3, generator=generator) * 1e-3
    for theta in (0.0, 0.5, 0.8, 1.0):
        expected = independent_ssa(weight, grad, theta).float()
        torch.testing.assert_close(ssa_scores(weight, grad, theta), expected, rtol=1e-5, atol=1e-7)


def test_ssa_importance_scores_a_conv_group() -> None:
    import torch_pruning as tp
    from kdbench_plugins.pruners.ssa import SSAImportance

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))
    conv = model[0]
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(6)))
    scores = SSAImportance(theta=0.5)(group)
    expected = independent_ssa(conv.weight.detach(), conv.weight.grad, 0.5).float()
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Every registered pruner through prune_model


def test_every_pruner_is_registered(host: kdbench.PluginHost) -> None:
    expected = {"l1", "l2", "taylor", "bn_scale", "random", "lamp", "ssa", "l1_unstructured"}
    assert expected <= set(host.pruners.names())
    for name in expected:
        spec = host.pruners.get(name)
        assert spec.citation and spec.description
        assert spec.structured == (name != "l1_unstructured")


@pytest.mark.parametrize("pruner", ["l1", "l2", "taylor", "bn_scale", "random", "lamp", "ssa", "l1_unstructured"])
def test_each_pruner_prunes_resnet20(host: kdbench.PluginHost, pruner: str) -> None:
    model = fresh(host, "resnet20")
    before = count_macs(model, SIZE)
    settings = PruneSettings(ratio=0.4, global_pruning=pruner == "lamp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune_model(host, model, pruner, {}, example(), settings, calibration())
    assert not [w for w in caught if "left unpruned" in str(w.message)]  # no group of a plain ResNet is refused
    assert model(torch.randn(2, *SIZE)).shape == (2, 100)
    if host.pruners.get(pruner).structured:
        assert count_macs(model, SIZE) < before
    else:
        assert count_macs(model, SIZE) == before
        assert sparsity(model, exclude_classifier=True) == pytest.approx(0.4, abs=1e-3)


def test_random_pruner_is_seeded(host: kdbench.PluginHost) -> None:
    def kept(seed: int) -> torch.Tensor:
        model = fresh(host, "resnet8")
        prune_model(host, model, "random", {"seed": seed}, example(), PruneSettings(ratio=0.5, round_to=None))
        return model.layer1[0].conv1.weight.detach()

    torch.testing.assert_close(kept(0), kept(0), rtol=0, atol=0)


def test_unknown_pruner_params_are_an_error(host: kdbench.PluginHost) -> None:
    with pytest.raises(KdbenchError, match="does not accept"):
        prune_model(host, fresh(host, "resnet8"), "l1", {"theta": 1}, example(), PruneSettings(ratio=0.5))
    with pytest.raises(KdbenchError, match="group_reduction"):
        prune_model(
            host, fresh(host, "resnet8"), "l1", {"group_reduction": "median"}, example(), PruneSettings(ratio=0.5)
        )


# ---------------------------------------------------------------------------------------------------------------------
# Unstructured


def test_l1_unstructured_reaches_sparsity_and_keeps_the_classifier_dense(host: kdbench.PluginHost) -> None:
    model = fresh(host, "resnet20")
    classifier = model.fc.weight.detach().clone()
    keys = set(model.state_dict())
    prune_model(host, model, "l1_unstructured", {}, example(), PruneSettings(ratio=0.7))
    assert sparsity(model, exclude_classifier=True) == pytest.approx(0.7, abs=1e-3)
    assert sparsity(model) < 0.7
    torch.testing.assert_close(model.fc.weight, classifier, rtol=0, atol=0)
    assert set(model.state_dict()) == keys  # permanent: no weight_orig / weight_mask left
    assert not any(module._forward_pre_hooks for module in model.modules())
    with pytest.raises(KdbenchError, match="leaves MACs unchanged"):
        prune_model(
            host, fresh(host, "resnet8"), "l1_unstructured", {}, example(), PruneSettings(target_macs_reduction=2)
        )


# ---------------------------------------------------------------------------------------------------------------------
# Saving and reloading without the pruned class


@pytest.mark.parametrize("arch", ["resnet56", "resnet32x4", "resnet8x4", "wrn_40_2", "vgg13", "MobileNetV2"])
def test_save_and_reload_give_identical_outputs(host: kdbench.PluginHost, arch: str, tmp_path: Path) -> None:
    model = fresh(host, arch)
    prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5))
    description = describe_architecture(model)
    assert json.loads(json.dumps(description)) == description
    path = tmp_path / "pruned.pt"
    save_pruned(model, arch, 100, path)
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_pruned(path, host)
    images = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model.eval()(images), rtol=0, atol=0)
    assert describe_architecture(loaded) == description


def test_depthwise_groups_are_recorded(host: kdbench.PluginHost) -> None:
    model = fresh(host, "MobileNetV2")
    prune_model(host, model, "l1", {}, example(), PruneSettings(ratio=0.5))
    entry = describe_architecture(model)["blocks.1.0.conv.3"]["kwargs"]
    assert entry["groups"] == entry["in_channels"] == entry["out_channels"] < 96


def test_load_pruned_rejects_foreign_files(host: kdbench.PluginHost, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_pruned(tmp_path / "missing.pt", host)
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="kdbench-pruned-1"):
        load_pruned(tmp_path / "plain.pt", host)
