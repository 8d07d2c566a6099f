"""CI wiring: every kdbench command the Makefile types must parse, and the drift checks must be part of
`.ci/run` and of the GitHub workflow (which only calls Makefile targets)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from kdbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboards.yml"
COMMAND = re.compile(r"\$\(BIN\)/kdbench\s+([^|&;#\n]+)")


def _makefile_commands() -> list[str]:
    return [match.group(1) for match in COMMAND.finditer((ROOT / "Makefile").read_text(encoding="utf-8"))]


def _workflow_steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["smoke-leaderboard"]["steps"]


@pytest.mark.parametrize("command", _makefile_commands())
def test_makefile_commands_parse(command: str) -> None:
    words = [word for word in shlex.split(command) if not re.fullmatch(r"\$\(\w+\)", word)]  # empty make variables
    build_parser().parse_args(words)  # an unknown option or sub-command exits 2
    if words[0] == "run":  # with what `make demo THREADS=1` adds
        build_parser().parse_args([*words, "--threads", "1"])


def test_drift_checks_run_in_ci_and_in_the_workflow() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make check-leaderboards" in ci and "make check-smoke" in ci
    make = _makefile_commands()
    assert any(c.startswith("leaderboard --check") for c in make)
    assert any(c.startswith("run --suite smoke") for c in make)
    assert any(c.startswith("compare leaderboards/smoke.jsonl") and "--fail-on" in c for c in make)
    runs = " ".join(step.get("run", "") for step in _workflow_steps())
    assert "make check-leaderboards" in runs and "make check-smoke" in runs
    assert any(str(step.get("uses", "")).startswith("actions/upload-artifact") for step in _workflow_steps())


def test_workflow_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = {line.split(":")[0] for line in makefile.splitlines() if re.match(r"^[\w-]+:", line)}
    called = [
        word
        for step in _workflow_steps()
        for line in step.get("run", "").splitlines()
        if line.strip().startswith("make ")
        for word in shlex.split(line)[1:]
        if "=" not in word
    ]
    assert called, "the workflow calls no Makefile target"
    for name in called:
        assert name in targets, f"workflow calls `make {name}`, which the Makefile does not define"
