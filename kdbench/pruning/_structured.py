"""Structured pruning on torch-pruning's dependency graph, guarded against the groups it would prune incorrectly."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.features import FeatureTaps
from kdbench.profile import count_macs

if TYPE_CHECKING:
    from kdbench.pruning._contract import Calibration, PruneSettings

__all__ = ["classifier_of", "modules_named", "prune_structured"]


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
