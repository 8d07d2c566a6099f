"""The built-in suites: every TOML file shipped in ``benchmarks/suites/`` (package ``kdbench_suites``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kdbench import SuiteSpec, hookimpl, load_suite_file

__all__: list[str] = []


@hookimpl
def kdbench_register_suites() -> list[SuiteSpec]:
    root = resources.files("kdbench_suites")
    files = sorted((entry for entry in root.iterdir() if entry.name.endswith(".toml")), key=lambda e: e.name)
    return [load_suite_file(Path(str(entry))) for entry in files]
