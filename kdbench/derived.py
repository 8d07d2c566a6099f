"""Derived students: architectures obtained by pruning another model, written ``pruned(ARCH, k=v, …)``.

A suite names a derived student like any model::

    student = "pruned(resnet32x4, ratio=0.5, pruner=ssa)"           # SSA-KD: the teacher, pruned
    student = "pruned(resnet32x4, ratio=0.5, pruner=ssa, init=scratch)"  # same architecture, random init

Keys: ``pruner`` (a registered pruner), ``ratio`` (fraction of channels removed) or
``macs`` (target MACs reduction, e.g. 2.0), optional ``round_to``, ``global``,
``init`` (``pruned``: the pruned weights carry over, the default; ``scratch``: the
pruned architecture, freshly initialised); any other key is a parameter of the
pruner (e.g. ``theta=0.5``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, final

from kdbench.errors import SuiteError

__all__ = ["SETTING_NAMES", "DerivedStudent", "parse_derived", "prune_settings"]

_FORM = re.compile(r"^\s*pruned\(\s*(?P<base>[A-Za-z_][\w.-]*)\s*(?:,(?P<args>.*))?\)\s*$")
#: Suite keys of pruning settings → the fields of :class:`kdbench.pruning.PruneSettings` they set.
SETTING_NAMES = {"ratio": "ratio", "macs": "target_macs_reduction", "round_to": "round_to", "global": "global_pruning"}


@final
@dataclass(frozen=True)
class DerivedStudent:
    """A student made by pruning ``base`` with ``pruner`` and the given settings."""

    label: str
    base: str
    pruner: str
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    init: str = "pruned"

    @property
    def architecture_label(self) -> str:
        """Return the label of the pruned architecture alone (without ``init``): shared by both inits."""
        names = {v: k for k, v in SETTING_NAMES.items()}
        items = [f"{names[k]}={v}" for k, v in sorted(self.settings.items())]
        items += [f"{k}={v}" for k, v in sorted(self.params.items())]
        return f"pruned({', '.join([self.base, *items, f'pruner={self.pruner}'])})"


def prune_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return the PruneSettings fields that the suite keys among ``values`` set (other keys ignored)."""
    return {SETTING_NAMES[key]: value for key, value in values.items() if key in SETTING_NAMES}


def _value(text: str) -> Any:
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_derived(name: str) -> DerivedStudent | None:
    """Return the derived student ``name`` describes, or ``None`` if it is a plain model name."""
    match = _FORM.match(name)
    if not match:
        if name.strip().startswith("pruned("):
            raise SuiteError(f"cannot read derived student {name!r}; write pruned(ARCH, ratio=0.5, pruner=NAME)")
        return None
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (match.group("args") or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SuiteError(f"derived student {name!r}: expected key=value, got {item!r}")
        values[key.strip()] = _value(value)
    pruner = values.pop("pruner", None)
    if not isinstance(pruner, str):
        raise SuiteError(f"derived student {name!r} needs pruner=NAME")
    init = values.pop("init", "pruned")
    if init not in ("pruned", "scratch"):
        raise SuiteError(f"derived student {name!r}: init must be pruned or scratch, got {init!r}")
    settings = {SETTING_NAMES[key]: values.pop(key) for key in list(values) if key in SETTING_NAMES}
    if ("ratio" in settings) == ("target_macs_reduction" in settings):
        raise SuiteError(f"derived student {name!r} needs exactly one of ratio=… or macs=…")
    return DerivedStudent(name.strip(), match.group("base"), pruner, settings, values, init)
