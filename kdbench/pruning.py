"""Pruning: structured channel pruning on torch-pruning's dependency graph, unstructured pruning, and saving both.

Method-agnostic machinery; the criteria are pruner plugins (``kdbench_register_pruners``).

- **Structured** pruners score channels with a torch-pruning importance
  (:meth:`Pruner.importance`) and :func:`prune_structured` removes them through
  ``torch_pruning.pruner.BasePruner`` over the DependencyGraph, so coupled layers
  (residual sums, concatenations, depthwise convolutions, the classifier's inputs)
  shrink together. The classifier named by ``model.feature_taps.classifier`` always
  keeps its outputs (torch-pruning may still remove its *inputs* with the embedding
  channels); modules named in :attr:`PruneSettings.ignored` are not changed at all.
- Channel groups that torch-pruning 1.6 would prune *incorrectly* are left alone:
  groups through a channel transpose/permute (a channel shuffle, which its graph maps
  as the identity), through a constant slice or split (``x[:, :k]`` keeps its Python
  constant), and groups that would remove channels unevenly from a grouped (not
  depthwise) convolution. A model where nothing else is prunable (ShuffleV1) raises
  :class:`~kdbench.errors.KdbenchError` instead of coming back unpruned.
- **MACs** are counted with :func:`kdbench.profile.count_macs` (fvcore, batch 1, one
  multiply-add = 1), the convention of every kdbench profile; reductions are
  ``MACs(original) / MACs(pruned)``.
- **Saving**: a pruned model no longer matches its class's constructor, so
  :func:`save_pruned` stores the architecture name, the hyper-parameters of every
  shape-carrying module (:func:`describe_architecture`) and an ordinary state_dict;
  :func:`load_pruned` rebuilds the base model from the registry, swaps those modules
  for fresh ones of the recorded shapes (names, hence ``feature_taps``, unchanged) and
  loads the weights strictly with ``torch.load(weights_only=True)``.

Pruning replaces parameter objects: build the optimizer after pruning.
torch-pruning is imported on first use (it pulls in timm and torchvision, ~2 s).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.errors import CheckpointError, KdbenchError
from kdbench.features import FeatureTaps
from kdbench.profile import count_macs

if TYPE_CHECKING:
    from kdbench._plugins import PluginHost

__all__ = [
    "ARCHITECTURE_FORMAT",
    "DEFAULT_TARGET_STEPS",
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "Calibration",
    "PruneSettings",
    "Pruner",
    "calibration_from_batches",
    "check_choice",
    "classifier_of",
    "describe_architecture",
    "load_pruned",
    "modules_named",
    "prune_model",
    "prune_structured",
    "rebuild",
    "save_pruned",
    "sparsity",
]

#: ``format`` field of a file written by :func:`save_pruned`.
ARCHITECTURE_FORMAT = "kdbench-pruned-1"
#: Steps of the channel-ratio schedule (0 → 1) searched when a MACs reduction is the target.
DEFAULT_TARGET_STEPS = 100

#: How torch-pruning's group importances combine the scores of a group's coupled layers.
GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate")
#: How torch-pruning's group importances rescale a group's scores (only global pruning compares groups).
NORMALIZERS = (None, "mean", "max", "sum", "standarization", "gaussian")

#: ``calibration(model)`` runs forward + backward of a loss on a few batches, accumulating ``.grad``.
Calibration = Callable[[nn.Module], None]


@dataclass(frozen=True, slots=True)
class PruneSettings:
    """How much to prune and where: exactly one of ``ratio`` and ``target_macs_reduction``.

    ``ratio`` is torch-pruning's ``pruning_ratio`` (the fraction of each layer's
    channels removed; for unstructured pruners, the fraction of weights zeroed).
    ``target_macs_reduction`` (e.g. 2.0: MACs halved) is reached by raising the
    channel ratio in ``iterative_steps`` equal steps from 0 towards 1 and stopping at
    the first step whose MACs reduction reaches it. ``iterative_steps=None`` means
    1 for a ratio and :data:`DEFAULT_TARGET_STEPS` for a target. ``round_to`` keeps
    channel counts multiples of it (8 for real speed-ups; None for the published
    CIFAR ratios). ``ignored`` names modules never changed (the classifier always
    keeps its outputs).
    """

    ratio: float | None = None
    target_macs_reduction: float | None = None
    global_pruning: bool = False
    round_to: int | None = 8
    ignored: tuple[str, ...] = ()
    iterative_steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignored", tuple(self.ignored))
        if (self.ratio is None) == (self.target_macs_reduction is None):
            raise KdbenchError("prune settings need exactly one of `ratio` and `target_macs_reduction`")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise KdbenchError(f"pruning ratio must lie strictly between 0 and 1, got {self.ratio}")
        if self.target_macs_reduction is not None and not self.target_macs_reduction > 1.0:
            target = self.target_macs_reduction
            raise KdbenchError(f"target MACs reduction must be above 1 (2.0 halves MACs), got {target}")
        if self.round_to is not None and self.round_to < 1:
            raise KdbenchError(f"round_to must be a positive channel count or None, got {self.round_to}")
        if self.iterative_steps is not None and self.iterative_steps < 1:
            raise KdbenchError(f"iterative_steps must be at least 1, got {self.iterative_steps}")

    @property
    def steps(self) -> int:
        """Return the number of pruning steps (``iterative_steps`` or its default for the mode)."""
        if self.iterative_steps is not None:
            return self.iterative_steps
        return 1 if self.ratio is not None else DEFAULT_TARGET_STEPS


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise KdbenchError naming them."""
    if value not in choices:
        raise KdbenchError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


class Pruner:
    """Base class of pruner plugins: an importance criterion, or a whole ``prune`` for unstructured ones."""

    structured: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = False
    """Whether :meth:`prune` needs a calibration callable that accumulates loss gradients (Taylor, SSA)."""

    def importance(self) -> Any:
        """Return the torch-pruning importance (``importance(group)`` → per-channel scores) of this criterion."""
        raise NotImplementedError(f"{type(self).__name__} must implement importance() or override prune()")

    def prune(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        settings: PruneSettings,
        calibration: Calibration | None = None,
    ) -> nn.Module:
        """Return ``model`` pruned in place (default: structured pruning with :meth:`importance`)."""
        return prune_structured(
            model, self.importance(), example_inputs, settings, calibration, needs_gradients=self.needs_gradients
        )


# ---------------------------------------------------------------------------------------------------------------------
# Structured pruning


def classifier_of(model: nn.Module) -> nn.Module:
    """Return the classifier module named by ``model.feature_taps.classifier``."""
    taps = getattr(model, "feature_taps", None)
    if not isinstance(taps, FeatureTaps):
        raise KdbenchError(f"{type(model).__name__} has no `feature_taps`, so its classifier is unknown")
    return model.get_submodule(taps.classifier)


def modules_named(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """Return the submodules called ``names`` or raise KdbenchError naming the unknown one."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KdbenchError(f"{type(model).__name__} has no module {name!r} to leave unpruned{hint}")
        found.append(modules[name])
    return found


@contextlib.contextmanager
def _modes_kept(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Yield a function restoring every submodule's train/eval flag; also restore them on exit."""
    modes = [(module, module.training) for module in model.modules()]

    def restore() -> None:
        for module, training in modes:
            module.training = training

    try:
        yield restore
    finally:
        restore()


def _is_grouped_conv(module: nn.Module) -> bool:
    """Return whether ``module`` is a grouped convolution that is not depthwise."""
    groups = getattr(module, "groups", 1)
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and groups > 1
        and not (groups == module.in_channels or groups == module.out_channels)
    )


_SHUFFLE = "a channel transpose/permute (channel shuffle), which torch-pruning maps as the identity"
_SLICE = "a constant slice or split of channels"
_UNEVEN = "uneven pruning of a grouped convolution"


def _node_hazard(node: Any) -> str:
    """Return why channels cannot be pruned correctly through graph node ``node``, or an empty string."""
    from torch_pruning.ops import OPTYPE

    if node.type in (OPTYPE.SLICE, OPTYPE.SPLIT):
        return _SLICE
    if node.type == OPTYPE.ELEMENTWISE and node.grad_fn is not None:
        op = node.grad_fn.name().lower()
        if "transpose" in op or "permute" in op:
            return _SHUFFLE
    return ""


def _hazardous_producers(graph: Any) -> dict[nn.Module, str]:
    """Return conv/linear layers (depthwise too) whose output channels reach a hazard (shuffle, slice), with why.

    Channel spaces are joined along every edge of torch-pruning's traced graph; a
    conv/linear layer (not depthwise) separates its input space from its output
    space. torch-pruning must not even build the groups of these layers: through a
    ShuffleNet's shuffles and concatenations they span the network and take minutes.
    """
    from torch_pruning.ops import OPTYPE

    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(key: tuple[int, str]) -> tuple[int, str]:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def port(node: Any, side: str) -> tuple[int, str]:
        return (id(node), side if node.type in (OPTYPE.CONV, OPTYPE.LINEAR) else "out")

    nodes = list(graph.module2node.values())
    for node in nodes:
        for successor in node.outputs:
            parent[find(port(node, "out"))] = find(port(successor, "in"))
    hazards = {find(port(node, "out")): _node_hazard(node) for node in nodes if _node_hazard(node)}
    return {
        node.module: hazards[find(port(node, "out"))]
        for node in nodes
        if isinstance(node.module, (nn.modules.conv._ConvNd, nn.Linear)) and find(port(node, "out")) in hazards
    }


class _SafeGroups:
    """Wrap an importance: refuse (score ``None``) groups torch-pruning 1.6 cannot prune correctly.

    torch-pruning's ``BasePruner`` skips a group whose importance is ``None``. Refused:
    groups touching a frozen (user-ignored) module, and groups that would remove
    channels unevenly from a grouped convolution (torch-pruning removes the same
    offsets in every conv group, which is right only when the group spans the conv's
    whole channel dimension). Reasons are kept in :attr:`refused` by root layer name.
    """

    def __init__(self, importance: Callable[[Any], Any], model: nn.Module, frozen: set[nn.Module]) -> None:
        self.importance = importance
        self.names = {module: name for name, module in model.named_modules()}
        self.frozen = frozen
        self.graph: Any = None
        self.refused: dict[str, str] = {}

    def refuse(self, module: nn.Module, reason: str) -> None:
        """Record that the group rooted at ``module`` is left unpruned for ``reason``."""
        self.refused[self.names.get(module, type(module).__name__)] = reason

    def __call__(self, group: Any) -> torch.Tensor | None:
        if any(dep.target.module in self.frozen for dep, _ in group):
            return None
        reason = self._hazard(group)
        if reason:
            self.refuse(group[0].dep.target.module, reason)
            return None
        return self.importance(group)

    def _hazard(self, group: Any) -> str:
        """Return why ``group`` cannot be pruned correctly, or an empty string."""
        grouped: list[tuple[nn.Module, int, list[int]]] = []
        for dep, idxs in group:
            reason = _node_hazard(dep.target)
            if reason:
                return reason
            module = dep.target.module
            if _is_grouped_conv(module):
                size = module.out_channels if self.graph.is_out_channel_pruning_fn(dep.handler) else module.in_channels
                grouped.append((module, size, list(idxs)))
        period = max((module.groups for module, _, _ in grouped), default=1)
        for module, size, idxs in grouped:
            if sorted(idxs) != list(range(size)) or period % module.groups:
                return _UNEVEN
        return ""


def _require_gradients(model: nn.Module) -> None:
    """Raise KdbenchError unless calibration left a gradient on every conv/linear weight."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight.grad is None:
            raise KdbenchError(
                f"calibration left no gradient on {name}.weight: it must call loss.backward(), "
                "and the weights must require grad"
            )


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build_pruner(
    model: nn.Module, importance: Callable[[Any], Any], example_inputs: torch.Tensor, settings: PruneSettings
) -> tuple[Any, _SafeGroups]:
    """Return torch-pruning's BasePruner over ``model`` and the guard wrapping ``importance``."""
    import torch_pruning as tp

    named = modules_named(model, settings.ignored)
    frozen = {sub for module in named for sub in module.modules()}
    guard = _SafeGroups(importance, model, frozen)
    with torch.enable_grad():  # graph tracing needs autograd
        hazardous = _hazardous_producers(tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs))
        for module, reason in hazardous.items():
            guard.refuse(module, reason)
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=guard,
            global_pruning=settings.global_pruning,
            pruning_ratio=settings.ratio if settings.ratio is not None else 1.0,
            iterative_steps=settings.steps,
            ignored_layers=[classifier_of(model), *named, *hazardous],
            round_to=settings.round_to,
        )
    guard.graph = pruner.DG
    return pruner, guard


def prune_structured(
    model: nn.Module,
    importance: Callable[[Any], Any],
    example_inputs: torch.Tensor,
    settings: PruneSettings,
    calibration: Calibration | None = None,
    needs_gradients: bool = False,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Return ``model`` with channels removed in place by ``importance`` (train/eval modes restored).

    Builds torch-pruning's ``BasePruner`` over the dependency graph traced with
    ``example_inputs`` (a batch on the model's device), ignoring the classifier's
    outputs and the modules named in ``settings.ignored``. With ``needs_gradients``,
    ``calibration(model)`` runs before every step (model in its original modes, so a
    model in train mode updates its BN statistics; grads zeroed first, cleared at the
    end). With ``settings.ratio`` all steps run; with ``settings.target_macs_reduction``
    steps run until the MACs reduction reaches it.
    ``on_step(step, macs_reduction)`` is called after every step (MACs measured only
    when a target is set or ``on_step`` is given).
    """
    if needs_gradients and calibration is None:
        raise KdbenchError(
            "this pruner scores channels with loss gradients: pass `calibration`, a callable that runs "
            "forward and backward of a loss on a few batches (see kdbench.pruning.calibration_from_batches)"
        )
    input_size = tuple(example_inputs.shape[1:])
    measure = on_step is not None or settings.target_macs_reduction is not None
    base_macs = count_macs(model, input_size, example_inputs.device) if measure else 0
    params_before = _parameter_count(model)
    with _modes_kept(model) as restore_modes:
        pruner, guard = _build_pruner(model, importance, example_inputs, settings)
        restore_modes()
        reduction = 1.0
        for step in range(1, settings.steps + 1):
            if needs_gradients:
                assert calibration is not None
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    calibration(model)
                restore_modes()
                _require_gradients(model)
            pruner.step()
            if measure:
                reduction = base_macs / max(count_macs(model, input_size, example_inputs.device), 1)
                if on_step is not None:
                    on_step(step, reduction)
            if settings.target_macs_reduction is not None and reduction >= settings.target_macs_reduction:
                break
        if needs_gradients:
            model.zero_grad(set_to_none=True)
    _check_outcome(model, guard, params_before, settings, reduction)
    return model


def _refusals(guard: _SafeGroups) -> str:
    """Return a short account of the groups left unpruned: each reason with a few root layers."""
    by_reason: dict[str, list[str]] = {}
    for root, reason in sorted(guard.refused.items()):
        by_reason.setdefault(reason, []).append(root)
    parts = []
    for reason, roots in by_reason.items():
        more = f" and {len(roots) - 3} more" if len(roots) > 3 else ""
        parts.append(f"{reason}: {', '.join(roots[:3])}{more}")
    return "; ".join(parts)


def _check_outcome(
    model: nn.Module, guard: _SafeGroups, params_before: int, settings: PruneSettings, reduction: float
) -> None:
    """Raise KdbenchError when no channel or too few were removed; warn about groups left unpruned."""
    name = type(model).__name__
    if _parameter_count(model) == params_before:
        if guard.refused:
            raise KdbenchError(f"{name}: no channel group is correctly prunable by torch-pruning ({_refusals(guard)})")
        raise KdbenchError(
            f"{name}: pruning removed no channel (every group ignored, a ratio below one round_to={settings.round_to} "
            "step, or importance scores all tied under global pruning)"
        )
    target = settings.target_macs_reduction
    if target is not None and reduction < target:
        detail = f"; groups left unpruned: {_refusals(guard)}" if guard.refused else ""
        raise KdbenchError(f"{name}: MACs reduction {reduction:.2f}× is the most reachable, short of {target}×{detail}")
    if guard.refused:
        warnings.warn(f"{name}: {len(guard.refused)} channel groups left unpruned ({_refusals(guard)})", stacklevel=3)


def calibration_from_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> Calibration:
    """Return a calibration that accumulates ``loss(model(x), y)`` gradients over ``batches`` (re-iterable).

    Batches are moved to the device of the model's first parameter. SSA-KD's code
    uses two batches of 128 training images with cross-entropy, in eval mode.
    """
    batches = list(batches)

    def calibrate(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for images, targets in batches:
            loss(model(images.to(device)), targets.to(device)).backward()

    return calibrate


# ---------------------------------------------------------------------------------------------------------------------
# Unstructured reporting


def sparsity(model: nn.Module, exclude_classifier: bool = False) -> float:
    """Return the fraction of zero entries among conv and linear weights (optionally without the classifier)."""
    skipped = {id(m) for m in classifier_of(model).modules()} if exclude_classifier else set()
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and id(module) not in skipped:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Architecture description and serialisation

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
    target = Path(path)
    payload = {
        "format": ARCHITECTURE_FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "architecture": describe_architecture(model),
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    temporary = target.with_name(f".{target.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def load_pruned(path: str | os.PathLike[str], host: PluginHost) -> nn.Module:
    """Return the model :func:`save_pruned` wrote at ``path`` (weights_only load, strict state_dict)."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"pruned model not found: {source}")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read pruned model {source}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != ARCHITECTURE_FORMAT:
        raise CheckpointError(f"{source} is not a {ARCHITECTURE_FORMAT} file")
    model = rebuild(host, payload["arch"], payload["num_classes"], payload["architecture"])
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit its own architecture description: {exc}") from exc
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Registry entry point


def prune_model(
    host: PluginHost,
    model: nn.Module,
    pruner: str,
    params: Mapping[str, Any],
    example_inputs: torch.Tensor,
    settings: PruneSettings,
    calibration: Calibration | None = None,
) -> nn.Module:
    """Return ``model`` pruned in place by registered pruner ``pruner`` with its defaults updated by ``params``."""
    spec = host.pruners.get(pruner)
    arguments = {**spec.defaults, **params}
    try:
        instance = spec.builder(**arguments)
    except TypeError as exc:
        raise KdbenchError(f"pruner {pruner!r} does not accept {sorted(arguments)}: {exc}") from exc
    if not isinstance(instance, Pruner):
        raise KdbenchError(f"pruner {pruner!r} built a {type(instance).__name__}, not a kdbench.pruning.Pruner")
    return instance.prune(model, example_inputs, settings, calibration)
