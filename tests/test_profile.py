"""Efficiency metrics: hand-counted params and MACs, a known model's MACs, latency, round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdbench.profile import (
    MACS_CONVENTION,
    Latency,
    ModelProfile,
    count_macs,
    count_parameters,
    device_name,
    measure_latency,
    profile_model,
)


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def test_count_parameters_equals_a_hand_count() -> None:
    conv1 = 8 * 3 * 3 * 3 + 8
    bn = 8 + 8
    conv2 = 4 * 8
    linear = 4 * 8 * 8 * 10 + 10
    assert count_parameters(_tiny_net()) == conv1 + bn + conv2 + linear


def test_count_parameters_counts_a_shared_parameter_once() -> None:
    layer = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(layer, layer)) == 4 * 4 + 4


def test_macs_of_a_conv_and_a_linear_equal_a_hand_count() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    conv = 8 * 3 * 9 * 8 * 8  # out channels × in channels × kernel area × output pixels
    linear = (8 * 8 * 8) * 10
    assert count_macs(model, (3, 8, 8)) == conv + linear


def test_macs_of_resnet18_match_the_published_1_82_g() -> None:
    torchvision = pytest.importorskip("torchvision")
    macs = count_macs(torchvision.models.resnet18(), (3, 224, 224))
    assert macs == pytest.approx(1.82e9, rel=0.01)


def test_count_macs_restores_the_training_mode() -> None:
    model = _tiny_net().train()
    model[1].eval()  # a submodule in a mode unlike its parent keeps it
    count_macs(model, (3, 8, 8))
    assert model.training and model[0].training and not model[1].training


def test_latency_is_positive_at_each_batch_size_and_names_the_device() -> None:
    model = _tiny_net().train()
    profile = profile_model(model, (3, 8, 8), batch_sizes=(1, 4), warmup=2, iterations=7)
    assert [lat.batch_size for lat in profile.latency] == [1, 4]
    for lat in profile.latency:
        assert lat.median_ms > 0
        assert lat.p90_ms is not None and lat.p90_ms >= lat.median_ms
        assert lat.iterations == 7
        assert lat.device_name.startswith("cpu: ") and "threads" in lat.device_name
    assert profile.device_name == device_name("cpu")
    assert model.training
    assert profile.macs_convention == MACS_CONVENTION


def test_latency_stops_at_the_time_budget_after_the_minimum_iterations() -> None:
    class Slow(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import time

            time.sleep(0.01)
            return x

    lat = measure_latency(Slow(), (1, 2, 2), batch_size=3, warmup=100, iterations=1000, max_seconds=0.02)
    assert lat.iterations == 5
    assert lat.batch_size == 3
    assert lat.median_ms >= 10


def test_measure_latency_rejects_a_zero_batch() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(_tiny_net(), (3, 8, 8), batch_size=0)


def test_profile_round_trips_through_json() -> None:
    profile = ModelProfile(
        params=123,
        extra_params=45,
        macs=6789,
        macs_convention=MACS_CONVENTION,
        latency=(Latency(1, 0.5, 0.7, 50, "cpu: x (2 threads)"), Latency(256, 12.25, None, 5, "cpu: x (2 threads)")),
        device_name="cpu: x (2 threads)",
    )
    assert ModelProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_profile_model_counts_params_apart_from_extra_params() -> None:
    model = _tiny_net()
    profile = profile_model(model, (3, 8, 8), batch_sizes=(2,), extra_params=99, warmup=1, iterations=2)
    assert profile.params == count_parameters(model)
    assert profile.extra_params == 99
    assert profile.macs == count_macs(model, (3, 8, 8))
    assert ModelProfile.from_dict(profile.to_dict()) == profile
