"""Leaderboards: rendered from records only, byte-stable, claims and deltas in the right cells, missing runs
shown, efficiency and plots, the README index, drift detected by ``--check``."""

from __future__ import annotations

import functools
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_distribution

import kdbench
from kdbench.cli import main
from kdbench.leaderboard import (
    Reported,
    cell_stats,
    leaderboard_plots,
    load_reported,
    render_board,
    render_index,
    render_leaderboard,
    summarize_leaderboard,
)
from kdbench.plan import plan_suite
from kdbench.results import ResultsStore, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def _records(plan, top1_of) -> list[dict]:
    records = []
    for run in plan:
        value = top1_of(run)
        if value is None:
            continue
        records.append(
            {
                "run_id": run.run_id,
                "suite": "x",
                "kind": run.role,
                "status": "finished",
                "config": run.to_config(),
                "best_top1": value + 0.5,
                "last_top1": value,
                "best_epoch": 1,
                "curve": [],
                "profile": {
                    "params": 1000,
                    "extra_params": 0,
                    "macs": 2_000_000,
                    "macs_convention": "x",
                    "latency": [
                        {"batch_size": 1, "median_ms": 1.5, "p90_ms": None, "iterations": 5, "device_name": "cpu"},
                        {"batch_size": 256, "median_ms": 8.0, "p90_ms": None, "iterations": 5, "device_name": "cpu"},
                    ],
                    "device_name": "cpu: test",
                },
                "wall_seconds": 60.0,
                "versions": {"kdbench": "0.1.0", "torch": "x", "python": "x", "plugins": {}},
                "device": "cpu: test",
                "git_commit": "",
                "error": "",
            }
        )
    return records


@pytest.fixture
def similar(host):
    suite = host.suites.get("cifar100-similar")
    return suite, plan_suite(suite, host)


def test_cells_show_mean_std_n_and_paper_claims_in_the_right_place(host, similar) -> None:
    suite, plan = similar
    seed_values = {0: 70.0, 1: 71.0, 2: 72.5}

    def top1(run):
        if run.role == "teacher":
            return 75.0
        if run.to_config()["distiller"] == "kd" and run.to_config()["student"] == "resnet8x4":
            return seed_values[run.to_config()["seed"]]
        return None  # everything else not run yet

    text = render_leaderboard(plan, _records(plan, top1), load_reported())
    mean, std, n = cell_stats([70.0, 71.0, 72.5])
    assert n == 3 and std == pytest.approx(1.2583, abs=1e-4)
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd "))
    cells = [c.strip() for c in kd_row.strip("|").split("|")][1:]
    pairs = [p.label for p in suite.pairs]
    r8x4 = cells[pairs.index("resnet32x4→resnet8x4")]
    # Last epoch (the suite's rule); the only method run yet is the best of its column.
    assert r8x4.startswith(f"**{mean:.2f} ± {std:.2f}** (n=3)")
    # MDistiller's claim for KD resnet32x4→resnet8x4 is 73.33, a best-epoch number; it wins over SSKD's and
    # ASKD's. Δ = our best-epoch mean (_records: best = last + 0.5 → 71.67) − the claim, by hand: -1.66.
    assert re.search(r"paper 73\.33\S \(Δ -1\.66, best epoch\)$", r8x4), r8x4
    r56 = cells[pairs.index("resnet56→resnet20")]
    assert r56.startswith("—") and "paper 70.66" in r56 and "Δ" not in r56  # no delta without our number
    assert "RepDistiller README (CRD, ICLR 2020)" in text
    assert "last epoch (RepDistiller convention)" in text
    teacher_row = next(line for line in text.splitlines() if line.startswith("| Teacher"))
    assert "75.00 (n=1)" in teacher_row and "paper 79.42" in teacher_row
    teacher_cells = [c.strip() for c in teacher_row.strip("|").split("|")][1:]
    assert re.search(
        r"^75\.00 \(n=1\) · paper 79\.42\S \(Δ -4\.42\)$", teacher_cells[pairs.index("resnet32x4→resnet8x4")]
    )


def test_rendering_is_byte_stable_and_independent_of_record_order(host, similar) -> None:
    _, plan = similar
    records = _records(plan, lambda run: 60 + len(run.run_id) % 7 + int(run.run_id[:2], 16) / 100)
    first = render_leaderboard(plan, records, load_reported())
    digests = [plot.digest for plot in leaderboard_plots(plan, records)]
    index = render_index([summarize_leaderboard(plan, records)])
    random.Random(1).shuffle(records)
    assert render_leaderboard(plan, records, load_reported()) == first
    assert [plot.digest for plot in leaderboard_plots(plan, records)] == digests and len(digests) == 2
    assert render_index([summarize_leaderboard(plan, records)]) == index
    board = render_board(plan, records, load_reported())  # what the command writes
    assert board.markdown == first and [plot.digest for plot in board.plots] == digests
    assert render_index([board.summary]) == index
    assert "—" not in first.split("## Top-1 accuracy")[1].split("## Efficiency")[0].replace("<br>", "")


class _SecondMethod:
    @kdbench.hookimpl
    def kdbench_register_distillers(self):
        from kdbench_plugins.distillers.kd import KD

        hot = functools.partial(KD, temperature=8.0)  # a variant binds its own defaults
        return [kdbench.DistillerSpec(name="kd_hot", builder=hot, description="KD at T=8")]


def test_best_method_per_column_is_bold() -> None:
    host = kdbench.create_plugin_host(plugins=[("second", _SecondMethod())])
    suite = replace(host.suites.get("smoke"), distillers=("vanilla", "kd", "kd_hot"))
    plan = plan_suite(suite, host)

    def top1(run):
        if run.role == "teacher":
            return 99.0
        return {"vanilla": 90.0, "kd": 95.0, "kd_hot": 94.0}[run.to_config()["distiller"]]

    text = render_leaderboard(plan, _records(plan, top1))
    assert text.count("**95.50 ± 0.00** (n=3)") == 2  # kd wins both columns (best-epoch rule: +0.5)
    assert text.count("94.50 ± 0.00 (n=3)") == 2 and "**94.50" not in text
    assert "**90.50" not in text  # the student row is not a method


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_rendering_from_a_database_missing_runs_keeps_the_published_ones(host, tmp_path, capsys) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    records = _records(plan, lambda run: 97.0 + (run.to_config().get("seed") or 0))
    out, full, partial = tmp_path / "boards", tmp_path / "full.sqlite", tmp_path / "partial.sqlite"
    with ResultsStore(full) as store:
        for record in records:
            store.put(record)
    assert main(["leaderboard", "--suite", "smoke", "--results", str(full), "--out", str(out)]) == 0
    published = (out / "smoke.jsonl").read_bytes()
    before = {r["run_id"]: r for r in read_jsonl(out / "smoke.jsonl")}
    rerun = dict(records[0], best_top1=12.5)  # one run redone on this machine: the database's record wins
    with ResultsStore(partial) as store:
        store.put(rerun)
    assert main(["leaderboard", "--suite", "smoke", "--results", str(partial), "--out", str(out)]) == 0
    kept = {r["run_id"]: r for r in read_jsonl(out / "smoke.jsonl")}
    assert sorted(kept) == sorted(r["run_id"] for r in records)
    assert kept[rerun["run_id"]]["best_top1"] == 12.5
    assert all(kept[run_id] == record for run_id, record in before.items() if run_id != rerun["run_id"])
    assert (out / "smoke.jsonl").read_bytes() != published


def test_leaderboard_command_writes_every_file_and_check_detects_drift_without_rewriting(
    host, tmp_path, capsys
) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        for record in _records(plan, lambda run: 97.0 + (run.to_config().get("seed") or 0)):
            store.put(record)
    out = tmp_path / "boards"
    write = ["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out)]
    assert main(write) == 0
    written = _files(out)
    assert sorted(written) == [
        "README.md",
        "smoke-accuracy-vs-latency.png",
        "smoke-accuracy-vs-latency.svg",
        "smoke-accuracy-vs-macs.png",
        "smoke-accuracy-vs-macs.svg",
        "smoke.jsonl",
        "smoke.md",
        "smoke.plan.json",
    ]
    assert len(read_jsonl(out / "smoke.jsonl")) == len(plan)
    assert kdbench.Plan.load(out / "smoke.plan.json").to_json() == plan.to_json()  # the plan it was rendered with
    assert written["smoke-accuracy-vs-macs.png"].startswith(b"\x89PNG")
    assert b"<svg" in written["smoke-accuracy-vs-macs.svg"]
    assert "[smoke](smoke.md)" in written["README.md"].decode()
    assert main(write) == 0
    assert _files(out) == written  # same results, same bytes, every file
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("up to date") == 2  # the leaderboard and the index
    records = read_jsonl(out / "smoke.jsonl")
    next(r for r in records if r["config"]["distiller"] == "kd")["best_top1"] = 12.34
    write_jsonl(records, out / "smoke.jsonl")
    drifted = _files(out)
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert "STALE" in report and "@@" in report and "(committed)" in report
    assert f"plot {out / 'smoke-accuracy-vs-macs.svg'}: STALE (drawn from other data)" in report
    assert f"leaderboard index {out / 'README.md'}: STALE" in report  # a best mean changed
    assert _files(out) == drifted  # --check rewrote nothing
    assert main(["leaderboard", "--from-jsonl", "--out", str(out)]) == 0
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0
    (out / "smoke-accuracy-vs-latency.png").unlink()
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"plot {out / 'smoke-accuracy-vs-latency.png'}: STALE (missing)" in report
    assert "leaderboard smoke: STALE" in report and "index" in report and "README.md: up to date" in report


def test_committed_leaderboards_are_fresh(capsys) -> None:
    boards = REPO / "leaderboards"
    if not any(boards.glob("*.jsonl")):
        pytest.fail("no committed leaderboard records in leaderboards/")
    assert main(["leaderboard", "--check", "--out", str(boards)]) == 0, capsys.readouterr().out


def test_re_rendering_the_committed_boards_changes_no_byte(tmp_path) -> None:
    copy = Path(shutil.copytree(REPO / "leaderboards", tmp_path / "boards"))
    assert main(["leaderboard", "--from-jsonl", "--out", str(copy)]) == 0
    for path in sorted((REPO / "leaderboards").iterdir()):
        assert (copy / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in (REPO / "leaderboards").iterdir())


def test_methods_with_published_numbers_only_are_reference_rows(host, similar) -> None:
    streamlined = plan_suite(host.suites.get("cifar100-streamlined"), host)
    unregistered = Reported("Some README", "cifar100-streamlined", "resnet32x4", "resnet8x4", "FooKD", 74.5, "last", 1)
    text = render_leaderboard(streamlined, [], [*load_reported(), unregistered])
    section = text.split("*Published only (not run by kdbench)*")[1].split("\n\n")[0]
    foo = next(line for line in section.splitlines() if line.startswith("| FooKD "))
    assert "n/a · paper 74.50" in foo
    assert "| kd " not in section and "| skd " not in section  # a registered method is never a reference row
    assert "| SDD" not in section  # the Streamlined table's SDD row is its SDD-DKD: kdbench's sdd_dkd
    sdd = next(line for line in text.splitlines() if line.startswith("| sdd_dkd "))
    assert "— · paper 74.83" in sdd
    _, plan = similar  # ASKD is registered now: its claims sit in its own row, not with the reference rows
    askd = next(
        line for line in render_leaderboard(plan, [], load_reported()).splitlines() if line.startswith("| askd")
    )
    assert "— · paper 75.34" in askd  # ASKD README, resnet32x4→resnet8x4


def _split(line: str) -> list[str]:
    """Return the cells of a markdown table row (an escaped ``\\|`` stays inside its cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _cells(text: str, first: str) -> list[str]:
    """Return the cells of the first table row whose first cell is ``first``."""
    for line in text.splitlines():
        if line.startswith("|") and _split(line)[0] == first:
            return _split(line)
    raise AssertionError(f"no row {first!r}")


def test_efficiency_table_shows_throughput_at_batch_256_and_dashes_for_untimed_sizes(host) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    records = _records(plan, lambda run: 97.0)
    teacher = next(r for r in records if r["kind"] == "teacher")
    teacher["profile"] = dict(
        teacher["profile"],
        params=149_738,
        latency=[
            {"batch_size": 1, "median_ms": 2.0, "device_name": "cpu"},
            {"batch_size": 64, "median_ms": 4.0, "device_name": "cpu"},
        ],
    )
    text = render_leaderboard(plan, records)
    section = text.split("## Efficiency")[1].split("## Accuracy vs cost")[0]
    header = _cells(section, "model")
    assert header == [
        "model",
        "role",
        "params",
        "MACs (M)",
        "latency b=1 (ms)",
        "latency b=64 (ms)",
        "throughput b=256 (img/s)",
        "training-only params",
        "device",
    ]
    # Students: 256 images / 8.0 ms = 32,000 images/s; the teacher has no batch-256 timing.
    assert _cells(section, "digits_cnn_m") == [
        "digits_cnn_m",
        "student",
        "1,000",
        "2.0",
        "1.50",
        "—",
        "32,000",
        "0",
        "cpu: test",
    ]
    assert _cells(section, "digits_cnn_l") == [
        "digits_cnn_l",
        "teacher",
        "149,738",
        "2.0",
        "2.00",
        "4.00",
        "—",
        "0",
        "cpu: test",
    ]


def test_missing_runs_are_listed_by_seed_and_failures_with_their_status(host) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    records = _records(plan, lambda run: 97.0)
    text = render_leaderboard(plan, records)
    assert "- **13/13 runs stored**." in text and "All 13 planned runs are stored." in text

    def find(method: str, student: str, seed: int) -> dict:
        return next(
            r
            for r in records
            if r["config"]["distiller"] == method and r["config"]["student"] == student and r["config"]["seed"] == seed
        )

    records.remove(find("kd", "digits_cnn_s", 1))
    failed = find("vanilla", "digits_cnn_m", 2)
    failed.update(status="failed", best_top1=None, last_top1=None, error="RuntimeError: boom | bad\nTraceback ...")
    text = render_leaderboard(plan, records)
    assert "- **11/13 runs stored** (1 failed); the others are listed under *Runs not stored yet*." in text
    section = text.split("## Runs not stored yet")[1].split("## Efficiency")[0]
    assert "All 13" not in section and "2 of 13 planned runs have no result" in section
    rows = [_split(line) for line in section.splitlines() if line.startswith("| student")]
    assert rows == [
        ["student", "digits_cnn_m", "vanilla", "2", "failed: RuntimeError: boom \\| bad"],
        ["student", "digits_cnn_l→digits_cnn_s", "kd", "1", "not run yet"],
    ]
    assert _cells(text, "kd")[2] == "97.50 ± 0.00 (n=2) 2/3"  # the cell says so too
    assert "⚠1 failed" in _cells(text, "Student")[1]


def test_plots_show_one_point_per_student_and_method_and_are_embedded(host) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    records = _records(plan, lambda run: 90.0 + (run.seed or 0) + (getattr(run, "method", "") == "kd"))
    plots = {plot.kind: plot for plot in leaderboard_plots(plan, records)}
    assert sorted(plots) == ["latency", "macs"]
    macs = plots["macs"]
    assert macs.stem == "smoke-accuracy-vs-macs"
    by_role = sorted((p.role, p.series, p.arch) for p in macs.points)
    assert by_role == [
        ("method", "kd", "digits_cnn_m"),
        ("method", "kd", "digits_cnn_s"),
        ("student", "student (vanilla)", "digits_cnn_m"),
        ("student", "student (vanilla)", "digits_cnn_s"),
        ("teacher", "teacher", "digits_cnn_l"),
    ]
    kd = next(p for p in macs.points if p.series == "kd" and p.arch == "digits_cnn_s")
    # best epoch: last + 0.5; seeds 0, 1, 2 → 91.5, 92.5, 93.5; MACs 2,000,000 → 2 M; latency b=1 1.5 ms.
    assert (kd.x, kd.top1, kd.n) == (2.0, 92.5, 3)
    assert {p.x for p in plots["latency"].points} == {1.5}
    text = render_leaderboard(plan, records)
    assert "![smoke: top-1 vs MACs](smoke-accuracy-vs-macs.svg)" in text
    assert "![smoke: top-1 vs latency at batch 1](smoke-accuracy-vs-latency.svg)" in text
    for record in records:
        record["profile"] = None
    assert leaderboard_plots(plan, records) == []
    text = render_leaderboard(plan, records)
    assert "No plot yet: no run with a stored top-1 has been profiled." in text and "![" not in text


def test_index_lists_every_leaderboard_and_check_catches_a_stale_index(host, tmp_path, capsys) -> None:
    out = tmp_path / "boards"
    smoke, cifar10 = host.suites.get("smoke"), host.suites.get("cifar10")
    write_jsonl(_records(plan_suite(smoke, host), lambda run: 97.0), out / "smoke.jsonl")
    cifar_plan = plan_suite(cifar10, host)
    kd_only = _records(cifar_plan, lambda run: 80.0 if run.to_config()["distiller"] == "kd" else None)
    write_jsonl(kd_only, out / "cifar10.jsonl")
    assert main(["leaderboard", "--from-jsonl", "--suite", "smoke", "--suite", "cifar10", "--out", str(out)]) == 0
    index = (out / "README.md").read_text(encoding="utf-8")
    rows = [line for line in index.splitlines() if line.startswith("| [")]
    assert [row.split("]")[0] for row in rows] == ["| [cifar10", "| [smoke"]  # sorted by name
    cifar_row = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cifar_row[:5] == [
        "[cifar10](cifar10.md)",
        "cifar10",
        "best",
        f"{len(kd_only)}/{len(cifar_plan)}",
        "kd, vanilla",
    ]
    assert cifar10.epoch_rule == "best" and cifar_row[5].startswith(f"{cifar10.pairs[0].label}: kd 80.50")
    assert "--check" in index and "--from-jsonl" in index
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0
    (out / "README.md").write_text(index.replace(rows[0] + "\n", ""), encoding="utf-8")
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"leaderboard index {out / 'README.md'}: STALE" in report and "+| [cifar10](cifar10.md)" in report
    assert "leaderboard smoke: up to date" in report and "leaderboard cifar10: up to date" in report
    (out / "README.md").unlink()
    assert main(["leaderboard", "--check", "--suite", "smoke", "--out", str(out)]) == 1  # still checked


def test_a_record_file_without_its_plan_is_named_and_the_other_boards_are_still_checked(host, tmp_path, capsys) -> None:
    smoke = host.suites.get("smoke")
    write_jsonl(_records(plan_suite(smoke, host), lambda run: 97.0), tmp_path / "smoke.jsonl")
    assert main(["leaderboard", "--from-jsonl", "--suite", "smoke", "--out", str(tmp_path)]) == 0
    write_jsonl([], tmp_path / "nowhere.jsonl")
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(tmp_path)]) == 1
    report = capsys.readouterr().out
    assert "leaderboard nowhere: CANNOT RENDER" in report and "no nowhere.plan.json" in report
    assert "leaderboard smoke: up to date" in report


def test_a_board_rendered_from_a_suite_file_needs_the_file_no_more(host, tiny_suite_file, tmp_path, capsys) -> None:
    tiny = kdbench.load_suite_file(tiny_suite_file)
    smoke = host.suites.get("smoke")
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        for suite in (tiny, smoke):
            for record in _records(plan_suite(suite, host), lambda run: 90.0):
                store.put(record)
    out = tmp_path / "boards"
    assert main(["leaderboard", "--suite", str(tiny_suite_file), "--results", str(db), "--out", str(out)]) == 0
    assert kdbench.Plan.load(out / "tiny.plan.json").suite.pairs == tiny.pairs  # the plan holds the suite
    tiny_suite_file.unlink()  # later commands render the board from its plan
    assert main(["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out)]) == 0
    index = (out / "README.md").read_text(encoding="utf-8")
    assert "[tiny](tiny.md)" in index and "[smoke](smoke.md)" in index
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("up to date") == 3  # two boards and the index
    assert main(["leaderboard", "--check", "--suite", "tiny", "--out", str(out)]) == 0  # by name
    assert main(["leaderboard", "--from-jsonl", "--suite", "tiny", "--out", str(out)]) == 0  # re-planned from it
    capsys.readouterr()
    (out / "tiny.plan.json").unlink()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    assert "no tiny.plan.json" in capsys.readouterr().out


def test_a_changed_suite_keeps_the_records_it_no_longer_plans(host, tiny_suite_file, tmp_path, capsys) -> None:
    tiny = kdbench.load_suite_file(tiny_suite_file)
    db, out = tmp_path / "r.sqlite", tmp_path / "boards"
    with ResultsStore(db) as store:
        for record in _records(plan_suite(tiny, host), lambda run: 90.0):
            store.put(record)
    assert main(["leaderboard", "--suite", str(tiny_suite_file), "--results", str(db), "--out", str(out)]) == 0
    published = read_jsonl(out / "tiny.jsonl")
    tiny_suite_file.write_text(tiny_suite_file.read_text().replace("epochs = 2", "epochs = 3"), encoding="utf-8")
    capsys.readouterr()
    assert main(["leaderboard", "--suite", str(tiny_suite_file), "--results", str(db), "--out", str(out)]) == 0
    assert f"kept {len(published)} record(s)" in capsys.readouterr().err
    assert read_jsonl(out / "tiny.jsonl") == published  # nothing published is lost
    (row,) = [line for line in (out / "README.md").read_text(encoding="utf-8").splitlines() if "[tiny]" in line]
    assert re.search(r"\|\s*0/\d+\s*\|", row)  # the board shows none of them: they are of the old recipe


def test_rendering_a_registered_suite_replaces_a_file_suite_of_the_same_name(host, tmp_path) -> None:
    smoke = host.suites.get("smoke")
    db, out = tmp_path / "r.sqlite", tmp_path / "boards"
    with ResultsStore(db) as store:
        for record in _records(plan_suite(smoke, host), lambda run: 90.0):
            store.put(record)
    own = tmp_path / "smoke.toml"
    own.write_text(
        (Path(kdbench.__file__).parents[1] / "benchmarks" / "suites" / "smoke.toml")
        .read_text(encoding="utf-8")
        .replace("vanilla vs KD", "my copy"),
        encoding="utf-8",
    )
    assert main(["leaderboard", "--suite", str(own), "--results", str(db), "--out", str(out)]) == 0
    assert "my copy" in (out / "smoke.md").read_text(encoding="utf-8")
    assert main(["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out)]) == 0
    assert "my copy" not in (out / "smoke.md").read_text(encoding="utf-8")
    assert "my copy" not in (out / "smoke.plan.json").read_text(encoding="utf-8")
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0


def test_a_board_no_suite_renders_is_named_and_an_empty_store_renders_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "boards"
    out.mkdir()
    (out / "gone.jsonl").write_text("", encoding="utf-8")
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    assert "leaderboard gone: CANNOT RENDER" in capsys.readouterr().out
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    assert main(["leaderboard", "--results", str(db), "--out", str(tmp_path / "new")]) == 0
    assert "nothing rendered" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()


def test_cells_made_from_unverified_data_say_so(host) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    records = _records(plan, lambda run: 90.0)
    clean = render_leaderboard(plan, records)
    assert "unverified" not in clean
    for record in records:
        if record["config"]["distiller"] == "kd":
            record["versions"] = {**record["versions"], "data": {"digest": "0" * 16, "verified": False}}
    text = render_leaderboard(plan, records)
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd "))
    assert (
        kd_row.count("⚠unverified data") == 2 and "⚠unverified data" not in text.split("| kd ")[0].split("| Student")[1]
    )
    assert "⚠unverified data: made from dataset files that differ from the published dataset" in text


SUITE_PLUGIN = """
    from kdbench import PairSpec, Recipe, SuiteSpec, hookimpl

    @hookimpl
    def kdbench_register_suites():
        pair = PairSpec("digits_cnn_l", "digits_cnn_s")
        return [SuiteSpec(name="lab", description="a plugin's suite", dataset="digits", pairs=(pair,),
                          distillers=("vanilla", "kd"), seeds=(0,), recipe=Recipe(epochs=2))]
"""


def test_a_board_whose_plugin_is_gone_is_kept_checked_and_indexed(
    host, fake_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_distribution(
        fake_site, "kdbench-fake-lab", "1.0", {"lab": "kdbench_fake_lab"}, {"kdbench_fake_lab": SUITE_PLUGIN}
    )
    with_lab = kdbench.create_plugin_host()
    db, out = tmp_path / "r.sqlite", tmp_path / "boards"
    with ResultsStore(db) as store:
        for suite in (with_lab.suites.get("lab"), host.suites.get("smoke")):
            for record in _records(plan_suite(suite, with_lab), lambda run: 90.0):
                store.put(record)
    assert main(["leaderboard", "--suite", "lab", "--results", str(db), "--out", str(out)]) == 0
    board = (out / "lab.md").read_bytes()
    gone = ["-p", "no:lab"]  # as if the plugin were uninstalled
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(db), "--out", str(out), *gone]) == 0
    assert "leaderboard lab: its suite is not registered here; the board is kept" in capsys.readouterr().out
    assert main(["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out), *gone]) == 0
    assert main(["leaderboard", "--from-jsonl", "--out", str(out), *gone]) == 0
    assert main(["leaderboard", "--check", "--out", str(out), *gone]) == 0
    assert (out / "lab.md").read_bytes() == board
    assert "[lab](lab.md)" in (out / "README.md").read_text(encoding="utf-8")


def test_each_delta_uses_our_number_under_the_claims_own_epoch_rule(host, similar) -> None:
    suite, plan = similar  # a last-epoch board: RepDistiller's rule

    def top1(run):  # _records stores best = value + 0.5, last = value
        if run.role == "student" and getattr(run, "method", "") in ("fitnet", "dkd") and run.model == "resnet8x4":
            return 75.0
        return None

    text = render_leaderboard(plan, _records(plan, top1), load_reported())
    pairs = [p.label for p in suite.pairs]

    def cell(method: str) -> str:
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} "))
        return [c.strip() for c in row.strip("|").split("|")][1:][pairs.index("resnet32x4→resnet8x4")]

    # RepDistiller's FitNet claim (73.50) is a last-epoch number: Δ = 75.00 − 73.50, no note.
    assert re.search(r"^\*\*75\.00 ± 0\.00\*\* \(n=3\) · paper 73\.50\S \(Δ \+1\.50\)$", cell("fitnet")), cell("fitnet")
    # MDistiller's DKD claim (76.32) is a best-epoch number: Δ = our best-epoch mean 75.50 − 76.32.
    assert re.search(r"· paper 76\.32\S \(Δ -0\.82, best epoch\)$", cell("dkd")), cell("dkd")
    assert "RepDistiller README (CRD, ICLR 2020): last epoch\n" in text
    assert "MDistiller README (DKD, CVPR 2022): best epoch, mean of 5 runs; its Δ uses our best-epoch numbers" in text


def test_settings_without_a_published_source_are_listed(host, similar) -> None:
    _, plan = similar
    text = render_leaderboard(plan, [], load_reported())
    notes = text.split("Settings without a published source (kdbench's choice, marked in the suite file):")[1]
    notes = notes.split("\n\n")[1]
    assert "- `dkd` beta = 2.0 on resnet110→resnet20" in notes
    assert "- `reviewkd` review_weight = 5.0 on resnet110→resnet20, vgg13→vgg8" in notes
    assert "resnet56→resnet20" not in notes  # its settings come from the authors' configs


def test_every_setting_a_suite_gives_a_method_is_listed(host, similar) -> None:
    _, plan = similar
    text = render_leaderboard(plan, [], load_reported())
    notes = text.split("Method settings this suite sets (every other setting is the method's default):")[1]
    notes = notes.split("\n\n")[1]
    assert "- `dkd` beta = 2.0 on resnet56→resnet20, resnet110→resnet32, resnet110→resnet20\n" in notes
    assert "- `sdd_kd` scales = [1, 2] on resnet32x4→resnet8x4, vgg13→vgg8" in notes
    assert "`kd`" not in notes  # every KD setting is its default
    streamlined = plan_suite(host.suites.get("cifar100-streamlined"), host)
    text = render_leaderboard(streamlined, [], load_reported())
    assert (
        "- `dkd` alpha = 3.0, beta = 6.0, ce_weight = 2.0, logit_clamp = 10.0, warmup_first_epoch = 0 on every pair"
        in text
    )


def test_runs_from_cohorts_and_tables_are_counted_and_said_to_be_the_same_math(similar) -> None:
    _, plan = similar
    records = _records(plan, lambda run: 70.0 if run.role == "student" else 90.0)
    assert "Execution:" not in render_leaderboard(plan, records)
    students = [r for r in records if r["kind"] == "student"]
    for record in students[:5]:
        record["versions"]["execution"] = {"cohort": 5}
    students[0]["versions"]["execution"]["teacher_table"] = "abc"
    text = render_leaderboard(plan, records)
    assert "Execution: 5 runs trained in cohorts" in text and "and 1 read their teacher's table" in text
    assert "Same math as a run alone" in text
