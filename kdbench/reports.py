"""Results out: export records (CSV, JSON lines), compare two result sets cell by cell, show one run.

A *results source* is a SQLite results store, a ``.jsonl`` file as committed
beside a leaderboard, or a git object ``REV:PATH`` of either (read with
``git show``). Sources are only read: a store is opened only once it is known
to hold kdbench's schema, so reading never creates or changes a file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from kdbench.errors import KdbenchError, ResultsStoreError
from kdbench.leaderboard import cell_stats, mean_std_text
from kdbench.records import stored_latency_ms
from kdbench.results import SQLITE_MAGIC, ResultsStore, read_jsonl

__all__ = [
    "CSV_COLUMNS",
    "FAIL_ON",
    "METRICS",
    "CellDelta",
    "check_export_target",
    "compare_records",
    "find_run",
    "flat_row",
    "load_records",
    "render_comparison",
    "render_run",
    "select_records",
    "should_fail",
    "write_csv",
]

METRICS = ("best_top1", "last_top1")
FAIL_ON = ("drift", "missing", "environment", "any")
MIN_PREFIX = 4

CSV_COLUMNS: dict[str, str] = {
    "run_id": "the run's id (hash of its config)",
    "suite": "suite the run belongs to",
    "kind": "teacher, student or prune",
    "status": "finished, diverged or failed",
    "dataset": "dataset name",
    "teacher": "teacher architecture (empty without a teacher)",
    "student": "trained (or pruned) architecture",
    "method": "distiller name (vanilla, kd, …; prune for pruning runs)",
    "seed": "random seed",
    "epochs": "epochs of the recipe (fine-tuning epochs for pruning runs)",
    "best_top1": "best test top-1 (%) over the epochs",
    "last_top1": "test top-1 (%) after the last epoch",
    "best_epoch": "epoch of best_top1 (0-based)",
    "model_params": "parameters of the deployed model",
    "extra_params": "training-only parameters the method added",
    "macs": "multiply-accumulates at batch 1",
    "latency_b1_ms": "median latency at batch 1 (ms)",
    "latency_b256_ms": "median latency at batch 256 (ms)",
    "device": "device the run trained on",
    "wall_seconds": "wall time of the run (s)",
    "created": "when the record was stored (UTC, ISO 8601)",
    "git_commit": "commit of the code that produced the run",
    "kdbench_version": "kdbench version",
    "torch_version": "PyTorch version",
    "error": "error message of a failed or diverged run",
    "method_params": "method parameters (JSON)",
    "recipe": "training recipe (JSON)",
    "config": "the full resolved config (JSON)",
}
"""The CSV export's columns, in order, with what each holds; an absent value is an empty field."""


# --- reading sources -------------------------------------------------------------------------------------------------


def _store_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Return the records of the existing store at ``path`` (``name`` in messages) without writing anything."""
    try:
        with ResultsStore(path, read_only=True) as store:
            return store.records()
    except ResultsStoreError as exc:
        raise ResultsStoreError(str(exc).replace(str(path), name)) from None


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _file_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Return the records of a store or JSON-lines file at ``path``."""
    if not path.is_file():
        raise ResultsStoreError(f"{name} is not a file (expected a results database or a .jsonl file)")
    if path.stat().st_size == 0:
        if path.suffix == ".jsonl":
            return []  # a leaderboard of a suite with no stored run yet
        raise ResultsStoreError(f"{name} is empty: neither a results database nor result records")
    try:
        sqlite = _is_sqlite(path)
    except OSError as exc:
        raise ResultsStoreError(f"cannot read {name}: {exc}") from None
    if sqlite:
        return _store_records(path, name)
    if path.suffix in (".sqlite", ".sqlite3", ".db"):
        raise ResultsStoreError(f"{name} is not a kdbench results database (not an SQLite file)")
    try:
        return read_jsonl(path)
    except ResultsStoreError as exc:
        raise ResultsStoreError(str(exc).replace(str(path), name)) from None


def _git(source: str, *args: str) -> bytes:
    """Return the output of ``git ARGS SOURCE``; raise KdbenchError naming ``source`` if git cannot give it."""
    try:
        result = subprocess.run(["git", *args, source], capture_output=True, check=False)
    except OSError as exc:
        raise KdbenchError(f"cannot read {source}: git is not available ({exc})") from None
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KdbenchError(f"cannot read {source} from git: {reason[0] if reason else f'exit {result.returncode}'}")
    return result.stdout


def _git_show(source: str) -> bytes:
    """Return the bytes of git object ``REV:PATH`` (a file's content, or a tree's listing)."""
    return _git(source, "show")


def _checked(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Return ``records`` after checking the parts reports read have the types of a run record."""
    shapes = (("config", dict), ("curve", list), ("profile", (dict, type(None))), ("versions", dict))
    for record in records:
        for key, kind in shapes:
            if key in record and not isinstance(record[key], kind):
                raise ResultsStoreError(f"{name}: run {record['run_id']} has a malformed {key} ({record[key]!r:.60})")
    return records


def _git_object_type(source: str) -> str:
    """Return ``blob`` or ``tree`` for git object ``REV:PATH``."""
    return _git(source, "cat-file", "-t").decode().strip()


def _blob_records(source: str) -> list[dict[str, Any]]:
    inner = source.partition(":")[2]
    with tempfile.TemporaryDirectory(prefix="kdbench-compare-") as folder:
        copy = Path(folder) / (Path(inner).name or "records")
        copy.write_bytes(_git_show(source))
        return _checked(_file_records(copy, source), source)


def _tree_records(source: str) -> list[dict[str, Any]]:
    """Return the records of every ``*.jsonl`` file directly inside the git tree ``REV:DIR``."""
    listing = _git(source, "ls-tree", "-z", "--name-only").decode("utf-8", "surrogateescape")
    files = sorted(name for name in listing.split("\0") if name.endswith(".jsonl"))
    if not files:
        raise ResultsStoreError(f"{source} holds no *.jsonl result records")
    rev, _, directory = source.partition(":")
    prefix = f"{rev}:{directory.strip('/')}/" if directory.strip("/") else f"{rev}:"
    return _unique([_blob_records(prefix + name) for name in files])


def _directory_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Return the records of every ``*.jsonl`` file in the directory ``path`` (e.g. ``leaderboards/``)."""
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise ResultsStoreError(f"{name} holds no *.jsonl result records")
    return _unique([_checked(_file_records(file, str(file)), str(file)) for file in files])


def _unique(groups: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Return the records of several files once each (suites share runs, e.g. a teacher)."""
    seen: dict[str, dict[str, Any]] = {}
    for records in groups:
        for record in records:
            seen.setdefault(record["run_id"], record)
    return list(seen.values())


def load_records(source: str | Path) -> list[dict[str, Any]]:
    """Return every record of a results source.

    A source is a results database, a ``.jsonl`` file, a directory of ``*.jsonl`` files (``leaderboards/``),
    or the same in git: ``REV:PATH`` (``HEAD~1:leaderboards/smoke.jsonl``, ``v0.1:leaderboards``).
    """
    name = str(source)
    path = Path(source)
    if path.is_dir():
        return _directory_records(path, name)
    if path.exists():
        return _checked(_file_records(path, name), name)
    rev, sep, _ = name.partition(":")
    if not sep or not rev:
        raise ResultsStoreError(
            f"{name} not found (give a results database, a .jsonl file, a directory of them or a git REV:PATH)"
        )
    return _tree_records(name) if _git_object_type(name) == "tree" else _blob_records(name)


def check_export_target(output: Path, source: str | Path) -> None:
    """Refuse an export file that would overwrite its source, a results database, or is no writable file path."""
    if output.is_dir():
        raise KdbenchError(f"-o {output} is a directory; give a file path")
    if output.parent.exists() and not output.parent.is_dir():
        raise KdbenchError(f"-o {output}: {output.parent} is not a directory")
    if not output.exists():
        return
    source_path = Path(source)
    if source_path.exists() and output.resolve() == source_path.resolve():
        raise KdbenchError(f"-o {output} is the results source being exported; write to another file")
    if _is_sqlite(output):
        raise KdbenchError(f"-o {output} is an SQLite database (results?); refusing to overwrite it")


def select_records(
    records: Iterable[Mapping[str, Any]], suite: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Return the records of ``suite`` and/or with ``status`` (None: any)."""
    return [
        dict(r)
        for r in records
        if (suite is None or r.get("suite") == suite) and (status is None or r.get("status") == status)
    ]


# --- export ----------------------------------------------------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _epochs(config: Mapping[str, Any]) -> int | None:
    if "prune" in config:
        return config["prune"].get("finetune_epochs")
    return (config.get("recipe") or {}).get("epochs")


def _teacher_arch(config: Mapping[str, Any]) -> str | None:
    teacher = config.get("teacher")
    return teacher.get("arch") if isinstance(teacher, Mapping) else teacher


def flat_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return the CSV row of ``record``: one value per column of ``CSV_COLUMNS``."""
    config = record.get("config") or {}
    profile = record.get("profile") or {}
    versions = record.get("versions") or {}
    return {
        "run_id": record["run_id"],
        "suite": record.get("suite"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        "dataset": config.get("dataset"),
        "teacher": _teacher_arch(config),
        "student": config.get("student"),
        "method": config.get("distiller"),
        "seed": config.get("seed"),
        "epochs": _epochs(config),
        "best_top1": record.get("best_top1"),
        "last_top1": record.get("last_top1"),
        "best_epoch": record.get("best_epoch"),
        "model_params": profile.get("params"),
        "extra_params": profile.get("extra_params"),
        "macs": profile.get("macs"),
        "latency_b1_ms": stored_latency_ms(profile, 1),
        "latency_b256_ms": stored_latency_ms(profile, 256),
        "device": record.get("device"),
        "wall_seconds": record.get("wall_seconds"),
        "created": record.get("created"),
        "git_commit": record.get("git_commit"),
        "kdbench_version": versions.get("kdbench"),
        "torch_version": versions.get("torch"),
        "error": record.get("error"),
        "method_params": _json(config.get("params")),
        "recipe": _json(config.get("recipe")),
        "config": _json(config),
    }


def write_csv(records: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    """Write one CSV row per record, sorted by run id, with a header of ``CSV_COLUMNS``."""
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for record in sorted(records, key=lambda r: r["run_id"]):
        writer.writerow(flat_row(record))


# --- compare ---------------------------------------------------------------------------------------------------------


def _without_run_refs(value: Any) -> Any:
    """Return ``value`` without seeds and run-id references, which differ between seeds of one experiment."""
    if isinstance(value, Mapping):
        return {k: _without_run_refs(v) for k, v in value.items() if k not in ("seed", "run", "prune_run")}
    if isinstance(value, list):
        return [_without_run_refs(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class CellDelta:
    """One experiment (a config over seeds) in results A and B: values of the metric, delta of means, flag.

    The cell is defined by the config alone, not by the suite that stored a run: suites share runs (a
    teacher, a vanilla student), and a shared run is stored once, under the suite that ran it first.
    """

    dataset: str
    teacher: str
    student: str
    method: str
    variant: str
    a: tuple[float, ...]
    b: tuple[float, ...]
    delta: float | None
    flag: str
    """``""``, ``"drift"``, ``"only A"`` or ``"only B"``."""
    environment: str = ""
    """What differs between the environments of A's and B's runs (threads, device, torch, data, switches), or ``""``."""


def _cell_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Return (dataset, teacher, student, method, variant); variant hashes the rest of the config."""
    config = record.get("config") or {}
    rest = _without_run_refs({k: v for k, v in config.items() if k != "kdbench_config"})
    variant = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    teacher = _teacher_arch(config) or "—"
    return (
        str(config.get("dataset")),
        teacher,
        str(config.get("student")),
        str(config.get("distiller")),
        variant,
    )


#: What in a record's environment can change its numbers, and how to read it.
_ENVIRONMENT = {
    "threads": lambda r: (r.get("versions") or {}).get("threads"),
    "device": lambda r: r.get("device"),
    "torch": lambda r: (r.get("versions") or {}).get("torch"),
    "data": lambda r: ((r.get("versions") or {}).get("data") or {}).get("digest"),
    "switches": lambda r: ",".join(((r.get("versions") or {}).get("execution") or {}).get("switches", [])) or "none",
}


def _cells(records: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[str, ...], list[Mapping[str, Any]]]:
    cells: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("status") == "finished" and record.get(metric) is not None:
            cells.setdefault(_cell_key(record), []).append(record)
    return cells


def _environment_difference(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> str:
    """Return e.g. ``threads 2 vs 1`` for each environment field whose values differ between A and B."""
    parts = []
    for name, read in _ENVIRONMENT.items():
        values_a = sorted({str(read(r)) for r in a if read(r) is not None})
        values_b = sorted({str(read(r)) for r in b if read(r) is not None})
        if values_a and values_b and values_a != values_b:
            parts.append(f"{name} {'/'.join(values_a)} vs {'/'.join(values_b)}")
    return "; ".join(parts)


def compare_records(
    a: Iterable[Mapping[str, Any]],
    b: Iterable[Mapping[str, Any]],
    metric: str = "best_top1",
    tolerance: float = 0.5,
) -> list[CellDelta]:
    """Return one CellDelta per experiment in A or B (finished runs only), sorted by cell.

    Runs of one experiment differ only by seed; delta is mean(B) − mean(A), and a
    cell is flagged ``drift`` when ``|delta| > tolerance`` (percentage points).
    """
    if metric not in METRICS:
        raise KdbenchError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if tolerance < 0:
        raise KdbenchError(f"tolerance must not be negative, got {tolerance}")
    cells_a, cells_b = _cells(a, metric), _cells(b, metric)
    deltas = []
    for key in sorted(set(cells_a) | set(cells_b)):
        records_a, records_b = cells_a.get(key, []), cells_b.get(key, [])
        values_a = tuple(float(r[metric]) for r in records_a)
        values_b = tuple(float(r[metric]) for r in records_b)
        if values_a and values_b:
            delta = cell_stats(values_b)[0] - cell_stats(values_a)[0]
            flag = "drift" if abs(delta) > tolerance else ""
        else:
            delta, flag = None, "only A" if values_a else "only B"
        environment = _environment_difference(records_a, records_b)
        deltas.append(CellDelta(*key, a=values_a, b=values_b, delta=delta, flag=flag, environment=environment))
    return deltas


def _stats_text(values: Sequence[float]) -> str:
    return mean_std_text(values) if values else "—"


def render_comparison(deltas: Sequence[CellDelta], metric: str, tolerance: float) -> str:
    """Return the comparison as a GitHub-markdown table followed by a one-line summary."""
    headers = [
        "dataset",
        "teacher",
        "student",
        "method",
        "variant",
        "n A",
        "A",
        "n B",
        "B",
        "Δ (B − A)",
        "flag",
    ]
    differing = any(d.environment for d in deltas)
    if differing:
        headers.append("environment differs")
    rows = [
        [
            *(d.dataset, d.teacher, d.student, d.method, d.variant),
            *(len(d.a), _stats_text(d.a), len(d.b), _stats_text(d.b)),
            "—" if d.delta is None else f"{d.delta:+.2f}",
            d.flag,
            *([d.environment] if differing else []),
        ]
        for d in deltas
    ]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) if rows else "(no finished runs)"
    counts = {flag: sum(d.flag == flag for d in deltas) for flag in ("drift", "only A", "only B")}
    summary = (
        f"{len(deltas)} cells compared on {metric} (tolerance {tolerance:g}): "
        f"{counts['drift']} drift, {counts['only A']} only in A, {counts['only B']} only in B"
    )
    environments = sum(bool(d.environment) for d in deltas)
    if environments:
        summary += (
            f"; {environments} compare runs of different environments (threads, device, torch, data or speed switches)"
        )
    return f"{table}\n\n{summary}\n"


def should_fail(deltas: Iterable[CellDelta], fail_on: str | None) -> bool:
    """Return whether ``--fail-on fail_on`` (drift, missing, any or None) fails on ``deltas``."""
    if fail_on is None:
        return False
    if fail_on not in FAIL_ON:
        raise KdbenchError(f"--fail-on takes one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    flags = {d.flag for d in deltas}
    drift, missing = "drift" in flags, bool(flags & {"only A", "only B"})
    environment = any(d.environment for d in deltas)
    return {"drift": drift, "missing": missing, "environment": environment, "any": drift or missing}[fail_on]


# --- show ------------------------------------------------------------------------------------------------------------


def find_run(records: Sequence[Mapping[str, Any]], run_id: str, source: str) -> dict[str, Any]:
    """Return the record whose id is ``run_id`` or starts with it (at least 4 characters, unique)."""
    exact = [r for r in records if r["run_id"] == run_id]
    if exact:
        return dict(exact[0])
    run_id = run_id.lower()  # run ids are lower-case hex; accept what a reader copied in upper case
    hint = f"list the runs with `kdbench results export --format csv --results {source}`"
    if len(run_id) < MIN_PREFIX:
        raise KdbenchError(f"no run {run_id!r} in {source}; a run id prefix needs at least {MIN_PREFIX} characters")
    matches = sorted(r["run_id"] for r in records if r["run_id"].startswith(run_id))
    if not matches:
        raise KdbenchError(f"no run {run_id!r} in {source}; {hint}")
    if len(matches) > 1:
        shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise KdbenchError(f"run id prefix {run_id!r} is ambiguous in {source}: it matches {shown}")
    return dict(next(r for r in records if r["run_id"] == matches[0]))


def _pairs(mapping: Mapping[str, Any] | None) -> str:
    if not mapping:
        return "—"
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(mapping.items()))


def _epoch_note(epoch: Any) -> str:
    return "" if epoch is None else f" (epoch {epoch})"


def _top1(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def _config_rows(config: Mapping[str, Any]) -> list[list[str]]:
    teacher = config.get("teacher")
    if isinstance(teacher, Mapping):
        source = f"run {teacher['run']}" if teacher.get("run") else teacher.get("checkpoint")
        teacher_text = f"{teacher.get('arch')} ({source})" if source else str(teacher.get("arch"))
    else:
        teacher_text = "—" if teacher is None else str(teacher)
    rows = [
        ["dataset", config.get("dataset", "—")],
        ["teacher", teacher_text],
        ["student", config.get("student", "—")],
        ["method", config.get("distiller", "—")],
        ["params", _pairs(config.get("params"))],
        ["recipe", _pairs(config.get("recipe"))],
        ["seed", config.get("seed", "—")],
    ]
    shown = {"dataset", "teacher", "student", "distiller", "params", "recipe", "seed"}
    rows += [[key, json.dumps(value, sort_keys=True)] for key, value in sorted(config.items()) if key not in shown]
    return [[k, str(v)] for k, v in rows]


def _profile_rows(profile: Mapping[str, Any] | None) -> list[list[str]]:
    if not profile:
        return [["profile", "— (not profiled)"]]
    rows = [
        ["params", f"{profile['params']:,}" if profile.get("params") is not None else "—"],
        ["training-only params", f"{profile.get('extra_params') or 0:,}"],
        ["MACs", f"{profile['macs']:,}" if profile.get("macs") is not None else "—"],
    ]
    for entry in profile.get("latency") or ():
        rows.append([f"latency batch {entry['batch_size']}", f"{entry['median_ms']:.3f} ms median"])
    if profile.get("pruning"):
        rows.append(["pruning", json.dumps(profile["pruning"], sort_keys=True)])
    return rows


def _provenance_rows(record: Mapping[str, Any]) -> list[list[str]]:
    versions = dict(record.get("versions") or {})
    plugins = versions.pop("plugins", None)
    rows = [
        ["device", record.get("device") or "—"],
        ["versions", _pairs(versions)],
        ["git commit", record.get("git_commit") or "—"],
        ["created", record.get("created") or "—"],
        ["wall time", "—" if record.get("wall_seconds") is None else f"{record['wall_seconds']:.1f} s"],
    ]
    if plugins:
        rows.append(["plugins", _pairs(plugins)])
    return [[k, str(v)] for k, v in rows]


def _curve_table(curve: Sequence[Mapping[str, Any]]) -> str:
    if not curve:
        return "(no epochs recorded)"
    terms = sorted({term for entry in curve for term in entry.get("losses") or {}})
    rows = [
        [
            entry.get("epoch"),
            entry.get("phase", "main"),
            f"{entry['lr']:g}" if entry.get("lr") is not None else "—",
            *(f"{entry['losses'][t]:.4f}" if t in (entry.get("losses") or {}) else "—" for t in terms),
            _top1(entry.get("test_top1")),
            f"{entry['seconds']:.2f}" if entry.get("seconds") is not None else "—",
        ]
        for entry in curve
    ]
    headers = ["epoch", "phase", "lr", *(f"loss {t}" for t in terms), "test top-1", "seconds"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def render_run(record: Mapping[str, Any]) -> str:
    """Return a readable report of one run: config, outcome, profile, provenance and per-epoch curve."""
    outcome = [
        ["status", record.get("status")],
        ["best top-1", _top1(record.get("best_top1")) + _epoch_note(record.get("best_epoch"))],
        ["last top-1", _top1(record.get("last_top1"))],
    ]
    if record.get("error"):
        outcome.append(["error", record["error"]])
    sections = [
        f"run {record['run_id']} · suite {record.get('suite')} · {record.get('kind')}",
        tabulate(_config_rows(record.get("config") or {}), tablefmt="plain", disable_numparse=True),
        "result\n" + tabulate([[k, str(v)] for k, v in outcome], tablefmt="plain", disable_numparse=True),
        "profile\n" + tabulate(_profile_rows(record.get("profile")), tablefmt="plain", disable_numparse=True),
        "provenance\n" + tabulate(_provenance_rows(record), tablefmt="plain", disable_numparse=True),
        "curve\n" + _curve_table(record.get("curve") or ()),
    ]
    return "\n\n".join(sections) + "\n"
