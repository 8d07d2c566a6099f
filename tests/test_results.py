"""The results store: round trips, queries, refusing foreign files untouched, transactions, JSON lines."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kdbench.errors import ResultsStoreError
from kdbench.results import (
    COLUMNS,
    SCHEMA_VERSION,
    ResultsStore,
    open_store,
    read_jsonl,
    write_jsonl,
)


def _record(run_id: str = "run-a", **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": run_id,
        "suite": "smoke",
        "kind": "student",
        "status": "finished",
        "config": {"student": "resnet8x4", "distiller": "kd", "seed": 0, "lr": 0.05, "note": "Schüler → 学生"},
        "best_top1": 73.3312345678901,
        "last_top1": 72.9,
        "best_epoch": 239,
        "curve": [{"epoch": 1, "lr": 0.05, "losses": {"ce": 4.2, "kd": 0.1}, "test_top1": 10.5, "seconds": 1.25}],
        "profile": {"params": 1234, "macs": 177000000, "latency": [{"batch_size": 1, "median_ms": 0.3}]},
        "wall_seconds": 12.5,
        "versions": {"torch": "2.4.0", "kdbench": "0.1.0", "python": "3.11.9", "plugins": {"kd": "0.1.0"}},
        "device": "cpu: Test CPU (2 threads)",
        "git_commit": "abc123",
        "error": "",
        "created": "2025-01-02T03:04:05+00:00",
    }
    record.update(changes)
    return record


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_a_new_store_creates_its_directory_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "results.sqlite"
    with ResultsStore(path) as store:
        assert store.records() == []
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT key, value FROM meta")) == {"schema": "kdbench-results", "version": "1"}
    assert [row[1] for row in db.execute("PRAGMA table_info(runs)")] == list(COLUMNS)
    db.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.sqlite"]


def test_put_get_round_trips_floats_and_unicode(tmp_path: Path) -> None:
    record = _record(best_top1=0.1 + 0.2, profile=None, error="NaN loss — Verlust 💥")
    with open_store(tmp_path / "r.sqlite") as store:
        store.put(record)
        assert store.get("run-a") == record
        assert store.get("missing") is None
    with ResultsStore(tmp_path / "r.sqlite") as store:  # and after reopening
        got = store.get("run-a")
        assert got == record
        assert got is not None and got["best_top1"] == 0.1 + 0.2


def test_put_fills_created_and_replaces_a_run(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        first = _record()
        del first["created"]
        store.put(first)
        got = store.get("run-a")
        assert got is not None and got["created"].endswith("+00:00")
        assert store.put(_record(status="diverged", best_top1=None)) is True  # a result replaces a result
        assert [(r["run_id"], r["status"]) for r in store.records()] == [("run-a", "diverged")]


def test_a_failure_never_replaces_a_result_but_replaces_a_failure(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(_record())
        assert store.put(_record(status="failed", error="late failure of a second driver")) is False
        assert store.get("run-a")["status"] == "finished" and store.get("run-a")["error"] == ""
        store.put(_record(run_id="run-b", status="failed", error="first"))
        assert store.put(_record(run_id="run-b", status="failed", error="second")) is True
        assert store.get("run-b")["error"] == "second"
        assert store.put(_record(run_id="run-b")) is True and store.get("run-b")["status"] == "finished"


def test_put_rejects_a_malformed_record(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="missing"):
            store.put({"run_id": "x"})
        with pytest.raises(ValueError, match="unknown"):
            store.put({**_record(), "extra": 1})
        with pytest.raises(ValueError, match="status"):
            store.put(_record(status="done"))
        with pytest.raises(ValueError, match="kind"):
            store.put(_record(kind="pupil"))
        with pytest.raises(ValueError, match="config"):
            store.put(_record(config={"bad": object()}))
        assert store.records() == []


def test_finished_ids_include_diverged_but_not_failed(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(_record("a", status="finished"))
        store.put(_record("b", status="diverged"))
        store.put(_record("c", status="failed"))
        assert store.finished_ids() == {"a", "b"}
        assert "c" in store and "z" not in store


def test_records_filter_by_suite_and_status_sorted_by_run_id(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for run_id, suite, status in [("d", "s1", "finished"), ("b", "s2", "failed"), ("a", "s1", "failed")]:
            store.put(_record(run_id, suite=suite, status=status))
        store.put(_record("c", suite="s1", status="finished"))
        assert [r["run_id"] for r in store.records()] == ["a", "b", "c", "d"]
        assert [r["run_id"] for r in store.records(suite="s1")] == ["a", "c", "d"]
        assert [r["run_id"] for r in store.records(status="failed")] == ["a", "b"]
        assert [r["run_id"] for r in store.records(suite="s1", status="finished")] == ["c", "d"]


def test_delete_removes_one_run(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(_record("a"))
        store.put(_record("b"))
        assert store.delete("a") is True
        assert store.delete("a") is False
        assert [r["run_id"] for r in store.records()] == ["b"]


def test_an_empty_existing_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    path.touch()
    with ResultsStore(path) as store:
        store.put(_record())
    with ResultsStore(path) as store:
        assert store.finished_ids() == {"run-a"}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(bytes(random.Random(0).getrandbits(8) for _ in range(5000)), id="random-bytes"),
        pytest.param(b"run_id,top1\nabc,73.1\n", id="csv"),
        pytest.param(b"SQLite fo", id="truncated-header"),
    ],
)
def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    with pytest.raises(ResultsStoreError) as error:
        ResultsStore(path)
    message = str(error.value)
    assert str(path) in message
    assert "not a kdbench results database" in message
    assert "left untouched" in message
    assert _bytes(path) == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def test_a_truncated_store_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for index in range(200):
            store.put(_record(f"run-{index:03d}", error="x" * 500))
    truncated = _bytes(path)[:3000]  # header intact, pages missing
    path.write_bytes(truncated)
    with pytest.raises(ResultsStoreError, match=r"r\.sqlite") as error:
        store = ResultsStore(path)
        store.records()  # should the open succeed, reading must still fail cleanly
    assert "kdbench results database" in str(error.value)
    assert _bytes(path) == truncated


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.execute("INSERT INTO songs VALUES ('la')")
    db.commit()
    db.close()
    before = _bytes(path)
    with pytest.raises(ResultsStoreError) as error:
        ResultsStore(path)
    message = str(error.value)
    assert str(path) in message and "not a kdbench results database" in message and "songs" in message
    assert "left untouched" in message
    assert _bytes(path) == before


def test_a_database_with_another_meta_marker_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema', 'someone-else')")
    db.commit()
    db.close()
    before = _bytes(path)
    with pytest.raises(ResultsStoreError, match="someone-else"):
        ResultsStore(path)
    assert _bytes(path) == before


def test_a_newer_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = _bytes(path)
    with pytest.raises(ResultsStoreError, match=r"schema version 2.*newer kdbench") as error:
        ResultsStore(path)
    assert str(path) in str(error.value)
    assert _bytes(path) == before


def test_a_corrupt_json_column_names_the_run(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(_record("good"))
        store.put(_record("bad-run"))
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET curve = '[{\"epoch\": 1,' WHERE run_id = 'bad-run'")
    db.commit()
    db.close()
    with ResultsStore(path) as store:
        assert store.get("good") is not None
        assert store.finished_ids() == {"good", "bad-run"}
        with pytest.raises(ResultsStoreError, match=r"bad-run.*curve"):
            store.get("bad-run")
        with pytest.raises(ResultsStoreError, match="bad-run"):
            store.records()


def test_a_failure_inside_put_leaves_previous_rows_intact(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(_record("a"))
        store.put(_record("b"))
    db = sqlite3.connect(path)  # make the write fail inside the transaction, after the row was changed
    for event in ("INSERT", "UPDATE"):
        db.execute(
            f"CREATE TRIGGER boom_{event} AFTER {event} ON runs WHEN NEW.status = 'diverged' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    db.commit()
    db.close()
    with ResultsStore(path) as store:
        with pytest.raises(ResultsStoreError, match=r"r\.sqlite.*run a.*boom"):
            store.put(_record("a", status="diverged", best_top1=1.0))
        assert store.records() == [_record("a"), _record("b")]
        store.put(_record("c"))  # the store is still usable
        assert [r["run_id"] for r in store.records()] == ["a", "b", "c"]


def test_two_connections_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path, timeout=5) as first, ResultsStore(path, timeout=5) as second:
        first.put(_record("a"))
        second.put(_record("b"))
        assert first.finished_ids() == second.finished_ids() == {"a", "b"}


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.close()
    store.close()
    with pytest.raises(ResultsStoreError, match="closed"):
        store.records()


def test_write_jsonl_is_byte_stable_for_shuffled_input(tmp_path: Path) -> None:
    records = [_record(f"run-{i}", best_top1=i / 7, config={"z": i, "a": "ü", "m": [3, 1]}) for i in range(20)]
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    first, second = tmp_path / "a.jsonl", tmp_path / "b" / "b.jsonl"
    write_jsonl(records, first)
    write_jsonl(shuffled, second)
    data = _bytes(first)
    assert data == _bytes(second)
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")
    lines = data.decode("utf-8").splitlines()
    assert len(lines) == 20
    assert [json.loads(line)["run_id"] for line in lines] == sorted(r["run_id"] for r in records)
    assert "ü" in lines[0]  # ensure_ascii=False
    assert lines[0].index('"best_epoch"') < lines[0].index('"config"') < lines[0].index('"run_id"')
    assert read_jsonl(first) == sorted(records, key=lambda r: r["run_id"])
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b"]  # no temporary left


def test_write_jsonl_rejects_duplicate_run_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        write_jsonl([_record("a"), _record("a", best_top1=1.0)], tmp_path / "x.jsonl")


def test_store_records_written_as_jsonl_read_back_equal(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(_record("b", profile=None))
        store.put(_record("a"))
        write_jsonl(store.records(), tmp_path / "suite.jsonl")
        assert read_jsonl(tmp_path / "suite.jsonl") == store.records()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{"run_id": "a"}\n{"run_id": "b",\n', 2),
        ('{"run_id": "a"}\n\n[1, 2]\n', 3),
        ('{"top1": 1}\n', 1),
        ('{"run_id": "a", "best_top1": 1}\n{"run_id": "b"}\n{"run_id": "a", "best_top1": 2}\n', 3),  # twice
    ],
)
def test_read_jsonl_names_the_file_and_line_of_a_malformed_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "suite.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ResultsStoreError, match=rf"suite\.jsonl:{line}:"):
        read_jsonl(path)


def test_read_jsonl_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsStoreError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_a_read_only_store_reads_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(_record("run-a"))
    before = path.read_bytes()
    with ResultsStore(path, read_only=True) as store:
        assert [r["run_id"] for r in store.records()] == ["run-a"]
        with pytest.raises(ResultsStoreError):
            store.put(_record("run-b"))
    assert path.read_bytes() == before
    with pytest.raises(ResultsStoreError, match="no results database at"):
        ResultsStore(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(ResultsStoreError, match="without kdbench results"):
        ResultsStore(empty, read_only=True)
    assert empty.read_bytes() == b""
