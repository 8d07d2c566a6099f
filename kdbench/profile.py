"""Efficiency metrics of a model: parameters, multiply-accumulates (the papers' "FLOPs") and latency.

Conventions, so the numbers compare with published KD and pruning tables:

- params: every parameter of the inference model; the training-only modules a
  method adds (connectors, embeddings, memories) are reported apart as
  ``extra_params``;
- MACs: fvcore's ``FlopCountAnalysis`` at batch 1 in eval mode. fvcore counts one
  multiply-add as one "flop", so its total is the multiply-accumulate count that
  the papers print as "FLOPs" (resnet8x4 0.18 G, ResNet-50 4.09 G);
  ``torch.utils.flop_counter`` would give twice as much;
- latency: the median of many timed forward passes after warm-up, in eval mode
  without autograd, synchronised on CUDA, at each requested batch size, on a
  named device (CPU figures say ``cpu:``).
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.records import MACS_CONVENTION, stored_latency_ms

__all__ = [
    "MACS_CONVENTION",
    "Latency",
    "ModelProfile",
    "count_macs",
    "count_parameters",
    "device_name",
    "measure_latency",
    "profile_model",
    "stored_latency_ms",
]


DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 50
DEFAULT_MAX_SECONDS = 10.0
MIN_ITERATIONS = 5


@dataclass(frozen=True, slots=True)
class Latency:
    """Forward latency at one batch size: median (and 90th percentile) milliseconds per batch."""

    batch_size: int
    median_ms: float
    p90_ms: float | None
    iterations: int
    device_name: str

    @property
    def images_per_second(self) -> float:
        """Return the throughput implied by the median: images per second."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict of the fields."""
        return {
            "batch_size": self.batch_size,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "iterations": self.iterations,
            "device_name": self.device_name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Latency:
        """Return the Latency that ``to_dict`` wrote."""
        p90 = data.get("p90_ms")
        return cls(
            batch_size=int(data["batch_size"]),
            median_ms=float(data["median_ms"]),
            p90_ms=None if p90 is None else float(p90),
            iterations=int(data["iterations"]),
            device_name=str(data["device_name"]),
        )


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A model's efficiency: inference params, training-only params, MACs and latency per batch size."""

    params: int
    extra_params: int
    macs: int
    macs_convention: str
    latency: tuple[Latency, ...]
    device_name: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (latency as a list of dicts)."""
        return {
            "params": self.params,
            "extra_params": self.extra_params,
            "macs": self.macs,
            "macs_convention": self.macs_convention,
            "latency": [lat.to_dict() for lat in self.latency],
            "device_name": self.device_name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        """Return the ModelProfile that ``to_dict`` wrote."""
        return cls(
            params=int(data["params"]),
            extra_params=int(data.get("extra_params", 0)),
            macs=int(data["macs"]),
            macs_convention=str(data.get("macs_convention", MACS_CONVENTION)),
            latency=tuple(Latency.from_dict(lat) for lat in data.get("latency", ())),
            device_name=str(data["device_name"]),
        )


def count_parameters(module: nn.Module) -> int:
    """Return the number of elements in every parameter of ``module`` (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode without autograd; restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Move ``model`` to ``device`` for the block; move it back to where it was afterwards."""
    original = _model_device(model)
    model.to(device)
    try:
        yield
    finally:
        if original is not None:
            model.to(original)


def count_macs(model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu") -> int:
    """Return the multiply-accumulates of one forward pass at batch 1, as counted by fvcore.

    fvcore counts one multiply-add as one "flop", so this total is the number the
    KD papers print as "FLOPs" (see ``MACS_CONVENTION``). The model is traced in
    eval mode without autograd; its train/eval mode and device are restored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        target = _as_device(device)
        with _on_device(model, target), _inference(model):
            inputs = (torch.zeros(1, *input_size, device=target),)
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())


def _read_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device) -> str:
    """Return a human name of ``device``, prefixed by its type: ``cpu: <model> (N threads)``, ``cuda: <GPU>``."""
    target = _as_device(device)
    if target.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(target)}"
    if target.type == "cpu":
        return f"cpu: {_read_cpu_model()} ({torch.get_num_threads()} threads)"
    return f"{target.type}: {platform.machine() or 'unknown'}"


def _percentile(values: list[float], fraction: float) -> float:
    """Return the linearly interpolated ``fraction`` quantile of ``values``."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_once_ms(model: nn.Module, batch: torch.Tensor, cuda: bool) -> float:
    """Return the milliseconds of one forward pass, synchronised on CUDA."""
    if cuda:
        with torch.cuda.device(batch.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            model(batch)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    begin = time.perf_counter()
    model(batch)
    return (time.perf_counter() - begin) * 1000.0


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    min_iterations: int = MIN_ITERATIONS,
) -> Latency:
    """Return the median forward latency of ``model`` at ``batch_size`` after ``warmup`` untimed passes.

    Runs in eval mode without autograd. ``max_seconds`` bounds the whole
    measurement: warm-up stops early after a quarter of it (at least one pass),
    timing stops once it is spent and ``min_iterations`` passes ran; the Latency
    records how many timed passes ran. The model's mode and device are restored.
    """
    if batch_size < 1 or iterations < 1:
        raise ValueError(f"batch_size and iterations must be positive, got {batch_size} and {iterations}")
    target = _as_device(device)
    cuda = target.type == "cuda"
    budget = math.inf if max_seconds is None else max_seconds
    floor = min(min_iterations, iterations)
    times: list[float] = []
    with _on_device(model, target), _inference(model):
        batch = torch.randn(batch_size, *input_size, device=target)
        begin = time.perf_counter()
        for done in range(max(warmup, 1)):
            if done and time.perf_counter() - begin > budget / 4:
                break
            _time_once_ms(model, batch, cuda)
        begin = time.perf_counter()
        while len(times) < iterations:
            if len(times) >= floor and time.perf_counter() - begin > budget:
                break
            times.append(_time_once_ms(model, batch, cuda))
    p90 = _percentile(times, 0.9) if len(times) >= 2 else None
    return Latency(batch_size, statistics.median(times), p90, len(times), device_name(target))


def profile_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    device: str | torch.device = "cpu",
    batch_sizes: tuple[int, ...] = (1, 256),
    extra_params: int = 0,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> ModelProfile:
    """Return the model's params, MACs (see ``MACS_CONVENTION``) and latency at each of ``batch_sizes``.

    ``extra_params`` are a method's training-only parameters, reported apart.
    ``max_seconds`` bounds each batch size's latency measurement.
    """
    latency = tuple(
        measure_latency(model, input_size, size, device, warmup, iterations, max_seconds) for size in batch_sizes
    )
    return ModelProfile(
        params=count_parameters(model),
        extra_params=extra_params,
        macs=count_macs(model, input_size, device),
        macs_convention=MACS_CONVENTION,
        latency=latency,
        device_name=device_name(device),
    )
