"""The code draws the layer picture of docs/architecture.md: imports only go down, torch-free layers stay so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kdbench"

#: Layer of every kdbench module (docs/architecture.md, bottom first); a module imports only lower or equal layers.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        [
            "errors",
            "files",
            "locks",
            "specs",
            "suites",
            "records",
            "hookspecs",
            "derived",
            "distiller",
            "features",
            "augment",
            "losses",
            "executors",
            "stream",
            "distributed",
        ],
        0,
    ),
    **dict.fromkeys(["_plugins", "_api"], 1),
    **dict.fromkeys(["plan", "schedule"], 2),
    "profile": 3,
    "pruning": 4,
    "weights": 5,
    **dict.fromkeys(["engine", "cohort", "table"], 6),
    "results": 7,
    **dict.fromkeys(["runner", "drive"], 8),
    **dict.fromkeys(["publish", "leaderboard", "plots", "reports"], 9),
    **dict.fromkeys(["cli", "testing", "scaffold", "__init__", "__main__"], 10),
}
#: Modules that never import torch, the engine or the runner at import time (what boards and --check load).
TORCH_FREE = {"errors", "files", "locks", "specs", "suites", "records", "hookspecs", "derived", "_plugins", "_api",
              "plan", "schedule", "results", "publish", "leaderboard", "plots", "reports", "cli", "executors",
              "stream", "distributed", "__init__"}  # fmt: skip
#: Publishing renders from files: never from the engine, runner, weights or pruning, even lazily.
NEVER = {"publish": {"engine", "runner", "weights", "pruning", "profile"}}
NEVER |= {name: NEVER["publish"] for name in ("leaderboard", "plots", "reports", "plan", "schedule")}
NEVER["results"] = NEVER["publish"]
NEVER["engine"] = {"runner", "plan", "schedule", "publish", "_plugins", "_api", "cli"}  # built objects in: no plan
NEVER |= {name: NEVER["engine"] for name in ("cohort", "table")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[str, int, bool, list[str]]]:
    """Return (imported module, line, at module level, imported names) for every import outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    top_level = {id(node) for node in tree.body} | {
        id(child) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for child in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top_level, [a.name for a in node.names]))
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert {_module_name(path) for path in _sources()} == set(LAYERS)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = _module_name(path)
    problems = []
    for target, line, top, _ in _imports(path):
        top_name = target.split(".")[0]
        if top_name == "torch" and top and module in TORCH_FREE:
            problems.append(f"line {line}: imports torch at import time")
        if top_name != "kdbench" or target == "kdbench":
            continue
        imported = target.split(".")[1]
        if imported == module:
            continue
        if LAYERS[imported] > LAYERS[module]:
            problems.append(
                f"line {line}: {module} (layer {LAYERS[module]}) imports {imported} (layer {LAYERS[imported]})"
            )
        if imported in NEVER.get(module, set()):
            problems.append(f"line {line}: {module} must never import {imported}")
        if top and module in TORCH_FREE and imported not in TORCH_FREE:
            problems.append(f"line {line}: torch-free {module} imports {imported} at import time")
    assert not problems, f"{path.relative_to(REPO)}: " + "; ".join(problems)


def _private_imports(path: Path) -> list[str]:
    own = _module_name(path) if path.is_relative_to(PACKAGE) else None
    return [
        f"{path.relative_to(REPO)}:{line}: {target}.{name}"
        for target, line, _, names in _imports(path)
        if target.startswith("kdbench.") and target.split(".")[1] != own
        for name in names
        if name.startswith("_")
    ]


def test_no_caller_imports_a_private_name_of_another_module() -> None:
    paths = [*_sources(), *sorted((REPO / "plugins").rglob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py"))]
    found = [problem for path in paths for problem in _private_imports(path)]
    assert found == []
