"""The results store: one SQLite row per run, and the sorted JSON lines committed beside a leaderboard.

A record is a plain dict with exactly the keys in ``COLUMNS``; the JSON columns
(config, curve, profile, versions) hold decoded Python values. The store refuses
any existing file it does not recognise, and never deletes, rewrites or
"repairs" it: a results database holds hours of GPU time.

The database uses SQLite's default rollback journal rather than WAL: runs write a
handful of rows minutes apart, so WAL's concurrency buys nothing, while a
single file without ``-wal``/``-shm`` companions is easier to copy and works on
network file systems. Concurrent writers wait up to ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from kdbench.errors import ResultsStoreError
from kdbench.files import atomic_write_text

__all__ = [
    "COLUMNS",
    "JSON_COLUMNS",
    "RESULT_FILE",
    "RESULT_STATUSES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "ResultsStore",
    "import_records",
    "jsonl_text",
    "open_store",
    "read_jsonl",
    "read_result_file",
    "read_result_files",
    "write_jsonl",
]

SCHEMA_NAME = "kdbench-results"
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

COLUMNS: tuple[str, ...] = (
    "run_id",
    "suite",
    "kind",
    "status",
    "config",
    "best_top1",
    "last_top1",
    "best_epoch",
    "curve",
    "profile",
    "wall_seconds",
    "versions",
    "device",
    "git_commit",
    "error",
    "created",
)
JSON_COLUMNS = frozenset({"config", "curve", "profile", "versions"})
KINDS = frozenset({"teacher", "student", "prune"})
STATUSES = frozenset({"finished", "diverged", "failed"})
RESULT_STATUSES = ("finished", "diverged")
#: The file a run leaves in its work directory when it ends: its record, as the store holds it.
RESULT_FILE = "result.json"
"""Statuses that are results: a diverged run is not retried, a failed one is."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        suite TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        best_top1 REAL,
        last_top1 REAL,
        best_epoch INTEGER,
        curve TEXT NOT NULL,
        profile TEXT,
        wall_seconds REAL,
        versions TEXT NOT NULL,
        device TEXT,
        git_commit TEXT,
        error TEXT,
        created TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS runs_suite ON runs (suite)",
)


def _untouched(path: Path, why: str) -> ResultsStoreError:
    """Return the error for an existing file that is not ours."""
    return ResultsStoreError(
        f"{path} is not a kdbench results database ({why}); the file was left untouched. "
        "Move it away or choose another results path."
    )


def _check_header(path: Path) -> None:
    """Raise unless ``path`` is missing, empty, or starts like an SQLite database."""
    if path.exists() and not path.is_file():
        raise _untouched(path, "not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResultsStoreError(f"cannot read results database {path}: {exc}") from None
    if head and head != SQLITE_MAGIC:
        raise _untouched(path, "not an SQLite file")


def _validate(path: Path, connection: sqlite3.Connection) -> bool:
    """Return True if the database holds no tables yet, False if it is ours; raise otherwise."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return True
    if "meta" not in tables:
        raise _untouched(path, f"an SQLite database without kdbench's marker; its tables: {', '.join(sorted(tables))}")
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError:
        raise _untouched(path, "an SQLite database whose meta table is not kdbench's") from None
    if meta.get("schema") != SCHEMA_NAME:
        raise _untouched(path, f"an SQLite database marked {meta.get('schema')!r}, not {SCHEMA_NAME!r}")
    _check_version(path, meta.get("version"))
    columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    missing = [name for name in COLUMNS if name not in columns]
    if missing:
        raise ResultsStoreError(f"results database {path} is damaged: table runs lacks {', '.join(missing)}")
    return False


def _check_version(path: Path, value: Any) -> None:
    """Raise unless ``value`` names a schema version this kdbench reads."""
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ResultsStoreError(f"results database {path} has an unreadable schema version {value!r}") from None
    if version > SCHEMA_VERSION:
        raise ResultsStoreError(
            f"results database {path} has schema version {version}, written by a newer kdbench; "
            f"this kdbench reads version {SCHEMA_VERSION}. Upgrade kdbench to use it."
        )
    if version < 1:
        raise ResultsStoreError(f"results database {path} has an unknown schema version {version}")


def _read_only_connection(path: Path, timeout: float) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise ResultsStoreError(f"cannot open results database {path}: {exc}") from None


def _validated_read_only(path: Path, timeout: float) -> tuple[sqlite3.Connection, bool]:
    """Return a read-only connection to the SQLite file ``path`` once it is validated, and whether it is empty."""
    connection = _read_only_connection(path, timeout)
    try:
        return connection, _validate(path, connection)
    except sqlite3.OperationalError as exc:
        connection.close()
        if "locked" in str(exc):
            raise ResultsStoreError(
                f"results database {path} is locked by another process (waited {timeout:g} s); try again"
            ) from None
        raise _untouched(path, f"SQLite cannot read it: {exc}") from None
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise _untouched(path, f"SQLite cannot read it: {exc}") from None
    except BaseException:
        connection.close()
        raise


def _inspect_read_only(path: Path, timeout: float) -> None:
    """Validate an existing file through a read-only connection, so a rejected file is never written."""
    if path.is_file():
        _validated_read_only(path, timeout)[0].close()


def _connect_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """Return a read-only connection to the existing kdbench results database ``path``."""
    if not path.is_file():
        raise ResultsStoreError(f"no results database at {path}")
    _check_header(path)
    connection, empty = _validated_read_only(path, timeout)
    if empty:
        connection.close()
        raise ResultsStoreError(f"{path} is an SQLite file without kdbench results (no tables)")
    return connection


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _encode(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """Return the row for ``record``; raise ValueError if it is not a well-formed run record."""
    values = dict(record)
    if values.get("created") is None:
        values["created"] = _now()
    missing = [name for name in COLUMNS if name not in values]
    unknown = sorted(set(values) - set(COLUMNS))
    if missing or unknown:
        raise ValueError(f"a run record needs exactly the keys {COLUMNS}; missing {missing}, unknown {unknown}")
    if not isinstance(values["run_id"], str) or not values["run_id"]:
        raise ValueError(f"run_id must be a non-empty string, got {values['run_id']!r}")
    if values["kind"] not in KINDS:
        raise ValueError(f"run {values['run_id']}: kind must be one of {sorted(KINDS)}, got {values['kind']!r}")
    if values["status"] not in STATUSES:
        raise ValueError(f"run {values['run_id']}: status must be one of {sorted(STATUSES)}, got {values['status']!r}")
    row = []
    for name in COLUMNS:
        value = values[name]
        if name in JSON_COLUMNS and not (name == "profile" and value is None):
            try:
                value = json.dumps(value, sort_keys=True, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"run {values['run_id']}: {name} is not JSON-serialisable: {exc}") from None
        row.append(value)
    return tuple(row)


class ResultsStore:
    """An SQLite results database at ``path``: one row per run, keyed by run id.

    The parent directory is created and a new (or empty) file gets the schema.
    An existing file that is not an SQLite database, an SQLite database without
    kdbench's marker, or one written by a newer kdbench raises ResultsStoreError
    and is left byte-identical. Use it as a context manager, or call ``close``.
    With ``read_only`` the database must already hold kdbench results, and
    nothing (not even a schema) is ever written to it.
    """

    def __init__(self, path: Path | str, timeout: float = 30.0, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            self._connection: sqlite3.Connection | None = _connect_read_only(self.path, timeout)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsStoreError(f"cannot create the directory of results database {self.path}: {exc}") from None
        _check_header(self.path)
        _inspect_read_only(self.path, timeout)
        try:
            self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise ResultsStoreError(f"cannot open results database {self.path}: {exc}") from None
        try:
            self._initialise()
        except BaseException:
            self.close()
            raise

    def _initialise(self) -> None:
        """Create the schema if the database is empty; then check it is intact and writable (before any work)."""
        try:
            with self._errors("open"):
                if _validate(self.path, self._db):
                    self._create_schema()
                self._check_integrity()
        except ResultsStoreError as exc:
            if "malformed" in str(exc):  # SQLite could not even read its schema
                raise self._damaged("database disk image is malformed") from None
            raise
        with self._errors("open"):
            self._probe_writable()

    def _damaged(self, finding: str) -> ResultsStoreError:
        return ResultsStoreError(
            f"results database {self.path} is damaged ({finding}); it was left untouched. Restore it from a "
            "copy, or rebuild a new one from the run directories: kdbench results import runs/ --results NEW.sqlite"
        )

    def _check_integrity(self) -> None:
        """Raise ResultsStoreError if SQLite's quick check finds the file damaged (it is left untouched)."""
        findings = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if findings != ["ok"]:
            lines = [line.strip() for finding in findings for line in finding.splitlines() if "***" not in line]
            raise self._damaged("; ".join(lines[:3]) + ("; …" if len(lines) > 3 else ""))

    def _probe_writable(self) -> None:
        """Raise ResultsStoreError unless a write would succeed (the probe is rolled back)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', '1')")
            finally:
                db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise ResultsStoreError(
                f"results database {self.path} cannot be written ({exc}); check the permissions of the file "
                "and its directory, or choose another --results"
            ) from None

    def _create_schema(self) -> None:
        """Create the tables, re-checking under the write lock against a racing writer."""
        with self._errors("open"):
            with self._transaction() as db:
                if _validate(self.path, db):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))],
                    )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ResultsStoreError(f"results database {self.path} is closed")
        return self._connection

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SQLite errors raised in the block into ResultsStoreError naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise ResultsStoreError(f"results database {self.path}: cannot {action}: {exc}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction: all of it is committed, or none."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; further calls raise ResultsStoreError."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def put(self, record: Mapping[str, Any]) -> bool:
        """Store one run record in one transaction; return whether it was stored.

        A ``failed`` record never replaces a stored result (``finished`` or ``diverged``): with two
        drivers on one store, a late failure cannot undo a success. ``created`` is filled in when absent.
        """
        row = _encode(record)
        placeholders = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in COLUMNS if name != "run_id")
        results = ", ".join(f"'{status}'" for status in RESULT_STATUSES)
        statement = (
            f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates} "
            f"WHERE NOT (excluded.status = 'failed' AND runs.status IN ({results}))"
        )
        with self._errors(f"store run {row[0]}"), self._transaction() as db:
            return db.execute(statement, row).rowcount > 0

    def get(self, run_id: str) -> dict[str, Any] | None:
        """Return the record of ``run_id``, or None if it is not stored."""
        with self._errors(f"read run {run_id}"):
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else self._decode(row)

    def __contains__(self, run_id: object) -> bool:
        with self._errors("look up a run"):
            return self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def finished_ids(self) -> set[str]:
        """Return the ids of runs that have a result (finished or diverged); failed runs are to be retried."""
        marks = ", ".join("?" for _ in RESULT_STATUSES)
        with self._errors("list finished runs"):
            rows = self._db.execute(f"SELECT run_id FROM runs WHERE status IN ({marks})", RESULT_STATUSES)
            return {row[0] for row in rows}

    def records(self, suite: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Return every stored record, optionally of one suite and/or status, sorted by run id."""
        clauses, params = [], []
        for name, value in (("suite", suite), ("status", status)):
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._errors("read runs"):
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM runs{where}", params).fetchall()
        return sorted((self._decode(row) for row in rows), key=lambda record: record["run_id"])

    def delete(self, run_id: str) -> bool:
        """Return whether ``run_id`` was stored, after deleting it."""
        with self._errors(f"delete run {run_id}"), self._transaction() as db:
            return db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0

    def _decode(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """Return the record of a row; raise ResultsStoreError naming the run if a JSON column is corrupt."""
        record = dict(zip(COLUMNS, row))
        for name in JSON_COLUMNS:
            text = record[name]
            if text is None and name == "profile":
                continue
            try:
                record[name] = json.loads(text)
            except (TypeError, ValueError) as exc:
                raise ResultsStoreError(
                    f"results database {self.path}: run {record['run_id']} has corrupt JSON in column {name}: {exc}"
                ) from None
        return record


def open_store(path: Path | str, timeout: float = 30.0) -> ResultsStore:
    """Return the ResultsStore at ``path`` (an alias of the constructor)."""
    return ResultsStore(path, timeout)


def jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    """Return ``records`` as JSON lines sorted by run id, keys sorted: same records, same text.

    Duplicate run ids raise ValueError, since their order would depend on the input's.
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for record in records:
        run_id = record.get("run_id")
        if not isinstance(run_id, str):
            raise ValueError(f"every record needs a string run_id, got {run_id!r}")
        if run_id in by_id:
            raise ValueError(f"run {run_id} appears twice")
        by_id[run_id] = record
    return "".join(json.dumps(by_id[run_id], sort_keys=True, ensure_ascii=False) + "\n" for run_id in sorted(by_id))


def write_jsonl(records: Iterable[Mapping[str, Any]], path: Path | str) -> None:
    """Write :func:`jsonl_text` of ``records`` to ``path``, replacing the file atomically."""
    atomic_write_text(path, jsonl_text(records))


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Return the records of a JSON-lines file; a malformed line raises ResultsStoreError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsStoreError(f"result records {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsStoreError(f"cannot read result records {path}: {exc}") from None
    records, lines = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ResultsStoreError(f"{path}:{number}: malformed JSON line: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
            raise ResultsStoreError(f"{path}:{number}: not a run record (a JSON object with a string run_id)")
        if record["run_id"] in lines:
            raise ResultsStoreError(
                f"{path}:{number}: run {record['run_id']} appears twice (also on line {lines[record['run_id']]})"
            )
        lines[record["run_id"]] = number
        records.append(record)
    return records


def read_result_file(run_dir: Path | str) -> dict[str, Any] | None:
    """Return the result record a run left in ``run_dir`` (``result.json``), or None if it has none.

    A file that is not a well-formed record of that directory's run raises ResultsStoreError naming it.
    """
    path = Path(run_dir) / RESULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsStoreError(f"cannot read result record {path}: {exc}") from None
    try:
        record = json.loads(text)
        _encode(record)
    except ValueError as exc:
        raise ResultsStoreError(f"{path} is not a result record: {exc}") from None
    if record["run_id"] != path.parent.name:
        raise ResultsStoreError(f"{path} holds run {record['run_id']}, not {path.parent.name}")
    return record


def read_result_files(runs: Path | str) -> list[dict[str, Any]]:
    """Return the result records under ``runs`` (``RUN_ID/result.json``), checked, sorted by run id."""
    root = Path(runs)
    if not root.is_dir():
        raise ResultsStoreError(f"no run directory at {root}")
    found = (read_result_file(path.parent) for path in sorted(root.glob(f"*/{RESULT_FILE}")))
    return [record for record in found if record is not None]


def import_records(store: ResultsStore, records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Put ``records`` into ``store`` (idempotent); return how many were new, updated, unchanged or kept.

    A failed record never replaces a stored result (finished or diverged): that one is ``kept``.
    """
    counts = {"new": 0, "updated": 0, "unchanged": 0, "kept": 0}
    for record in records:
        stored = store.get(record["run_id"])
        if stored == dict(record):
            counts["unchanged"] += 1
        elif not store.put(record):
            counts["kept"] += 1
        else:
            counts["new" if stored is None else "updated"] += 1
    return counts
