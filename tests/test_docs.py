"""docs/writing-plugins.md stays true: every hook documented with its exact signature and exercised by a test,
no hook documented that does not exist, and the worked example package installs and passes its own tests."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import FunctionType

import pytest
from conftest import make_distribution

import kdbench
from kdbench import hookspecs, testing
from kdbench.testing import check_distiller

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "writing-plugins.md"
EXAMPLE = "kdbench-mimic"


def _hookspecs() -> dict[str, FunctionType]:
    """Return the functions of kdbench.hookspecs that carry pluggy's hookspec marker, by name."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: obj for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, marker)}


def _signature_text(function: FunctionType) -> str:
    """Return ``def name(arg: Type, ...) -> Return`` as written in the source (annotations are strings)."""
    signature = inspect.signature(function)
    params = ", ".join(
        name if p.annotation is inspect.Parameter.empty else f"{name}: {p.annotation}"
        for name, p in signature.parameters.items()
    )
    return f"def {function.__name__}({params}) -> {signature.return_annotation}"


def _example_files(text: str) -> dict[str, str]:
    """Return the worked example's files: each fenced block right after a line naming `kdbench-mimic/PATH`."""
    pattern = re.compile(rf"^`{EXAMPLE}/([^`]+)`:\n\n```\w*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return {path: body for path, body in pattern.findall(text)}


def _doc_problems(text: str) -> list[str]:
    """Return what the hook reference in ``text`` gets wrong: missing headings or signatures, unknown hooks."""
    specs, lines, problems = _hookspecs(), set(text.splitlines()), []
    for name, function in specs.items():
        if f"#### `{name}`" not in lines:
            problems.append(f"{name} has no heading")
        if _signature_text(function) not in lines:
            problems.append(f"the signature line `{_signature_text(function)}` is missing")
    documented = set(re.findall(r"^#+ `(kdbench_\w+)`", text, re.MULTILINE))
    defined = set(re.findall(r"def (kdbench_\w+)\(", text))
    problems += [f"{name} is documented but is no hook" for name in sorted((documented | defined) - set(specs))]
    return problems


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    assert {"kdbench_register_distillers", "kdbench_epoch_end"} <= set(_hookspecs())
    assert _doc_problems(DOC.read_text(encoding="utf-8")) == []


def test_doc_drift_is_detected() -> None:
    text = DOC.read_text(encoding="utf-8")
    renamed = text.replace("def kdbench_run_end(run: RunInfo, result: RunResult)", "def kdbench_run_end(run, result)")
    assert _doc_problems(renamed) == [
        "the signature line `def kdbench_run_end(run: RunInfo, result: RunResult) -> None` is missing"
    ]
    stale = text.replace("#### `kdbench_run_end`", "#### `kdbench_run_finished`")
    assert _doc_problems(stale) == [
        "kdbench_run_end has no heading",
        "kdbench_run_finished is documented but is no hook",
    ]


def test_signature_text_is_the_source_text() -> None:
    assert _signature_text(hookspecs.kdbench_epoch_end) == (
        "def kdbench_epoch_end(run: RunInfo, epoch: EpochRecord) -> None"
    )


def _call_text(function: object) -> str:
    """Return ``name(a, *, b=default)``: how the kit's table writes a function's parameters."""
    parts, star = [], False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(
            parameter.name if parameter.default is parameter.empty else f"{parameter.name}={parameter.default!r}"
        )
    return f"{function.__name__}({', '.join(parts)})"


def test_the_kits_checks_are_documented_with_their_parameters() -> None:
    text = DOC.read_text(encoding="utf-8")
    checks = [getattr(testing, name) for name in testing.__all__ if name.startswith("check_")]
    assert len(checks) == 4
    missing = [_call_text(check) for check in checks if f"| `{_call_text(check)}` |" not in text]
    assert not missing, f"docs/writing-plugins.md does not document {missing}"


def test_every_hook_is_implemented_by_some_test() -> None:
    paths = [path for path in sorted((REPO / "tests").glob("**/*.py")) if path.name != Path(__file__).name]
    sources = "\n".join(path.read_text(encoding="utf-8") for path in paths)
    missing = [name for name in _hookspecs() if not re.search(rf"^\s*def {name}\(", sources, re.MULTILINE)]
    assert not missing, f"no test implements {missing}"


def test_worked_example_files_are_all_there() -> None:
    files = _example_files(DOC.read_text(encoding="utf-8"))
    assert set(files) == {"pyproject.toml", "src/kdbench_mimic/__init__.py", "tests/test_mimic.py"}
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["entry-points"]["kdbench"] == {"mimic": "kdbench_mimic"}
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worked example written out of the doc into ``tmp_path/kdbench-mimic``; its module unloaded after."""
    root = tmp_path / EXAMPLE
    for path, body in _example_files(DOC.read_text(encoding="utf-8")).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body, encoding="utf-8")
    yield root
    for name in [n for n in sys.modules if n == "kdbench_mimic" or n.startswith("kdbench_mimic.")]:
        monkeypatch.delitem(sys.modules, name)


def test_worked_example_passes_the_kit_when_registered_in_code(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(example / "src"))
    module = importlib.import_module("kdbench_mimic")
    host = kdbench.create_plugin_host(strict=True, plugins=[("mimic", module)])
    assert host.distillers.owner("mimic") == "mimic"
    check_distiller("mimic", host=host)


def test_worked_example_installs_and_passes_its_own_tests(
    example: Path, fake_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Install" it as pip would: the package on the path, a dist-info with the pyproject's entry points.
    project = tomllib.loads((example / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    make_distribution(fake_site, project["name"], project["version"], project["entry-points"]["kdbench"], {})
    monkeypatch.syspath_prepend(str(example / "src"))
    host = kdbench.create_plugin_host(strict=True)
    assert host.distillers.owner("mimic") == "mimic"
    info = next(p for p in host.plugins if p.name == "mimic")
    assert (info.distribution, info.status, info.registers) == ("kdbench-mimic", "loaded", {"distillers": ["mimic"]})
    spec = importlib.util.spec_from_file_location("doc_test_mimic", example / "tests" / "test_mimic.py")
    assert spec is not None and spec.loader is not None
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    names = [name for name in vars(tests) if name.startswith("test_")]
    assert len(names) == 3
    for name in names:
        getattr(tests, name)()


def test_the_suite_example_for_plugin_tests_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    (example,) = [block for block in blocks if "def test_my_method_runs_a_suite" in block]
    namespace: dict[str, object] = {}
    exec(example.replace('"my_method"', '"kd"'), namespace)  # a first-party method stands in for yours
    namespace["test_my_method_runs_a_suite"](tmp_path)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the vanilla-trained teacher, then the method
