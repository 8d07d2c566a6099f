"""Publishing: leaderboards as files — the records, the plan they were rendered with, markdown, plots, an index.

A board ``NAME`` in a directory is:

- ``NAME.jsonl``: the run records it shows (sorted JSON lines);
- ``NAME.plan.json``: the plan it was rendered with (the suite, every planned run, the
  family of each method) — the format ``kdbench plan -o`` writes;
- ``NAME.md`` and ``NAME-accuracy-vs-{macs,latency}.{svg,png}``;

and ``README.md`` indexes every board present in the directory. Rendering a board again
and ``--check`` read only these committed files (and kdbench's published reference
numbers): no plugin is loaded and nothing is re-planned, so installing or removing a
plugin never makes a committed board stale. Re-planning — new methods appear as "not
run yet" — happens only where a suite is named again (``kdbench leaderboard --suite X``),
by the caller, which then hands the new plan to :func:`write_board`.

This module imports neither torch nor the engine or runner.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kdbench.errors import KdbenchError
from kdbench.files import atomic_write_text
from kdbench.leaderboard import BoardSummary, RenderedBoard, load_reported, render_board, render_index
from kdbench.plan import Plan, TeacherCheck, run_from_config
from kdbench.plots import stale_plot_files, write_plots
from kdbench.results import ResultsStore, read_jsonl, write_jsonl

__all__ = [
    "INDEX_NAME",
    "PLAN_SUFFIX",
    "BoardCheck",
    "Boards",
    "merged_records",
    "teacher_checkpoints",
]

PLAN_SUFFIX = ".plan.json"
INDEX_NAME = "README.md"


def teacher_checkpoints(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Return the teacher checkpoints some records were produced with (architecture → checkpoint source)."""
    checkpoints = {}
    for record in records:
        if record.get("kind") == "teacher" and "evaluate_checkpoint" in (record.get("config") or {}):
            run = run_from_config(record["config"], "teacher")
            assert isinstance(run, TeacherCheck)
            checkpoints[run.model] = run.source
    return checkpoints


def merged_records(store: ResultsStore, wanted: set[str], jsonl: Path, warn: TextIO | None = None) -> list[dict]:
    """Return a board's records: the plan's runs from the database, plus every record the ``.jsonl`` holds.

    Rendering never drops what a board already publishes: runs missing from this database (another
    machine's, a fresh clone's) and runs the suite no longer plans (a changed recipe) are kept; the
    board shows only the planned ones. A run in both is taken from the database.
    """
    published = {r["run_id"]: r for r in read_jsonl(jsonl)} if jsonl.exists() else {}
    unplanned = sorted(set(published) - wanted)
    if unplanned:
        print(
            f"leaderboard {jsonl.stem}: kept {len(unplanned)} record(s) in {jsonl} that the suite no longer plans "
            f"(not shown; delete them from the file to drop them)",
            file=warn or sys.stderr,
        )
    for run_id in sorted(wanted):
        record = store.get(run_id)
        if record is not None:
            published[run_id] = record
    return list(published.values())


@dataclass(slots=True)
class BoardCheck:
    """What ``--check`` found: one line per board (fresh or stale), unified diffs, and the stale count."""

    lines: list[str] = field(default_factory=list)
    stale: int = 0


def _diff(path: Path, actual: str, expected: str, source: str) -> list[str]:
    return list(
        difflib.unified_diff(
            actual.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            fromfile=f"{path} (committed)",
            tofile=f"{path} (rendered from {source})",
        )
    )


class Boards:
    """The leaderboards of one directory: read, render, write and check them from their files alone."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.summaries: dict[str, BoardSummary] = {}
        self._reported = load_reported()

    def path(self, name: str, suffix: str) -> Path:
        """Return the path of board ``name``'s file with ``suffix`` (``.md``, ``.jsonl``, ``.plan.json``)."""
        return self.directory / f"{name}{suffix}"

    def names(self) -> list[str]:
        """Return the names of the boards present: every ``NAME.plan.json`` or ``NAME.jsonl``, sorted."""
        stems = {p.name[: -len(PLAN_SUFFIX)] for p in self.directory.glob(f"*{PLAN_SUFFIX}")}
        return sorted(stems | {p.stem for p in self.directory.glob("*.jsonl")})

    def plan(self, name: str) -> Plan:
        """Return the plan board ``name`` was rendered with."""
        path = self.path(name, PLAN_SUFFIX)
        if not path.exists():
            raise KdbenchError(
                f"board {name!r} in {self.directory} has no {path.name} (the plan it is rendered with); "
                f"write it with `kdbench leaderboard --from-jsonl --suite {name} --out {self.directory}`"
            )
        return Plan.load(path)

    def records(self, name: str) -> list[dict[str, Any]]:
        """Return the stored records of board ``name``."""
        path = self.path(name, ".jsonl")
        if not path.exists():
            raise KdbenchError(f"no stored records for leaderboard {name!r}: {path} is missing")
        return read_jsonl(path)

    def render(self, plan: Plan, records: list[dict[str, Any]]) -> RenderedBoard:
        """Return the board of ``plan`` from ``records``; remember its index row."""
        board = render_board(plan, records, self._reported)
        self.summaries[plan.suite.name] = board.summary
        return board

    def write(self, plan: Plan, records: list[dict[str, Any]]) -> str:
        """Write the board of ``plan``: records, plan, markdown, plots; return a one-line account."""
        name = plan.suite.name
        write_jsonl(records, self.path(name, ".jsonl"))
        plan.write(self.path(name, PLAN_SUFFIX))
        board = self.render(plan, read_jsonl(self.path(name, ".jsonl")))
        atomic_write_text(self.path(name, ".md"), board.markdown)
        touched = write_plots(name, board.plots, self.directory)
        summary = board.summary
        return (
            f"leaderboard {name}: {summary.stored}/{summary.planned} runs stored → {self.path(name, '.md')}; "
            f"{len(board.plots)} plot(s), {len(touched)} plot file(s) updated"
        )

    def rerender(self, name: str) -> str:
        """Render board ``name`` again from its committed plan and records; return a one-line account."""
        return self.write(self.plan(name), self.records(name))

    def index(self) -> str | None:
        """Return the README.md indexing every board that has its plan (None when there is none)."""
        rows = []
        for name in self.names():
            if not self.path(name, PLAN_SUFFIX).exists():
                continue  # not renderable: ``check`` names it
            if name not in self.summaries:
                self.render(self.plan(name), self.records(name))
            rows.append(self.summaries[name])
        return render_index(rows) if rows else None

    def write_index(self) -> Path | None:
        """Write the index of the boards present; return its path (None when there is no board)."""
        index = self.index()
        if index is None:
            return None
        path = self.directory / INDEX_NAME
        atomic_write_text(path, index)
        return path

    def check(self, names: Iterable[str] | None = None, fix: str = "kdbench leaderboard --from-jsonl") -> BoardCheck:
        """Return what is stale among boards ``names`` (default: all) and the index; writes nothing.

        Every board is checked even after a problem; a board that cannot be rendered counts as
        stale. ``fix`` is the command a stale line recommends.
        """
        report = BoardCheck()
        for name in names if names is not None else self.names():
            try:
                board = self.render(self.plan(name), self.records(name))
            except KdbenchError as exc:
                report.stale += 1
                report.lines.append(f"leaderboard {name}: CANNOT RENDER — {exc}")
                continue
            fresh = self._text_is_fresh(self.path(name, ".md"), board.markdown, f"{name}.jsonl", report)
            for path, why in stale_plot_files(name, board.plots, self.directory):
                report.lines.append(f"plot {path}: STALE ({why})")
                fresh = False
            if fresh:
                report.lines.append(f"leaderboard {name}: up to date")
            else:
                report.stale += 1
                report.lines.append(f"leaderboard {name}: STALE — run `{fix}`")
        index_path = self.directory / INDEX_NAME
        try:
            index = self.index() or ""
        except KdbenchError as exc:
            report.stale += 1
            report.lines.append(f"leaderboard index {index_path}: CANNOT RENDER — {exc}")
            return report
        if self._text_is_fresh(index_path, index, "every board", report):
            report.lines.append(f"leaderboard index {index_path}: up to date")
        else:
            report.stale += 1
            report.lines.append(f"leaderboard index {index_path}: STALE — run `{fix}`")
        return report

    @staticmethod
    def _text_is_fresh(path: Path, expected: str, source: str, report: BoardCheck) -> bool:
        actual = path.read_text(encoding="utf-8") if path.exists() else ""
        if actual == expected:
            return True
        report.lines.extend(_diff(path, actual, expected, source))
        return False
