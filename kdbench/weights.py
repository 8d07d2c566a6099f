"""One door for models and their weights: ``create_model(name, weights=…)``, like timm's ``create_model``.

``name`` is a registered architecture (``resnet8x4``) or a registered teacher
(``resnet32x4@mdistiller``: that architecture with that checkpoint). ``weights`` is
optional and is one of:

- a registered teacher name (its file lies under ``teacher_root``; checked against the
  teacher's ``sha256`` when it has one);
- the path of a checkpoint file: a state_dict, or a dict holding one under ``"model"``
  (kdbench's ``final.pt``, the RepDistiller / MDistiller checkpoints);
- the path of a pruned archive (kdbench's ``pruned.pt``, or the ``final.pt`` of a pruned
  model): the saved pruned architecture is rebuilt, then its weights are loaded.

``architecture=PATH`` builds the pruned architecture saved at PATH with fresh weights.
Files are read with ``torch.load(weights_only=True)``; weights load strictly. Every
failure is a :class:`~kdbench.errors.CheckpointError` naming the file and the model.
The runner, teachers, derived students and the public API all come through here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdbench.derived import parse_derived
from kdbench.errors import CheckpointError
from kdbench.files import load_state
from kdbench.pruning import ARCHITECTURE_FORMAT, model_from_archive

if TYPE_CHECKING:
    from kdbench._plugins import PluginHost
    from kdbench.specs import TeacherSpec

__all__ = ["DEFAULT_TEACHER_ROOT", "Checkpoint", "create_model", "find_checkpoint"]

#: Where registered teachers' files are looked for unless told otherwise (``--teacher-root``).
DEFAULT_TEACHER_ROOT = Path("teachers")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint file, the key its state_dict is under (empty: the whole file), and the teacher it is."""

    path: Path
    state_key: str = "model"
    teacher: TeacherSpec | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_checkpoint(source: str | os.PathLike[str], host: PluginHost, teacher_root: Path | None = None) -> Checkpoint:
    """Return the checkpoint ``source`` names: a registered teacher (under ``teacher_root``) or a file path."""
    root = DEFAULT_TEACHER_ROOT if teacher_root is None else Path(teacher_root)
    name = os.fspath(source)
    if name in host.teachers:
        spec = host.teachers.get(name)
        path = root / spec.path
        # where torch.hub / torchvision keep downloaded weights ($TORCH_HOME/hub/checkpoints)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.path).name
        if not path.is_file() and cached.is_file():
            path = cached
        if not path.is_file():
            raise CheckpointError(
                f"teacher {name!r} not found at {root / spec.path} nor in torch's hub cache ({cached}); download it "
                f"from {spec.url or 'its source'} and put it under --teacher-root {root}"
            )
        if spec.sha256 and not _sha256(path).startswith(spec.sha256.lower()):
            raise CheckpointError(f"teacher {name!r} at {path} does not match its published sha256 {spec.sha256}")
        return Checkpoint(path, spec.state_key, spec)
    path = Path(name)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} not found (not a file, nor a registered teacher name)")
    return Checkpoint(path)


def _base_arch(name: str) -> str:
    derived = parse_derived(name)
    return derived.base if derived else name


def _build(name: str, num_classes: int | None, host: PluginHost, kwargs: dict[str, Any]) -> nn.Module:
    spec = host.models.get(name)
    classes = spec.default_num_classes if num_classes is None else num_classes
    return spec.builder(num_classes=classes, **kwargs)


def _pruned(
    state: dict[str, Any], path: Path, name: str, num_classes: int | None, host: PluginHost, weights: bool
) -> nn.Module:
    """Return the pruned model of archive ``state`` (a ``name``, of ``num_classes`` if given)."""
    if num_classes is not None and state.get("num_classes") != num_classes:
        raise CheckpointError(f"{path} holds a {state.get('num_classes')}-class model, not {num_classes} classes")
    return model_from_archive(state, host, path, weights=weights, arch=_base_arch(name))


def _load_weights(model: nn.Module, weights: Any, path: Path, name: str) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit {name}: {str(exc).splitlines()[0]}") from None


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    architecture: str | os.PathLike[str] | None = None,
    teacher_root: str | os.PathLike[str] | None = None,
    host: PluginHost | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Return model ``name``: freshly initialised, or with ``weights`` (see the module docstring).

    ``num_classes`` defaults to the model spec's (a registered teacher's: its dataset's;
    a pruned archive's: its own). Extra keyword arguments go to the model builder.
    """
    if host is None:
        from kdbench._api import default_host

        host = default_host()
    root = None if teacher_root is None else Path(teacher_root)
    if name in host.teachers:
        teacher = host.teachers.get(name)
        if weights is not None:
            raise CheckpointError(f"{name} is a registered teacher and brings its own weights; do not pass weights")
        if num_classes is None and teacher.dataset in host.datasets:
            num_classes = host.datasets.get(teacher.dataset).num_classes
        name, weights = teacher.model, name
    if architecture is not None:
        path = Path(architecture)
        state = load_state(path, advice=f"check the pruned archive given for {name}")
        return _pruned(state, path, name, num_classes, host, weights=False)
    if weights is None:
        return _build(name, num_classes, host, kwargs)
    checkpoint = find_checkpoint(weights, host, root)
    state = load_state(checkpoint.path, advice=f"check the checkpoint given for {name}")
    if isinstance(state, dict) and state.get("format") == ARCHITECTURE_FORMAT:
        return _pruned(state, checkpoint.path, name, num_classes, host, weights=True)
    model = _build(name, num_classes, host, kwargs)
    key = checkpoint.state_key
    state_dict = state.get(key, state) if key and isinstance(state, dict) else state
    _load_weights(model, state_dict, checkpoint.path, name)
    return model
