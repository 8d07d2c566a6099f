"""Pruners on torch-pruning: shapes, MACs reductions, classifier, SSA importance, save/reload."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from kdbench_plugins.pruners.ssa import ssa_scores

import kdbench
from kdbench.errors import KdbenchError
from kdbench.features import FeatureCapture
from kdbench.profile import count_macs
from kdbench.pruning import PruneSettings, load_pruned, prune_model, save_pruned, sparsity

X = torch.zeros(1, 3, 32, 32)


def _pruned(host, arch: str, pruner: str = "l1", **settings) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    original = kdbench.create_model(arch, host=host).eval()
    model = kdbench.create_model(arch, host=host).eval()
    model.load_state_dict(original.state_dict())
    return original, prune_model(host, model, pruner, {}, X, PruneSettings(**settings))


@pytest.mark.parametrize(("arch", "ratio", "low", "high"), [("resnet56", 0.5, 3.5, 4.3), ("resnet8x4", 0.3, 1.9, 2.2)])
def test_macs_fall_as_published(host, arch: str, ratio: float, low: float, high: float) -> None:
    # Torch-Pruning's CIFAR numbers prune each layer's channels without rounding: resnet56 at 0.5 ≈ 3.9×,
    # resnet8x4 at 0.3 ≈ 2.07× fewer MACs.
    original, pruned = _pruned(host, arch, ratio=ratio, round_to=None)
    reduction = count_macs(original, (3, 32, 32)) / count_macs(pruned, (3, 32, 32))
    assert low < reduction < high


@pytest.mark.parametrize("arch", ["resnet56", "resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2"])
def test_pruned_models_forward_with_consistent_shapes_and_untouched_classifier(host, arch: str) -> None:
    original, pruned = _pruned(host, arch, ratio=0.3)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    linear = [
        m for m in pruned.get_submodule(pruned.feature_taps.classifier).modules() if isinstance(m, torch.nn.Linear)
    ]
    assert linear[-1].out_features == 100
    with FeatureCapture(pruned, {"feats", "preact", "embedding"}) as capture:
        signals = capture(torch.randn(2, 3, 32, 32))
    assert signals.embedding.shape[1] == linear[0].in_features
    assert all(f.shape == p.shape for f, p in zip(signals.feats, signals.preact))


def test_channel_shuffle_models_are_refused_with_a_reason(host) -> None:
    # torch-pruning maps ShuffleNet's channel shuffle as the identity: pruning it would be silently wrong.
    with pytest.raises(KdbenchError, match="channel shuffle"):
        _pruned(host, "ShuffleV1", ratio=0.3)


def test_target_macs_reduction_is_reached(host) -> None:
    original, pruned = _pruned(host, "resnet20", target_macs_reduction=2.0)
    assert count_macs(original, (3, 32, 32)) / count_macs(pruned, (3, 32, 32)) >= 2.0


def test_ignored_layers_are_not_pruned(host) -> None:
    original, pruned = _pruned(host, "resnet20", ratio=0.5, ignored=("layer3.2.conv1",))
    assert pruned.get_submodule("layer3.2.conv1").out_channels == original.get_submodule("layer3.2.conv1").out_channels


def test_ssa_importance_equals_an_independent_computation() -> None:
    # The SSA-KD authors' pruneutil.py: T_c = Σ|w·g|, M_c = (Σ w²)² (k = p = 2), each divided by the L2 norm
    # of the layer's scores, mixed with θ = 0.5.
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64)
    grad = torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64)
    rows = [(weight[c].flatten().tolist(), grad[c].flatten().tolist()) for c in range(6)]
    taylor = [sum(abs(w * g) for w, g in zip(ws, gs)) for ws, gs in rows]
    magnitude = [sum(w * w for w in ws) ** 2 for ws, _ in rows]
    t_norm, m_norm = math.sqrt(sum(t * t for t in taylor)), math.sqrt(sum(m * m for m in magnitude))
    expected = [0.5 * t / t_norm + 0.5 * m / m_norm for t, m in zip(taylor, magnitude)]
    got = ssa_scores(weight, grad, theta=0.5)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert ssa_scores(weight, grad, theta=1.0).tolist() == pytest.approx([t / t_norm for t in taylor], rel=1e-6)


def test_gradient_pruners_need_calibration(host) -> None:
    model = kdbench.create_model("resnet20", host=host)
    with pytest.raises(KdbenchError):
        prune_model(host, model, "taylor", {}, X, PruneSettings(ratio=0.3))


def test_save_reload_weights_only_gives_identical_outputs(host, tmp_path: Path) -> None:
    for arch in ("resnet56", "wrn_16_2", "vgg8", "MobileNetV2"):
        _, pruned = _pruned(host, arch, ratio=0.4)
        path = tmp_path / f"{arch}.pt"
        save_pruned(pruned, arch, 100, path)
        assert torch.load(path, weights_only=True)["format"] == "kdbench-pruned-1"
        reloaded = load_pruned(path, host).eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(reloaded(x), pruned.eval()(x), rtol=0, atol=0)


def test_unstructured_pruning_reaches_sparsity_and_keeps_the_classifier_dense(host) -> None:
    _, pruned = _pruned(host, "resnet20", pruner="l1_unstructured", ratio=0.3)
    assert sparsity(pruned) == pytest.approx(0.3, abs=0.02)
    assert (pruned.fc.weight != 0).all()


@pytest.mark.parametrize("pruner", ["l1", "l2", "bn_scale", "random", "lamp"])
def test_every_gradient_free_pruner_runs(host, pruner: str) -> None:
    original, pruned = _pruned(host, "resnet20", pruner=pruner, ratio=0.3)
    assert count_macs(pruned, (3, 32, 32)) < count_macs(original, (3, 32, 32))
