"""Plugins use only kdbench's public API: the ``__all__`` names of a handful of public modules.

First-party plugins get no private door into the core (datasette's rule): every
``.py`` file under ``plugins/`` (the example pip package included) is parsed,
and each import from kdbench, and each attribute read through an imported
kdbench module, must name something public. The checker is itself tested on
bad sources, so the walk cannot pass vacuously.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import kdbench

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"

#: The modules whose ``__all__`` names plugins may use; everything else in kdbench is internal.
PUBLIC_MODULES = (
    "kdbench",
    "kdbench.augment",
    "kdbench.errors",
    "kdbench.files",
    "kdbench.losses",
    "kdbench.pruning",
    "kdbench.executors",
    "kdbench.stream",
    "kdbench.testing",
)
_SUBMODULES = frozenset(name.removeprefix("kdbench.") for name in PUBLIC_MODULES if name != "kdbench")


def _exported(module: str) -> frozenset[str]:
    """Return the ``__all__`` of public module ``module``."""
    return frozenset(importlib.import_module(module).__all__)


def _is_kdbench(module: str) -> bool:
    return module == "kdbench" or module.startswith("kdbench.")


class _PublicUseChecker(ast.NodeVisitor):
    """Collect ``(line, what)`` for every import or attribute read that reaches past kdbench's public API."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name → the kdbench module it is bound to
        self.problems: list[tuple[int, str]] = []

    def _report(self, node: ast.AST, what: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not _is_kdbench(alias.name):
                continue
            if alias.name not in PUBLIC_MODULES:
                self._report(node, f"import {alias.name} (not a public module)")
            elif alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases["kdbench"] = "kdbench"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not _is_kdbench(module):
            return
        names = ", ".join(alias.name for alias in node.names)
        if module not in PUBLIC_MODULES:
            self._report(node, f"from {module} import {names} ({module} is not a public module)")
            return
        exported = _exported(module)
        for alias in node.names:
            if alias.name in exported:
                continue
            if module == "kdbench" and alias.name in _SUBMODULES:
                self.aliases[alias.asname or alias.name] = f"kdbench.{alias.name}"
                continue
            self._report(node, f"from {module} import {alias.name} ({alias.name} is not in {module}.__all__)")

    def _module_of(self, node: ast.expr) -> str | None:
        """Return the kdbench module ``node`` evaluates to (``kdbench``, ``kdbench.losses``, …), or None."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute) and self._module_of(node.value) == "kdbench" and node.attr in _SUBMODULES:
            return f"kdbench.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        module = self._module_of(node.value)
        if module is not None:
            public = node.attr in _exported(module) or (module == "kdbench" and node.attr in _SUBMODULES)
            if not public:
                self._report(node, f"{module}.{node.attr} (not in {module}.__all__)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and _is_kdbench(first.value):
                if first.value not in PUBLIC_MODULES:
                    self._report(node, f"{name}({first.value!r}) (not a public module)")
        self.generic_visit(node)


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """Return ``"FILE:LINE: what"`` for each use of a non-public kdbench module or name in ``source``."""
    checker = _PublicUseChecker()
    checker.visit(ast.parse(source, filename))
    return [f"{filename}:{line}: {what}" for line, what in sorted(checker.problems)]


def _plugin_files() -> list[Path]:
    return sorted(path for path in PLUGINS.rglob("*.py") if "__pycache__" not in path.parts)


def _undefined_exports(path: Path) -> list[str]:
    """Return the names in the module's ``__all__`` that it neither defines nor (as a package) imports from itself."""
    own: set[str] = set()
    exported: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    own.add(target.id)
                    if target.id == "__all__" and node.value is not None:
                        exported = list(ast.literal_eval(node.value))
        own_package = path.name == "__init__.py" and isinstance(node, ast.ImportFrom)
        if own_package and (node.level or (node.module or "").startswith(f"{path.parent.name}.")):
            own.update(alias.asname or alias.name for alias in node.names)
    return [name for name in exported if name not in own]


# ---------------------------------------------------------------------------------------------------------------------
# The public modules


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_modules_declare_all_and_define_every_name_in_it(module: str) -> None:
    imported = importlib.import_module(module)
    exported = getattr(imported, "__all__", None)
    assert isinstance(exported, (list, tuple)), f"{module} defines no __all__"
    assert len(set(exported)) == len(exported), f"{module}.__all__ repeats a name"
    missing = [name for name in exported if not hasattr(imported, name)]
    assert not missing, f"{module}.__all__ names undefined {missing}"


def test_kdbench_top_level_names_do_not_shadow_public_submodules() -> None:
    assert not _SUBMODULES & set(kdbench.__all__)


# ---------------------------------------------------------------------------------------------------------------------
# The checker


@pytest.mark.parametrize(
    ("source", "culprit"),
    [
        ("from kdbench._api import default_host\n", "kdbench._api is not a public module"),
        ("from kdbench.suites import load_suite_file\n", "kdbench.suites is not a public module"),
        ("from kdbench.pruning._structured import _SafeGroups\n", "kdbench.pruning._structured"),
        ("from kdbench.pruning import _SafeGroups\n", "_SafeGroups is not in kdbench.pruning.__all__"),
        ("from kdbench.losses import _non_target\n", "_non_target is not in kdbench.losses.__all__"),
        ("from kdbench import default_host\n", "default_host is not in kdbench.__all__"),
        ("import kdbench.engine\n", "import kdbench.engine"),
        ("import kdbench.specs as specs\n", "import kdbench.specs"),
        ("import kdbench\nx = kdbench.default_host\n", "kdbench.default_host"),
        ("import kdbench\nx = kdbench.engine.train_run\n", "kdbench.engine"),
        ("import kdbench.losses\nx = kdbench.losses._non_target\n", "kdbench.losses._non_target"),
        ("import kdbench as kb\nx = kb.suites\n", "kdbench.suites"),
        ("from kdbench import losses\nx = losses.nope\n", "kdbench.losses.nope"),
        ("import importlib\nm = importlib.import_module('kdbench._plugins')\n", "kdbench._plugins"),
    ],
)
def test_checker_reports_private_imports_and_names(source: str, culprit: str) -> None:
    problems = private_uses("\n" * 4 + source, "plugins/bad.py")
    assert len(problems) == 1, problems
    assert problems[0].startswith("plugins/bad.py:5: ") or problems[0].startswith("plugins/bad.py:6: ")
    assert culprit in problems[0]


def test_checker_accepts_public_imports_and_names() -> None:
    source = """
import kdbench
import kdbench.losses
import kdbench.pruning as pruning
import kdbench_plugins.distillers.kd
from kdbench import Distiller, hookimpl, load_suite_file, losses
from kdbench.augment import rand_augment
from kdbench.errors import DataNotFoundError
from kdbench.files import atomic_write_text
from kdbench.pruning import Pruner
from kdbench.testing import check_distiller
from kdbench_plugins.distillers.kd import KD

uses = (kdbench.Batch, kdbench.losses.kd_loss, kdbench.augment.OPS, pruning.PruneSettings, losses.dkd_parts)
"""
    assert private_uses(source) == []


# ---------------------------------------------------------------------------------------------------------------------
# The plugins


def test_plugins_use_only_public_kdbench_names() -> None:
    files = _plugin_files()
    assert len(files) > 40  # every first-party plugin and the example package, not an empty glob
    problems = [
        problem
        for path in files
        for problem in private_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert not problems, "plugins must use only public kdbench names:\n" + "\n".join(problems)


def test_plugins_export_only_what_they_define() -> None:
    problems = [f"{path.relative_to(REPO)}: {names}" for path in _plugin_files() if (names := _undefined_exports(path))]
    assert not problems, "names in a plugin's __all__ must be defined there:\n" + "\n".join(problems)


def test_export_check_sees_a_reexported_name(tmp_path: Path) -> None:
    module = tmp_path / "method.py"
    module.write_text("from kdbench.losses import kd_loss\n\n__all__ = ['Method', 'kd_loss']\n\nclass Method: ...\n")
    assert _undefined_exports(module) == ["kd_loss"]


def test_plugins_import_other_plugins_only_to_subclass_their_distillers() -> None:
    # A loss several plugins share lives in kdbench.losses; extending another method's Distiller may stay.
    problems = []
    for path in _plugin_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names if a.name.startswith("kdbench_plugins")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdbench_plugins"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    value = getattr(module, alias.name, None)
                    if not (isinstance(value, type) and issubclass(value, kdbench.Distiller)):
                        problems.append(f"{where}: from {node.module} import {alias.name} (not a Distiller class)")
    assert not problems, "\n".join(problems)
