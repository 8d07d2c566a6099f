"""Feature taps: one mechanism that exposes intermediate tensors of any model.

A model built by a model plugin carries a ``feature_taps`` attribute (a
:class:`FeatureTaps`). Each *stage tap* names a module whose **output** is the
post-activation feature of a stage and whose **input** is the same feature
before that activation ("preact"). Model authors therefore route the last
activation of each stage through its own non-inplace module (an ``nn.ReLU``, or
an ``nn.Identity`` where the stage ends without one); such modules have no
parameters, so state_dict keys are unchanged. The pooled embedding is the input
of the classifier module. Forward hooks are attached to the *instance* only
while a :class:`FeatureCapture` is active, and only for the signals requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, final

import torch
from torch import nn

from kdbench.errors import KdbenchError

__all__ = ["SIGNALS", "FeatureCapture", "FeatureTaps", "Signals"]

#: Every signal a distiller can request from a model.
SIGNALS = frozenset({"logits", "feats", "preact", "embedding"})


@final
@dataclass(frozen=True, slots=True)
class FeatureTaps:
    """Where a model's stage features, embedding and BN-before-ReLU layers live."""

    stages: tuple[str, ...]
    """Module names, stem first: output = stage feature, input = its preact."""
    classifier: str
    """Module name of the classifier; its input is the pooled embedding."""
    bn_before_relu: tuple[str, ...] = ()
    """Per stage, the BatchNorm module feeding that stage's last activation."""


@final
@dataclass(slots=True)
class Signals:
    """What one forward pass exposed: logits plus the requested taps."""

    logits: torch.Tensor
    feats: list[torch.Tensor] = field(default_factory=list)
    preact: list[torch.Tensor] = field(default_factory=list)
    embedding: torch.Tensor | None = None


class _NotRequested(list):
    """Stands in for a signal a distiller did not request: reading it says which declaration is missing."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _refuse(self, *_: object) -> Any:
        raise KdbenchError(
            f"signal {self.name!r} was not captured: add it to the distiller's student_signals / teacher_signals "
            "(or to what its signals() returns for this phase)"
        )

    __getitem__ = __iter__ = __len__ = _refuse


def _taps_of(model: nn.Module) -> FeatureTaps:
    taps = getattr(model, "feature_taps", None)
    if not isinstance(taps, FeatureTaps):
        raise TypeError(f"{type(model).__name__} has no `feature_taps`; model plugins must set one")
    return taps


class FeatureCapture:
    """Attach forward hooks to a model instance and collect the requested signals.

    Use as ``capture = FeatureCapture(model, {"feats"})`` then
    ``signals = capture(images)``; call :meth:`close` (or use ``with``) to remove
    the hooks.
    """

    def __init__(self, model: nn.Module, wanted: Iterable[str]) -> None:
        wanted = frozenset(wanted)
        unknown = wanted - SIGNALS
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}; known: {sorted(SIGNALS)}")
        self.model = model
        self.wanted = wanted
        self._inputs: dict[int, torch.Tensor] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._embedding: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stage_count = 0
        if wanted & {"feats", "preact", "embedding"}:
            self._attach(_taps_of(model))

    def _attach(self, taps: FeatureTaps) -> None:
        modules = dict(self.model.named_modules())
        missing = [n for n in (*taps.stages, taps.classifier) if n not in modules]
        if missing:
            raise KeyError(f"{type(self.model).__name__}: feature taps name missing modules {missing}")
        if self.wanted & {"feats", "preact"}:
            self._stage_count = len(taps.stages)
            for index, name in enumerate(taps.stages):
                self._handles.append(modules[name].register_forward_hook(self._stage_hook(index)))
        if "embedding" in self.wanted:
            self._handles.append(modules[taps.classifier].register_forward_hook(self._embedding_hook))

    def _stage_hook(self, index: int):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._inputs[index] = inputs[0]
            self._outputs[index] = output

        return hook

    def _embedding_hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        self._embedding = inputs[0]

    def __call__(self, images: torch.Tensor) -> Signals:
        """Run the model and return its logits with the requested signals."""
        logits = self.model(images)
        signals = Signals(logits=logits, feats=_NotRequested("feats"), preact=_NotRequested("preact"))
        if "feats" in self.wanted:
            signals.feats = [self._outputs[i] for i in range(self._stage_count)]
        if "preact" in self.wanted:
            signals.preact = [self._inputs[i] for i in range(self._stage_count)]
        if "embedding" in self.wanted:
            signals.embedding = self._embedding
        self._inputs, self._outputs, self._embedding = {}, {}, None
        return signals

    def close(self) -> None:
        """Remove every hook this capture attached."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feature_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Return the model's parameters except its classifier's (what "feature modules" train in a phase)."""
    classifier = model.get_submodule(_taps_of(model).classifier)
    excluded = {id(p) for p in classifier.parameters()}
    return [p for p in model.parameters() if id(p) not in excluded]


def concat_signals(parts: list[Signals]) -> Signals:
    """Return the signals of several forward passes joined along the batch dimension."""
    if len(parts) == 1:
        return parts[0]

    def join(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if tensors[0] is None else torch.cat(tensors)  # type: ignore[arg-type]

    def stages(lists: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        if isinstance(lists[0], _NotRequested):
            return lists[0]
        return [torch.cat(stage) for stage in zip(*lists)]

    return Signals(
        logits=torch.cat([p.logits for p in parts]),
        feats=stages([p.feats for p in parts]),
        preact=stages([p.preact for p in parts]),
        embedding=join([p.embedding for p in parts]),
    )
