"""GPU behaviour of the engine (skipped without CUDA): no host sync per step, bf16 + channels_last."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import kdbench
from kdbench.engine import EngineOptions, RunState, TrainedModel
from kdbench.plan import TrainRun, plan_suite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _kd_state(host: kdbench.PluginHost, options: EngineOptions) -> RunState:
    suite = host.suites.get("smoke")
    run = next(r for r in plan_suite(suite, host) if isinstance(r, TrainRun) and r.method == "kd")
    dataset = host.datasets.get("digits")
    data = dataset.loader(None, False)
    teacher = kdbench.create_model("digits_cnn_l", host=host).to(options.device).eval().requires_grad_(False)
    torch.manual_seed(run.seed)
    student = kdbench.create_model(run.model, dataset.num_classes, host=host)
    factory = functools.partial(host.distillers.get("kd").builder, **run.params)
    teacher_model = TrainedModel("digits_cnn_l", teacher)
    return RunState(student, factory, teacher_model, run.recipe, run.seed, dataset, data, options)


def test_a_training_epoch_never_synchronises_with_the_host(host: kdbench.PluginHost) -> None:
    state = _kd_state(host, EngineOptions(device=torch.device("cuda")))
    state.train_epoch(0)  # warm-up: lazy CUDA initialisation may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = state.train_epoch(1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(math.isfinite(float(v)) for v in sums.values())


def test_bf16_channels_last_epoch_trains(host: kdbench.PluginHost) -> None:
    options = EngineOptions(device=torch.device("cuda"), bf16=True, channels_last=True)
    state = _kd_state(host, options)
    first = {k: float(v) for k, v in state.train_epoch(0).items()}
    later = {k: float(v) for k, v in state.train_epoch(1).items()}
    assert sum(later.values()) < sum(first.values())
    assert 0 <= float(state.test_top1()) <= 100
