"""Feature taps: one mechanism that exposes intermediate tensors of any model.

A model built by a model plugin carries a ``feature_taps`` attribute (a
:class:`FeatureTaps`) that names, by module name, where each signal is read:
a stage feature is the **output** of a module, a stage's pre-activation
("preact") is the **input** of a module, the pooled embedding is the input
of the classifier, and the pooled map (the last map, which global pooling
averages into the embedding) by default the last stage's feature. By default
one module per stage serves both feature and preact (its output is the
feature, its input the preact); a model whose feature and preact are not the
two sides of one module names separate preact modules, and a model with layers
between its last stage and its pooling names the pooling module, whose input is
the pooled map. Model authors route
each tapped activation through its own non-inplace module (an ``nn.ReLU``, or
an ``nn.Identity`` where a stage ends without one); such modules have no
parameters, so state_dict keys are unchanged. Forward hooks are attached to the
*instance* only while a :class:`FeatureCapture` is active, and only for the
signals requested; they read tensors the forward computes anyway, so no module
runs twice and BatchNorm statistics are updated once per forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, final

import torch
from torch import nn

from kdbench.errors import KdbenchError

__all__ = ["SIGNALS", "FeatureCapture", "FeatureTaps", "Signals", "restrict_signals"]

#: Every signal a distiller can request from a model.
SIGNALS = frozenset({"logits", "feats", "preact", "embedding", "pooled_map"})


@final
@dataclass(frozen=True, slots=True)
class FeatureTaps:
    """Where a model's stage features, their pre-activations, embedding, pooled map and BN-before-ReLU layers live.

    Modules are named as in ``model.named_modules()``, one per stage, stem
    first; hooks read the *output* of a ``stages`` module and the *input* of a
    ``preact`` module.

    * ``feats[k]`` is the feature of stage ``k``; for a model of a reference
      zoo, exactly the zoo's ``forward(x, is_feat=True)`` entry (post-ReLU in
      most families, the raw stage output in a pre-activation WRN).
    * ``preact[k]`` is the tensor the network *activates* stage ``k``'s feature
      from. In a post-activation network (conv → BN → ReLU, residual sum → ReLU)
      that is the stage output before its last ReLU, so ``relu(preact) ==
      feats``; the default (``preact=()``) reads it as the input of the
      ``stages`` module, which is then that ReLU (or an ``nn.Identity`` where a
      stage ends linearly, so that preact and feature are one tensor). A model
      whose feature and preact are not the two sides of one module names the
      preact modules separately: a pre-activation WRN's feature is the raw stage
      output and its preact the input of the next unit's ReLU, ``bn(feature)``
      (``stages=("conv1", "block1", ...)``, ``preact=("block1.layer.0.relu1",
      "block2.layer.0.relu1", ...)``). For stages 1..K this is the references'
      ``preact=True`` list (RepDistiller, MDistiller's ``preact_feats``).
    * ``preact[0]`` follows kdbench's convention, not the references': it is the
      stem's own pre-activation by the same rule as the other stages (e.g. the
      stem BN's output before its ReLU; for WRN ``bn(conv1 output)``), whereas
      the references repeat the stem feature ``feats[0]`` there. No shipped
      method reads ``preact[0]`` (AB, OFD and ReviewKD use ``preact[1:]``).
    * ``pooled_map`` is the B×C×H×W map whose spatial mean is the embedding:
      the input of the global pooling. Most families pool their last stage
      feature (the default, ``pooled_map=""``); a model with layers after its
      last stage (a pre-activation WRN's final BN + ReLU, MobileNetV2's and
      ShuffleNetV2's 1×1 head convolution) names its pooling module, whose
      input is then read (as SDD's models apply their pyramid pooling there).

    Taps only read tensors the forward computes: nothing is recomputed, so
    BatchNorm statistics are updated once per training step (the references
    apply WRN's BN a second time to get the preact).
    """

    stages: tuple[str, ...]
    """Modules whose output is each stage's feature; by default their input is its preact."""
    classifier: str
    """Module name of the classifier; its input is the pooled embedding."""
    bn_before_relu: tuple[str, ...] = ()
    """Per stage, the BatchNorm whose output is (or, with a residual sum, feeds) that stage's preact."""
    preact: tuple[str, ...] = ()
    """Per stage, the module whose input is that stage's preact; empty: the ``stages`` modules."""
    pooled_map: str = ""
    """Module whose input is the map the embedding is pooled from; empty: the last stage's feature."""

    def __post_init__(self) -> None:
        if self.preact and len(self.preact) != len(self.stages):
            raise ValueError(
                f"FeatureTaps.preact names {len(self.preact)} modules for {len(self.stages)} stages; "
                "name one per stage, or none to read the preacts as the inputs of the stage modules"
            )

    @property
    def preact_modules(self) -> tuple[str, ...]:
        """Return the module whose input is each stage's preact (``preact``, else ``stages``)."""
        return self.preact or self.stages


@final
@dataclass(slots=True)
class Signals:
    """What one forward pass exposed: logits plus the requested taps."""

    logits: torch.Tensor
    feats: list[torch.Tensor] = field(default_factory=list)
    preact: list[torch.Tensor] = field(default_factory=list)
    embedding: torch.Tensor | None = None
    pooled_map: torch.Tensor | None = None


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
        self._feats: dict[int, torch.Tensor] = {}
        self._preact: dict[int, torch.Tensor] = {}
        self._embedding: torch.Tensor | None = None
        self._pooled_map: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stage_count = 0
        if wanted & {"feats", "preact", "embedding", "pooled_map"}:
            self._attach(_taps_of(model))

    def _attach(self, taps: FeatureTaps) -> None:
        modules = dict(self.model.named_modules())
        named = (*taps.stages, *taps.preact, taps.classifier, *((taps.pooled_map,) if taps.pooled_map else ()))
        missing = [n for n in dict.fromkeys(named) if n not in modules]
        if missing:
            raise KeyError(f"{type(self.model).__name__}: feature taps name missing modules {missing}")
        self._stage_count = len(taps.stages)
        if "feats" in self.wanted:
            for index, name in enumerate(taps.stages):
                self._handles.append(modules[name].register_forward_hook(self._keep(self._feats, index, "output")))
        if "preact" in self.wanted:
            for index, name in enumerate(taps.preact_modules):
                self._handles.append(modules[name].register_forward_hook(self._keep(self._preact, index, "input")))
        if "embedding" in self.wanted:
            self._handles.append(modules[taps.classifier].register_forward_hook(self._embedding_hook))
        if "pooled_map" in self.wanted:
            name, side = (taps.pooled_map, "input") if taps.pooled_map else (taps.stages[-1], "output")
            self._handles.append(modules[name].register_forward_hook(self._keep(self._pooled_map, 0, side)))

    @staticmethod
    def _keep(store: dict[int, torch.Tensor], index: int, side: Literal["input", "output"]):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            store[index] = output if side == "output" else inputs[0]

        return hook

    def _embedding_hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        self._embedding = inputs[0]

    def __call__(self, images: torch.Tensor) -> Signals:
        """Run the model and return its logits with the requested signals."""
        logits = self.model(images)
        signals = Signals(logits=logits, feats=_NotRequested("feats"), preact=_NotRequested("preact"))
        if "feats" in self.wanted:
            signals.feats = [self._feats[i] for i in range(self._stage_count)]
        if "preact" in self.wanted:
            signals.preact = [self._preact[i] for i in range(self._stage_count)]
        if "embedding" in self.wanted:
            signals.embedding = self._embedding
        if "pooled_map" in self.wanted:
            signals.pooled_map = self._pooled_map[0]
        self._feats.clear()  # cleared, not replaced: the hooks hold these dicts
        self._preact.clear()
        self._pooled_map.clear()
        self._embedding = None
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


def restrict_signals(signals: Signals, wanted: Iterable[str]) -> Signals:
    """Return ``signals`` with only the ``wanted`` ones readable: what a capture of ``wanted`` alone gives.

    (One teacher pass captures what every run of a cohort asks for; each run sees its own part.)
    """
    wanted = frozenset(wanted)
    return Signals(
        logits=signals.logits,
        feats=signals.feats if "feats" in wanted else _NotRequested("feats"),
        preact=signals.preact if "preact" in wanted else _NotRequested("preact"),
        embedding=signals.embedding if "embedding" in wanted else None,
        pooled_map=signals.pooled_map if "pooled_map" in wanted else None,
    )


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
        pooled_map=join([p.pooled_map for p in parts]),
    )
