"""CI wiring: every kdbench command that CI, the Makefile and the GitHub workflow type must parse, and the
drift check must be part of both CI entry points."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from kdbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboards.yml"
COMMAND = re.compile(r"(?:\.venv/bin/|\$\(BIN\)/)kdbench\s+([^|&;#\n]+)")


def _workflow_commands() -> list[str]:
    steps = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["smoke-leaderboard"]["steps"]
    return [match.group(1) for step in steps for match in COMMAND.finditer(step.get("run", ""))]


def _makefile_commands() -> list[str]:
    return [match.group(1) for match in COMMAND.finditer((ROOT / "Makefile").read_text(encoding="utf-8"))]


@pytest.mark.parametrize("command", _workflow_commands() + _makefile_commands())
def test_ci_commands_parse(command: str) -> None:
    build_parser().parse_args(shlex.split(command))  # an unknown option or sub-command exits 2


def test_drift_check_runs_in_ci_and_in_the_workflow() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make check-leaderboards" in ci and "make check-smoke" in ci
    make = _makefile_commands()
    assert any(c.startswith("leaderboard --check") for c in make)
    assert any(c.startswith("run --suite smoke") for c in make)
    assert any(c.startswith("compare leaderboards/smoke.jsonl") and "--fail-on" in c for c in make)
    workflow = _workflow_commands()
    assert any(c.startswith("leaderboard --check") for c in workflow)
    assert any(c.startswith("run --suite smoke") for c in workflow)
    steps = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["smoke-leaderboard"]["steps"]
    assert any(str(step.get("uses", "")).startswith("actions/upload-artifact") for step in steps)
