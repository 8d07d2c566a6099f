"""Committed leaderboards depend only on committed files: a third-party plugin installed with pip leaves them fresh.

A package is built here (one distiller, one model, one suite, through the public API
only), installed offline into a throw-away environment, and the committed boards are
checked and re-rendered there: nothing is stale, nothing changes. Naming a suite
re-plans it with the installed plugins, so the new method appears as not run yet.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from _plugin_env import PluginEnv, make_plugin_env

REPO = Path(__file__).resolve().parents[1]
BOARDS = REPO / "leaderboards"

pytestmark = pytest.mark.slow

PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "kdbench-thirdparty"
version = "0.3.0"
dependencies = ["kdbench"]

[project.entry-points.kdbench]
thirdparty = "kdbench_thirdparty"
"""

MODULE = '''
"""A third-party kdbench plugin: one distiller, one model, one suite."""

import functools

import torch
import torch.nn.functional as F

import kdbench
from kdbench.losses import kd_loss
from kdbench.testing import TinyNet


class SharpKD(kdbench.Distiller):
    """KD at a lower temperature (a made-up method for the test)."""

    def __init__(self, student, teacher, context, temperature: float = 2.0, ce_weight: float = 0.5):
        super().__init__()
        self.temperature, self.ce_weight = temperature, ce_weight

    def loss_terms(self, student, teacher, batch, progress):
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "kd": kd_loss(student.logits, teacher.logits, self.temperature),
        }


@kdbench.hookimpl
def kdbench_register_distillers():
    return [kdbench.DistillerSpec(name="sharp_kd", builder=SharpKD, description="KD at T=2", citation="test 2026")]


@kdbench.hookimpl
def kdbench_register_models():
    build = functools.partial(TinyNet, (4, 4, 8, 16), in_channels=1)
    return [kdbench.ModelSpec(name="thirdparty_net", builder=build, description="a tiny net", input_size=(1, 8, 8))]


@kdbench.hookimpl
def kdbench_register_suites():
    pair = kdbench.PairSpec("digits_cnn_l", "thirdparty_net")
    return [kdbench.SuiteSpec(name="thirdparty", description="its own suite", dataset="digits", pairs=(pair,))]
'''


def _package(root: Path) -> Path:
    (root / "kdbench_thirdparty").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT), encoding="utf-8")
    (root / "kdbench_thirdparty" / "__init__.py").write_text(MODULE, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> PluginEnv:
    root = tmp_path_factory.mktemp("thirdparty")
    env = make_plugin_env(root / "env")
    env.install(_package(root / "source"))
    return env


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_package_is_installed_and_loaded_there(env: PluginEnv) -> None:
    plugins = _ok(env.kdbench("plugins"))
    line = next(line for line in plugins.splitlines() if line.startswith("thirdparty"))
    assert re.search(r"kdbench-thirdparty 0\.3\.0\s+loaded\s+distillers: sharp_kd; models: thirdparty_net", line)
    assert "thirdparty" in _ok(env.kdbench("list", "suites"))


def test_committed_boards_stay_fresh_and_byte_identical_with_it_installed(env: PluginEnv, tmp_path: Path) -> None:
    checked = _ok(env.kdbench("leaderboard", "--check", "--out", str(BOARDS)))
    assert "STALE" not in checked and checked.count("up to date") == len(list(BOARDS.glob("*.jsonl"))) + 1
    copy = Path(shutil.copytree(BOARDS, tmp_path / "boards"))
    _ok(env.kdbench("leaderboard", "--from-jsonl", "--out", str(copy)))
    comparison = filecmp.dircmp(BOARDS, copy)
    assert not comparison.left_only and not comparison.right_only
    _, mismatch, errors = filecmp.cmpfiles(BOARDS, copy, comparison.common_files, shallow=False)
    assert mismatch == [] and errors == []


def test_naming_a_suite_re_plans_it_with_the_installed_methods(env: PluginEnv, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(BOARDS, tmp_path / "boards"))
    _ok(env.kdbench("leaderboard", "--from-jsonl", "--suite", "smoke-methods", "--out", str(copy)))
    board = (copy / "smoke-methods.md").read_text(encoding="utf-8")
    assert re.search(r"\| student \| digits_cnn_m→digits_cnn_m \| sharp_kd +\| 0 +\| not run yet", board)
    assert "sharp_kd" in (copy / "smoke-methods.plan.json").read_text(encoding="utf-8")
    assert "sharp_kd" not in (BOARDS / "smoke-methods.plan.json").read_text(encoding="utf-8")
    checked = env.kdbench("leaderboard", "--check", "--out", str(copy))
    assert checked.returncode == 0, checked.stdout  # the re-planned board is consistent with its new plan
