"""``kdbench new-plugin``: the skeleton it writes installs (offline) and passes its own test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _plugin_env import make_plugin_env

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.scaffold import check_plugin_name, plugin_files, write_plugin
from kdbench.suites import parse_suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SKELETON = {
    "pyproject.toml",
    "README.md",
    "src/kdbench_my_method/__init__.py",
    "tests/test_my_method.py",
}


def test_skeleton_files_and_entry_point(tmp_path: Path) -> None:
    root = write_plugin("my_method", tmp_path)
    assert root == tmp_path / "kdbench-my_method"
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == SKELETON
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "kdbench-my_method"
    assert project["project"]["dependencies"] == ["kdbench"]
    assert project["project"]["entry-points"]["kdbench"] == {"my_method": "kdbench_my_method"}
    source = (root / "src/kdbench_my_method/__init__.py").read_text(encoding="utf-8")
    compile(source, "__init__.py", "exec")
    assert "class MyMethod(Distiller)" in source
    assert "@kdbench.hookimpl\ndef kdbench_register_distillers()" in source
    test = (root / "tests/test_my_method.py").read_text(encoding="utf-8")
    assert "check_distiller(spec)" in test and 'check_distiller("my_method")' in test
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "pip install -e" in readme and "pytest" in readme and "kdbench run --suite my_method-smoke.toml" in readme
    suite = parse_suite(tomllib.loads(readme.split("```toml\n")[1].split("```")[0]))
    assert suite.name == "my_method-smoke" and "my_method" in suite.distillers


def test_skeleton_distiller_registers_and_computes_kd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.nn.functional as F

    import kdbench

    root = write_plugin("my_method", tmp_path)
    monkeypatch.syspath_prepend(str(root / "src"))
    monkeypatch.delitem(sys.modules, "kdbench_my_method", raising=False)
    import kdbench_my_method as plugin

    host = kdbench.create_plugin_host(entry_points=False, plugins=[("my_method", plugin)], strict=True)
    spec = host.distillers.get("my_method")
    assert host.distillers.owner("my_method") == "my_method"
    distiller = spec.builder(None, None, None, **spec.defaults)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    terms = distiller.loss_terms(
        kdbench.Signals(logits),
        kdbench.Signals(logits),
        kdbench.Batch(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([0])),
        kdbench.Progress(epoch=0, epochs=1, step=0, steps_per_epoch=1),
    )
    assert set(terms) == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)  # identical logits: nothing to distil
    assert terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(logits, torch.tensor([0])).item())
    del sys.modules["kdbench_my_method"]


@pytest.mark.parametrize("name", ["MyMethod", "my-method", "1method", "_method", "method_", "my__method", "", "a" * 41])
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(KdbenchError, match="is not valid"):
        write_plugin(name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_keyword_and_taken_names_are_refused() -> None:
    with pytest.raises(KdbenchError, match="Python keyword"):
        check_plugin_name("class")
    with pytest.raises(KdbenchError, match="'kd' is already taken by kdbench"):
        plugin_files("kd")
    with pytest.raises(KdbenchError, match="'sdd_kd' is already a registered distiller"):  # plugin `sdd` has it
        plugin_files("sdd_kd")
    with pytest.raises(KdbenchError, match="a package kdbench_plugins is already installed"):
        plugin_files("plugins")


def test_existing_directory_needs_force(tmp_path: Path) -> None:
    root = write_plugin("my_method", tmp_path)
    (root / "README.md").write_text("edited by the author", encoding="utf-8")
    (root / "NOTES.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(KdbenchError, match=r"kdbench-my_method already exists and is not empty.*--force"):
        write_plugin("my_method", tmp_path)
    assert (root / "README.md").read_text(encoding="utf-8") == "edited by the author"
    write_plugin("my_method", tmp_path, force=True)
    assert (root / "README.md").read_text(encoding="utf-8").startswith("# kdbench-my_method")
    assert (root / "NOTES.txt").read_text(encoding="utf-8") == "keep me"
    (tmp_path / "kdbench-empty").mkdir()
    assert write_plugin("empty", tmp_path) == tmp_path / "kdbench-empty"  # an empty directory is fine


def test_cli_writes_skeleton_and_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "my_method", "--dir", str(tmp_path)]) == 0
    assert str(tmp_path / "kdbench-my_method") in capsys.readouterr().out
    assert main(["new-plugin", "my_method", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["new-plugin", "my_method", "--dir", str(tmp_path), "--force"]) == 0
    assert main(["new-plugin", "Bad-Name", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdbench: error: plugin name 'Bad-Name' is not valid")


@pytest.mark.slow
def test_generated_plugin_installs_offline_and_passes_its_own_test(tmp_path: Path) -> None:
    env = make_plugin_env(tmp_path / "env")
    root = write_plugin("my_method", tmp_path / "src")
    env.install(root)
    listed = env.kdbench("list", "distillers", "my_method")
    assert listed.returncode == 0, listed.stderr
    assert "my_method" in listed.stdout and "Hinton" in listed.stdout
    tests = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=root)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
