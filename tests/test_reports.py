"""Results out: export round trips, per-cell comparison (stores, .jsonl, git REV:PATH), one run shown."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdbench.cli import main
from kdbench.reports import CSV_COLUMNS, compare_records, flat_row, load_records
from kdbench.results import ResultsStore, read_jsonl, write_jsonl


def _record(
    run_id: str,
    top1: float,
    *,
    seed: int = 0,
    student: str = "digits_cnn_s",
    method: str = "kd",
    teacher: str | None = "digits_cnn_l",
    params: dict[str, Any] | None = None,
    suite: str = "tiny",
    status: str = "finished",
    error: str = "",
) -> dict[str, Any]:
    config = {
        "kdbench_config": 1,
        "dataset": "digits",
        "student": student,
        "teacher": {"arch": teacher, "run": "teacher0run00000"} if teacher else None,
        "distiller": method,
        "params": params if params is not None else {"temperature": 4.0},
        "seed": seed,
        "recipe": {"epochs": 2, "lr": 0.05, "lr_milestones": [1]},
    }
    finished = status == "finished"
    return {
        "run_id": run_id,
        "suite": suite,
        "kind": "student",
        "status": status,
        "config": config,
        "best_top1": top1 if finished else None,
        "last_top1": top1 - 0.5 if finished else None,
        "best_epoch": 1 if finished else None,
        "curve": [
            {"epoch": 0, "phase": "init", "lr": 0.01, "losses": {"hint": 0.75}, "test_top1": 10.0, "seconds": 0.1},
            {"epoch": 0, "phase": "main", "lr": 0.05, "losses": {"ce": 1.5, "kd": 2.25}, "test_top1": 50.0},
            {"epoch": 1, "phase": "main", "lr": 0.005, "losses": {"ce": 0.5, "kd": 1.25}, "test_top1": top1},
        ],
        "profile": {
            "params": 6866,
            "extra_params": 12,
            "macs": 81600,
            "latency": [{"batch_size": 1, "median_ms": 0.163}, {"batch_size": 256, "median_ms": 0.8327}],
        }
        if finished
        else None,
        "wall_seconds": 3.25,
        "versions": {"kdbench": "0.1.0", "torch": "2.5.0", "python": "3.11.7", "plugins": {"kd": "0.1.0"}},
        "device": "cpu: test",
        "git_commit": "abc123",
        "error": error,
        "created": f"2026-01-0{seed + 1}T00:00:00+00:00",
    }


def _records() -> list[dict[str, Any]]:
    """Two cells of three seeds (kd on s, vanilla on m), one failed run, one run of another suite (own params)."""
    records = [_record(f"aaaa{seed}00000000000", 90.0 + seed, seed=seed) for seed in range(3)]
    records += [
        _record(
            f"bbbb{seed}00000000000", 80.0 + 2 * seed, seed=seed, student="digits_cnn_m", method="vanilla", teacher=None
        )
        for seed in range(3)
    ]
    records.append(_record("cccc000000000000", 0.0, status="failed", error='boom, "quoted"\nsecond line'))
    records.append(_record("dddd000000000000", 70.0, suite="other", params={"temperature": 2.0}))
    return records


def _store(path: Path, records: list[dict[str, Any]]) -> Path:
    with ResultsStore(path) as store:
        for record in records:
            store.put(record)
    return path


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    write_jsonl(records, path)
    return path


def _error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:"), captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _flag(table_line: str) -> str:
    """Return the flag column of a row of the comparison table."""
    return table_line.rstrip().rstrip("|").split("|")[-1].strip()


# --- export -----------------------------------------------------------------------------------------------------------


def test_export_jsonl_is_byte_identical_to_write_jsonl_and_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _store(tmp_path / "r.sqlite", _records())
    stored = ResultsStore(db).records()
    reference = _jsonl(tmp_path / "reference.jsonl", stored)

    assert main(["results", "export", "--format", "jsonl", "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.encode() == reference.read_bytes()

    target = tmp_path / "out" / "export.jsonl"
    assert main(["results", "export", "--format", "jsonl", "--results", str(db), "-o", str(target)]) == 0
    assert target.read_bytes() == reference.read_bytes()
    assert read_jsonl(target) == stored


def test_export_filters_by_suite_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.sqlite", _records())
    assert main(["results", "export", "--format", "jsonl", "--results", str(db), "--suite", "tiny"]) == 0
    ids = [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()]
    assert "dddd000000000000" not in ids and len(ids) == 7
    assert main(["results", "export", "--format", "jsonl", "--results", str(db), "--status", "failed"]) == 0
    ids = [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["cccc000000000000"]


def test_export_csv_reads_back_with_the_same_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records()
    db = _store(tmp_path / "r.sqlite", records)
    target = tmp_path / "runs.csv"
    assert main(["results", "export", "--format", "csv", "--results", str(db), "-o", str(target)]) == 0
    with target.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(CSV_COLUMNS)
        rows = {row["run_id"]: row for row in reader}
    assert set(rows) == {r["run_id"] for r in records}
    for record in records:
        expected = {k: "" if v is None else str(v) for k, v in flat_row(record).items()}
        assert rows[record["run_id"]] == expected

    kd = rows["aaaa200000000000"]
    assert float(kd["best_top1"]) == 92.0 and float(kd["last_top1"]) == 91.5
    assert (kd["teacher"], kd["student"], kd["method"], kd["seed"], kd["epochs"]) == (
        "digits_cnn_l",
        "digits_cnn_s",
        "kd",
        "2",
        "2",
    )
    assert (kd["model_params"], kd["extra_params"], kd["macs"]) == ("6866", "12", "81600")
    assert float(kd["latency_b1_ms"]) == 0.163 and float(kd["latency_b256_ms"]) == 0.8327
    assert json.loads(kd["method_params"]) == {"temperature": 4.0}
    assert json.loads(kd["config"]) == records[2]["config"]
    failed = rows["cccc000000000000"]
    assert failed["error"] == 'boom, "quoted"\nsecond line'
    assert failed["best_top1"] == "" and failed["macs"] == ""
    assert rows["bbbb000000000000"]["teacher"] == ""

    assert main(["results", "export", "--format", "csv", "--results", str(db)]) == 0
    assert capsys.readouterr().out == target.read_text(encoding="utf-8")


# --- compare ----------------------------------------------------------------------------------------------------------


def test_compare_with_itself_flags_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _jsonl(tmp_path / "a.jsonl", _records())
    db = _store(tmp_path / "b.sqlite", _records())
    assert main(["compare", str(a), str(db), "--fail-on", "any"]) == 0
    out = capsys.readouterr().out
    assert "drift" not in out.split("\n\n")[0] and "only" not in out.split("\n\n")[0]
    assert "3 cells compared on best_top1 (tolerance 0.5): 0 drift, 0 only in A, 0 only in B" in out
    assert out.startswith("| dataset")  # GitHub markdown table


def test_changed_top1_beyond_tolerance_is_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records()
    changed = copy.deepcopy(records)
    changed[0]["best_top1"] += 3.0  # kd cell: mean 91 → 92
    a, b = _jsonl(tmp_path / "a.jsonl", records), _jsonl(tmp_path / "b.jsonl", changed)

    assert main(["compare", str(a), str(b), "--fail-on", "drift"]) == 1
    out = capsys.readouterr().out
    drift_rows = [line for line in out.splitlines() if _flag(line) == "drift"]
    assert len(drift_rows) == 1 and "| kd " in drift_rows[0] and "+1.00" in drift_rows[0]
    assert "1 drift, 0 only in A, 0 only in B" in out
    assert main(["compare", str(a), str(b)]) == 0
    assert main(["compare", str(a), str(b), "--fail-on", "missing"]) == 0
    assert main(["compare", str(a), str(b), "--metric", "last_top1", "--fail-on", "drift"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--tolerance", "1.5", "--fail-on", "any"]) == 0
    assert "0 drift" in capsys.readouterr().out


def test_change_within_tolerance_is_not_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records()
    changed = copy.deepcopy(records)
    changed[0]["best_top1"] += 1.2  # mean moves by 0.4
    a, b = _jsonl(tmp_path / "a.jsonl", records), _jsonl(tmp_path / "b.jsonl", changed)
    assert main(["compare", str(a), str(b), "--fail-on", "drift"]) == 0
    out = capsys.readouterr().out
    assert "+0.40" in out and "0 drift" in out


def test_removed_cell_is_only_a_and_fails_on_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records()
    without_vanilla = [r for r in records if not r["run_id"].startswith("bbbb")]
    a, b = _jsonl(tmp_path / "a.jsonl", records), _jsonl(tmp_path / "b.jsonl", without_vanilla)
    assert main(["compare", str(a), str(b), "--fail-on", "missing"]) == 1
    out = capsys.readouterr().out
    only = [line for line in out.splitlines() if _flag(line) == "only A"]
    assert len(only) == 1 and "vanilla" in only[0] and "digits_cnn_m" in only[0]
    assert "0 drift, 1 only in A, 0 only in B" in out
    assert main(["compare", str(a), str(b), "--fail-on", "drift"]) == 0
    assert main(["compare", str(b), str(a), "--fail-on", "any"]) == 1
    assert "1 only in B" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--suite", "other", "--fail-on", "any"]) == 0
    assert "1 cells compared" in capsys.readouterr().out


def test_delta_is_difference_of_seed_means_within_one_cell() -> None:
    a = [_record(f"a{seed}", value, seed=seed) for seed, value in enumerate([90.0, 91.0, 95.0])]
    b = [_record(f"b{seed}", value, seed=seed) for seed, value in enumerate([93.5, 94.5])]
    b[0]["config"]["teacher"]["run"] = "another-teacher-run"  # a retrained teacher is the same experiment
    other = _record("c0", 50.0, params={"temperature": 2.0})  # other params: another cell
    cells = compare_records(a, [*b, other], tolerance=2.0)
    (cell,) = [c for c in cells if c.a]
    (other_cell,) = [c for c in cells if not c.a]
    assert cell.a == (90.0, 91.0, 95.0) and cell.b == (93.5, 94.5)
    assert cell.delta == pytest.approx(94.0 - 92.0)
    assert cell.flag == ""
    assert compare_records(a, b, tolerance=1.9)[0].flag == "drift"
    assert (other_cell.flag, other_cell.b, other_cell.delta) == ("only B", (50.0,), None)
    assert other_cell.variant != cell.variant
    assert compare_records(a, b, metric="last_top1")[0].delta == pytest.approx(2.0)
    assert compare_records([_record("a", 90.0)], [_record("b", 90.5)], tolerance=0.5)[0].flag == ""
    assert compare_records([_record("a", 90.0)], [_record("b", 89.25)], tolerance=0.5)[0].flag == "drift"


def test_one_experiment_stored_by_two_suites_is_one_cell() -> None:
    # Suites share runs (run ids hash the config, not the suite): a shared run keeps the suite that ran it first.
    a = [_record("a0", 90.0, suite="smoke")]
    b = [_record("a0", 90.0, suite="dist-smoke")]
    (cell,) = compare_records(a, b)
    assert (cell.flag, cell.delta) == ("", 0.0)


def test_failed_runs_are_not_results(tmp_path: Path) -> None:
    a = [_record("a0", 90.0)]
    b = [_record("b0", 90.0, status="failed")]
    assert [d.flag for d in compare_records(a, b)] == ["only A"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_compare_reads_git_revisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=kdbench", "-c", "user.email=kdbench@example.invalid", "-c", "commit.gpgsign=false"]
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))

    def commit(records: list[dict[str, Any]], message: str) -> None:
        _jsonl(repo / "board" / "tiny.jsonl", records)
        subprocess.run([*git, "add", "."], cwd=repo, check=True, capture_output=True)
        subprocess.run([*git, "commit", "-q", "-m", message], cwd=repo, check=True, capture_output=True)

    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, capture_output=True)
    records = _records()
    commit(records, "first")
    changed = copy.deepcopy(records)
    changed[3]["best_top1"] = 95.0  # vanilla cell: mean 82 → 87
    _store(repo / "board" / "tiny.sqlite", changed)
    commit(changed, "second")
    monkeypatch.chdir(repo)
    (repo / "board" / "tiny.sqlite").unlink()  # the store is read from git only

    assert main(["compare", "HEAD~1:board/tiny.jsonl", "HEAD:board/tiny.jsonl", "--fail-on", "drift"]) == 1
    out = capsys.readouterr().out
    assert "+5.00" in out and "1 drift" in out
    assert main(["compare", "HEAD:board/tiny.jsonl", "board/tiny.jsonl", "--fail-on", "any"]) == 0
    assert main(["compare", "HEAD~1:board/tiny.jsonl", "HEAD:board/tiny.sqlite", "--fail-on", "drift"]) == 1
    assert "1 drift" in capsys.readouterr().out
    capsys.readouterr()
    code = main(["compare", "HEAD~5:board/tiny.jsonl", "board/tiny.jsonl"])
    _error(capsys, code, "cannot read HEAD~5:board/tiny.jsonl from git")
    code = main(["compare", "HEAD:board/nope.jsonl", "board/tiny.jsonl"])
    _error(capsys, code, "HEAD:board/nope.jsonl")

    # Whole directories of leaderboard records, in the working tree or at a revision (two commits' results).
    assert main(["compare", "HEAD~1:board", "HEAD:board/", "--fail-on", "drift"]) == 1
    assert "+5.00" in capsys.readouterr().out
    assert main(["compare", "HEAD:board", "board", "--fail-on", "any"]) == 0
    whole_tree = capsys.readouterr().out
    main(["compare", "HEAD:board/tiny.jsonl", "board/tiny.jsonl"])
    assert whole_tree == capsys.readouterr().out  # the directory holds that one file: the same cells
    code = main(["compare", "HEAD:", "board"])  # the repository root holds no *.jsonl
    _error(capsys, code, "HEAD: holds no *.jsonl")
    commit_root = repo / "root.jsonl"
    commit_root.write_bytes((repo / "board" / "tiny.jsonl").read_bytes())
    subprocess.run([*git, "add", "."], cwd=repo, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "root"], cwd=repo, check=True, capture_output=True)
    assert main(["compare", "HEAD:", "board", "--fail-on", "any"]) == 0  # files at the root of a revision


def test_directory_sources_read_every_jsonl_once_and_empty_boards_are_no_records(tmp_path: Path) -> None:
    records = _records()
    board = tmp_path / "board"
    _jsonl(board / "one.jsonl", records[:2])
    _jsonl(board / "two.jsonl", records[1:])  # records[1] in both files: a run shared by two suites
    (board / "empty.jsonl").write_text("", encoding="utf-8")  # a suite with nothing stored yet
    (board / "notes.md").write_text("not records", encoding="utf-8")
    loaded = load_records(board)
    assert sorted(r["run_id"] for r in loaded) == sorted(r["run_id"] for r in records)
    assert load_records(board / "empty.jsonl") == []


# --- show -------------------------------------------------------------------------------------------------------------


def test_show_by_id_and_by_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.sqlite", _records())
    assert main(["show", "aaaa100000000000", "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run aaaa100000000000 · suite tiny · student")
    assert "digits_cnn_l (run teacher0run00000)" in out
    assert "temperature=4.0" in out and "lr_milestones=[1]" in out
    assert "91.00 (epoch 1)" in out and "90.50" in out  # best, last
    assert "6,866" in out and "81,600" in out and "0.163 ms" in out
    assert "abc123" in out and "torch=2.5.0" in out and "3.2 s" in out
    curve = out.split("\ncurve\n")[1].splitlines()
    header = ["epoch", "phase", "lr", "loss", "ce", "loss", "hint", "loss", "kd", "test", "top-1", "seconds"]
    assert curve[0].split() == header
    assert curve[2].split()[:7] == ["0", "init", "0.01", "—", "0.7500", "—", "10.00"]
    assert curve[4].split()[:7] == ["1", "main", "0.005", "0.5000", "—", "1.2500", "91.00"]
    assert all(re.fullmatch(r"\d+\.\d\d|—", row.split()[-1]) for row in (curve[2], curve[4]))

    assert main(["show", "aaaa1", "--results", str(db)]) == 0
    assert capsys.readouterr().out == out
    assert main(["show", "AAAA1", "--results", str(db)]) == 0  # as copied from an upper-cased listing
    assert capsys.readouterr().out == out
    assert main(["show", "cccc", "--results", str(db)]) == 0
    failed = capsys.readouterr().out
    assert 'boom, "quoted"' in failed
    assert "best top-1  —\n" in failed and "None" not in failed  # a failed run has no best epoch


def test_show_refuses_ambiguous_unknown_and_short_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.sqlite", _records())
    _error(capsys, main(["show", "aaaa", "--results", str(db)]), "ambiguous", "aaaa000000000000", "aaaa200000000000")
    _error(capsys, main(["show", "ffff", "--results", str(db)]), "no run 'ffff'", "kdbench results export")
    _error(capsys, main(["show", "aaa", "--results", str(db)]), "at least 4 characters")


# --- bad inputs -------------------------------------------------------------------------------------------------------


def test_missing_sources_are_one_line_errors_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "r.sqlite"
    _error(capsys, main(["results", "export", "--format", "csv", "--results", str(missing)]), str(missing))
    _error(capsys, main(["show", "abcd", "--results", str(missing)]), str(missing))
    ok = _jsonl(tmp_path / "ok.jsonl", _records())
    _error(capsys, main(["compare", str(ok), str(tmp_path / "b.jsonl")]), str(tmp_path / "b.jsonl"), "not found")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "b.jsonl").exists()


def test_corrupt_sources_are_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _jsonl(tmp_path / "ok.jsonl", _records())
    malformed = _records()[:1]
    malformed[0]["config"] = "digits_cnn_s"
    malformed_file = _jsonl(tmp_path / "malformed.jsonl", malformed)
    _error(capsys, main(["show", "aaaa", "--results", str(malformed_file)]), str(malformed_file), "malformed config")
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text(ok.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    _error(capsys, main(["compare", str(ok), str(bad_lines)]), f"{bad_lines}:9", "malformed JSON")

    foreign = tmp_path / "foreign.sqlite"
    foreign.write_bytes(b"definitely not a database")
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.sqlite"
    sqlite3.connect(blank).execute("PRAGMA user_version = 1").connection.close()
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    for path in (foreign, empty, blank, other):
        before = path.read_bytes()
        _error(capsys, main(["results", "export", "--format", "jsonl", "--results", str(path)]), str(path))
        _error(capsys, main(["compare", str(path), str(ok)]), str(path))
        assert path.read_bytes() == before
    assert not list(tmp_path.glob("*-journal"))


def test_load_records_reads_store_and_jsonl_alike(tmp_path: Path) -> None:
    records = _records()
    db = _store(tmp_path / "r.sqlite", records)
    assert load_records(db) == load_records(_jsonl(tmp_path / "r.jsonl", load_records(db)))
    assert {r["run_id"] for r in load_records(db)} == {r["run_id"] for r in records}


def test_export_never_overwrites_its_source_or_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "r.sqlite", _records())
    board = _jsonl(tmp_path / "board.jsonl", _records())
    before = {path: path.read_bytes() for path in (db, board)}
    cases = [
        (["--results", str(db), "-o", str(db)], "is the results source being exported"),
        (["--results", str(board), "-o", str(board)], "is the results source being exported"),
        (["--results", str(board), "-o", str(db)], "is an SQLite database"),
        (["--results", str(db), "-o", str(tmp_path)], "is a directory"),
        (["--results", str(db), "-o", str(board / "x.csv")], "is not a directory"),
    ]
    for arguments, message in cases:
        code = main(["results", "export", "--format", "csv", *arguments])
        _error(capsys, code, message)
    assert {path: path.read_bytes() for path in before} == before
    assert (
        main(["results", "export", "--format", "csv", "--results", str(db), "-o", str(tmp_path / "new" / "x.csv")]) == 0
    )
    with (tmp_path / "new" / "x.csv").open(encoding="utf-8", newline="") as exported:
        assert len(list(csv.DictReader(exported))) == len(_records())
