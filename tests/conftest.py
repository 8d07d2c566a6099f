"""Shared fixtures: plugin hosts, tiny suites on the embedded digits data, fake distributions."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import kdbench
from kdbench._plugins import PluginHost

TINY_SUITE = """
name = "tiny"
description = "two epochs on digits, for tests"
dataset = "digits"
distillers = ["vanilla", "kd"]
seeds = [0]
epoch_rule = "best"

[recipe]
epochs = 2
batch_size = 128
lr = 0.05
lr_milestones = [1]
eval_batch_size = 512

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"
"""


@pytest.fixture(scope="session")
def _session_threads() -> int:
    """torch's CPU thread count when the session started (what a fresh ``kdbench`` process uses)."""
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _torch_threads_restored(_session_threads: int) -> Iterator[None]:
    """Start and end every test with the session's CPU thread count.

    ``--threads`` in an in-process command changes it, also inside module-scoped fixtures that run
    before a test; a test comparing in-process numbers with a subprocess's needs the same count.
    """
    import torch

    torch.set_num_threads(_session_threads)
    yield
    torch.set_num_threads(_session_threads)


@pytest.fixture(scope="session")
def host() -> PluginHost:
    """The installed plugins, strict: a broken first-party plugin fails the tests."""
    return kdbench.create_plugin_host(strict=True)


@pytest.fixture
def tiny_suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE, encoding="utf-8")
    return path


def make_distribution(
    site: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """Write an installed-looking distribution (dist-info with entry points) and its modules into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kdbench]\n{lines}\n", encoding="utf-8")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path where tests install fake third-party distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in list(sys.modules):
        if name.startswith("kdbench_fake_"):
            del sys.modules[name]
