"""Pruned-model files: the architecture description of a pruned model, and saving and rebuilding it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from kdbench.errors import CheckpointError
from kdbench.files import atomic_torch_save, load_state

if TYPE_CHECKING:
    from kdbench._plugins import PluginHost

__all__ = [
    "ARCHITECTURE_FORMAT",
    "describe_architecture",
    "load_pruned",
    "model_from_archive",
    "rebuild",
    "save_pruned",
]

#: ``format`` field of a file written by :func:`save_pruned`.
ARCHITECTURE_FORMAT = "kdbench-pruned-1"

_CONV_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_NORM_FIELDS = ("num_features", "eps", "momentum", "affine", "track_running_stats")

#: Module classes a description may name, with the constructor arguments recorded for each.
_DESCRIBED: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv1d": (nn.Conv1d, _CONV_FIELDS),
    "Conv2d": (nn.Conv2d, _CONV_FIELDS),
    "Conv3d": (nn.Conv3d, _CONV_FIELDS),
    "ConvTranspose1d": (nn.ConvTranspose1d, (*_CONV_FIELDS, "output_padding")),
    "ConvTranspose2d": (nn.ConvTranspose2d, (*_CONV_FIELDS, "output_padding")),
    "ConvTranspose3d": (nn.ConvTranspose3d, (*_CONV_FIELDS, "output_padding")),
    "BatchNorm1d": (nn.BatchNorm1d, _NORM_FIELDS),
    "BatchNorm2d": (nn.BatchNorm2d, _NORM_FIELDS),
    "BatchNorm3d": (nn.BatchNorm3d, _NORM_FIELDS),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine")),
    "PReLU": (nn.PReLU, ("num_parameters",)),
}
_HAS_BIAS = ("Conv", "Linear", "LayerNorm")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _describe_module(module: nn.Module) -> dict[str, Any] | None:
    """Return ``{"type", "kwargs"}`` rebuilding ``module``'s shapes, or None for a module without them."""
    kind = type(module).__name__
    if kind not in _DESCRIBED or type(module) is not _DESCRIBED[kind][0]:
        return None
    kwargs = {field: _jsonable(getattr(module, field)) for field in _DESCRIBED[kind][1]}
    if kind.startswith(_HAS_BIAS):
        kwargs["bias"] = getattr(module, "bias", None) is not None
    if kind == "PReLU":
        kwargs["num_parameters"] = module.weight.numel()
    return {"type": kind, "kwargs": kwargs}


def describe_architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Return module name → ``{"type", "kwargs"}`` for every shape-carrying module (JSON-able).

    Described: convolutions (transposed too), BatchNorm, Linear, GroupNorm, LayerNorm
    and PReLU of exactly those torch classes; subclasses are not, so a model built
    from them cannot be rebuilt (its strict load then fails with CheckpointError).
    """
    described = {}
    for name, module in model.named_modules():
        entry = _describe_module(module)
        if entry is not None and name:
            described[name] = entry
    return described


def _fresh_module(name: str, entry: Mapping[str, Any]) -> nn.Module:
    """Return a new module of the recorded type and constructor arguments."""
    kind = entry.get("type")
    if kind not in _DESCRIBED:
        raise CheckpointError(f"module {name!r} has unsupported type {kind!r} in the architecture description")
    cls, _ = _DESCRIBED[kind]
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in entry["kwargs"].items()}
    return cls(**kwargs)


def _replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def rebuild(host: PluginHost, arch: str, num_classes: int, description: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Return registry model ``arch`` with each described module replaced by a fresh one of the recorded shape."""
    model = host.models.get(arch).builder(num_classes=num_classes)
    modules = dict(model.named_modules())
    for name, entry in description.items():
        if name not in modules:
            raise CheckpointError(f"{arch} has no module {name!r} named in the architecture description")
        if type(modules[name]).__name__ != entry.get("type"):
            raise CheckpointError(f"{arch}.{name} is a {type(modules[name]).__name__}, the description says {entry}")
        _replace_submodule(model, name, _fresh_module(name, entry))
    return model


def save_pruned(model: nn.Module, arch: str, num_classes: int, path: str | os.PathLike[str]) -> None:
    """Write a pruned model as registry name + architecture description + state_dict, atomically."""
    payload = {
        "format": ARCHITECTURE_FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "architecture": describe_architecture(model),
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def model_from_archive(
    payload: Mapping[str, Any], host: PluginHost, source: Path, *, weights: bool = True, arch: str | None = None
) -> nn.Module:
    """Return the pruned model a :func:`save_pruned` payload describes: rebuilt, with its weights if asked.

    ``arch`` (if given) is the registered architecture the caller expects; a payload of another one,
    or an incomplete one, raises CheckpointError naming ``source``.
    """
    described, classes = payload.get("arch"), payload.get("num_classes")
    if payload.get("format") != ARCHITECTURE_FORMAT:
        raise CheckpointError(f"{source} is not a {ARCHITECTURE_FORMAT} file")
    if (
        not isinstance(described, str)
        or not isinstance(classes, int)
        or not isinstance(payload.get("architecture"), dict)
    ):
        raise CheckpointError(f"{source} is not a complete pruned archive (arch, num_classes, architecture)")
    if arch is not None and described != arch:
        raise CheckpointError(f"{source} holds a pruned {described}, not a {arch}")
    model = rebuild(host, described, classes, payload["architecture"])
    if weights:
        try:
            model.load_state_dict(payload.get("model"), strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{source} does not fit its own architecture description: {exc}") from None
    return model


def load_pruned(path: str | os.PathLike[str], host: PluginHost) -> nn.Module:
    """Return the model :func:`save_pruned` wrote at ``path`` (weights_only load, strict state_dict)."""
    source = Path(path)
    return model_from_archive(load_state(source, advice="it is not a readable pruned model"), host, source)
