"""Per-epoch metrics of every run as CSV and JSON lines, and a summary of how it ended.

On by default; disable it with ``-p no:epoch_log``. In the run's work directory:

- ``metrics.jsonl``: one object per epoch, the stored curve's fields plus ``run_id``;
- ``metrics.csv``: the same rows flat, one ``loss_<term>`` column per loss term
  (the union over epochs, in order of first appearance; empty where an epoch lacks it);
- ``summary.json``: status, best/last top-1, best epoch, wall seconds, error.

Both metrics files are rewritten atomically after every epoch. A resumed run
continues them without repeating an epoch, a restarted one replaces them, and at
the end of a run they are rewritten from its final curve, so they always equal
the curve stored in the results.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench import EpochRecord, KdbenchError, RunInfo, RunResult, hookimpl
from kdbench.files import atomic_write_text

__all__ = ["METRICS_CSV", "METRICS_JSONL", "SUMMARY_JSON", "read_metrics"]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
_COLUMNS = ("run_id", "phase", "epoch", "lr", "test_top1", "seconds")


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    """Return the epoch rows logged in ``work_dir`` so far (none when there is no metrics file)."""
    path = work_dir / METRICS_JSONL
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdbenchError(f"{path} is not valid JSON lines ({exc}); delete it to start the log afresh") from None


def _row(run_id: str, record: EpochRecord) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "phase": record.phase,
        "epoch": record.epoch,
        "lr": record.lr,
        "test_top1": record.test_top1,
        "seconds": record.seconds,
        "losses": dict(record.losses),
    }


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    terms = list(dict.fromkeys(term for row in rows for term in row["losses"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*_COLUMNS, *(f"loss_{term}" for term in terms)])
    for row in rows:
        losses = row["losses"]
        writer.writerow([*(row[column] for column in _COLUMNS), *(losses.get(term, "") for term in terms)])
    return buffer.getvalue()


def _write_metrics(work_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work_dir / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_text(work_dir / METRICS_CSV, _csv_text(rows))


_rows: dict[Path, list[dict[str, Any]]] = {}  # work dir of a run in progress → the rows logged so far


@hookimpl
def kdbench_run_start(run: RunInfo) -> None:
    """Load the rows an earlier attempt logged (a resumed run continues them); drop its summary."""
    (run.work_dir / SUMMARY_JSON).unlink(missing_ok=True)
    _rows[run.work_dir] = read_metrics(run.work_dir)


@hookimpl
def kdbench_epoch_end(run: RunInfo, epoch: EpochRecord) -> None:
    """Append the epoch, first dropping its row and every later one if an earlier attempt logged them."""
    if run.work_dir not in _rows:  # a run_start this plugin did not see (e.g. enabled mid-run)
        _rows[run.work_dir] = read_metrics(run.work_dir)
    rows = _rows[run.work_dir]
    key = (epoch.phase, epoch.epoch)
    del rows[next((i for i, row in enumerate(rows) if (row["phase"], row["epoch"]) == key), len(rows)) :]
    rows.append(_row(run.run_id, epoch))
    _write_metrics(run.work_dir, rows)


@hookimpl
def kdbench_run_end(run: RunInfo, result: RunResult) -> None:
    """Write ``summary.json``; rewrite the metrics from the run's final curve.

    The curve also holds epochs no ``epoch_end`` reported: one checkpointed just
    before a kill, and the epoch a diverged run stopped at.
    """
    _rows.pop(run.work_dir, None)
    if result.curve:
        _write_metrics(run.work_dir, [_row(run.run_id, record) for record in result.curve])
    summary = {
        "run_id": run.run_id,
        "status": result.status,
        "best_top1": result.best_top1,
        "last_top1": result.last_top1,
        "best_epoch": result.best_epoch,
        "epochs": len(result.curve),
        "wall_seconds": round(result.wall_seconds, 3),
        "error": result.error,
    }
    run.work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.work_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
