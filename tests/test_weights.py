"""The one door for weights: create_model(name, weights=…, architecture=…) for every kind of source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import kdbench
from kdbench import TeacherSpec, hookimpl
from kdbench.errors import CheckpointError
from kdbench.pruning import PruneSettings, prune_model, save_pruned
from kdbench.weights import create_model


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


class _Teachers:
    def __init__(self, sha256: str = "") -> None:
        self.sha256 = sha256

    @hookimpl
    def kdbench_register_teachers(self):
        spec = TeacherSpec(name="digits_cnn_l@lab", model="digits_cnn_l", dataset="digits", path="lab/l.pth")
        hashed = TeacherSpec(
            name="digits_cnn_m@lab", model="digits_cnn_m", dataset="digits", path="lab/m.pth", sha256=self.sha256
        )
        return [spec, hashed]


@pytest.fixture
def lab(tmp_path: Path) -> tuple[kdbench.PluginHost, Path, torch.nn.Module, torch.nn.Module]:
    """A host with two registered teachers whose files lie under tmp_path/teachers."""
    root = tmp_path / "teachers"
    (root / "lab").mkdir(parents=True)
    torch.manual_seed(5)
    large, medium = kdbench.create_model("digits_cnn_l", 10), kdbench.create_model("digits_cnn_m", 10)
    torch.save({"model": large.state_dict(), "epoch": 240}, root / "lab" / "l.pth")
    torch.save(medium.state_dict(), root / "lab" / "m.pth")  # a bare state_dict
    digest = hashlib.sha256((root / "lab" / "m.pth").read_bytes()).hexdigest()
    host = kdbench.create_plugin_host(plugins=[("lab", _Teachers(sha256=digest[:12]))])
    return host, root, large, medium


def test_a_registry_name_gives_a_fresh_model(host: kdbench.PluginHost) -> None:
    torch.manual_seed(0)
    first = create_model("digits_cnn_s", 7, host=host)
    torch.manual_seed(0)
    assert _equal(first, host.models.get("digits_cnn_s").builder(num_classes=7))
    assert first(torch.zeros(1, 1, 8, 8)).shape == (1, 7)
    assert kdbench.create_model is create_model  # the public door is this one


def test_a_registered_teacher_loads_from_the_teacher_root(lab) -> None:
    host, root, large, medium = lab
    by_name = create_model("digits_cnn_l@lab", teacher_root=root, host=host)  # its architecture and classes
    assert _equal(by_name, large)
    assert _equal(create_model("digits_cnn_l", 10, weights="digits_cnn_l@lab", teacher_root=root, host=host), large)
    assert _equal(create_model("digits_cnn_m@lab", teacher_root=root, host=host), medium)  # sha256 prefix checked
    missing = r"teacher 'digits_cnn_l@lab' not found at .*lab/l.pth nor in torch's hub cache .*; download it"
    with pytest.raises(CheckpointError, match=missing):
        create_model("digits_cnn_l@lab", teacher_root=root / "elsewhere", host=host)
    with pytest.raises(CheckpointError, match="brings its own weights"):
        create_model("digits_cnn_l@lab", weights=root / "lab" / "l.pth", teacher_root=root, host=host)


def test_a_teacher_file_that_is_not_the_published_one_is_refused(lab) -> None:
    host, root, _, _ = lab
    other = kdbench.create_model("digits_cnn_m", 10)
    torch.save(other.state_dict(), root / "lab" / "m.pth")
    with pytest.raises(CheckpointError, match="does not match its published sha256"):
        create_model("digits_cnn_m@lab", teacher_root=root, host=host)


def test_checkpoint_files_load_strictly_and_errors_name_file_and_model(host, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = kdbench.create_model("digits_cnn_m", 10)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    assert _equal(create_model("digits_cnn_m", 10, weights=path, host=host), model)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} does not fit digits_cnn_s"):
        create_model("digits_cnn_s", 10, weights=path, host=host)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} does not fit digits_cnn_m"):
        create_model("digits_cnn_m", 100, weights=path, host=host)  # the classifier's shape differs
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {broken} .*left as is"):
        create_model("digits_cnn_m", weights=broken, host=host)
    assert broken.read_bytes() == b"not a checkpoint"
    with pytest.raises(CheckpointError, match="not found"):
        create_model("digits_cnn_m", weights=tmp_path / "missing.pth", host=host)


def test_pruned_archives_rebuild_their_architecture(host, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = kdbench.create_model("digits_cnn_l", 10).eval()
    settings = PruneSettings(ratio=0.5, round_to=None)
    pruned = prune_model(host, model, "l1", {}, torch.zeros(1, 1, 8, 8), settings)
    path = tmp_path / "pruned.pt"
    save_pruned(pruned, "digits_cnn_l", 10, path)
    loaded = create_model("digits_cnn_l", weights=path, host=host)
    assert _equal(loaded, pruned)
    label = "pruned(digits_cnn_l, ratio=0.5, pruner=l1)"  # a derived student's name reaches its base
    assert _equal(create_model(label, 10, weights=path, host=host), pruned)
    torch.manual_seed(3)
    fresh = create_model("digits_cnn_l", architecture=path, host=host)
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pruned.state_dict().items()} and not _equal(fresh, pruned)
    with pytest.raises(CheckpointError, match="holds a pruned digits_cnn_l, not a digits_cnn_m"):
        create_model("digits_cnn_m", weights=path, host=host)
    with pytest.raises(CheckpointError, match="holds a 10-class model, not 100 classes"):
        create_model("digits_cnn_l", 100, weights=path, host=host)
    payload = torch.load(path, weights_only=True)
    del payload["architecture"]
    torch.save(payload, tmp_path / "incomplete.pt")
    with pytest.raises(CheckpointError, match="not a complete pruned archive"):
        create_model("digits_cnn_l", weights=tmp_path / "incomplete.pt", host=host)
