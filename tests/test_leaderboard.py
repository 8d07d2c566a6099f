"""Leaderboards: rendered from records only, byte-stable, claims in the right cells, drift detected."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

import kdbench
from kdbench.cli import main
from kdbench.leaderboard import cell_stats, load_reported, render_leaderboard
from kdbench.results import ResultsStore, read_jsonl, write_jsonl
from kdbench.runner import plan_suite

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
                "kind": run.kind,
                "status": "finished",
                "config": dict(run.config),
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
                        {"batch_size": 1, "median_ms": 1.5, "p90_ms": None, "iterations": 5, "device_name": "cpu"}
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


def _families(host) -> dict[str, str]:
    return {spec.name: spec.family for spec in host.distillers}


@pytest.fixture
def similar(host):
    suite = host.suites.get("cifar100-similar")
    return suite, plan_suite(suite, host)


def test_cells_show_mean_std_n_and_paper_claims_in_the_right_place(host, similar) -> None:
    suite, plan = similar
    seed_values = {0: 70.0, 1: 71.0, 2: 72.5}

    def top1(run):
        if run.kind == "teacher":
            return 75.0
        if run.config["distiller"] == "kd" and run.config["student"] == "resnet8x4":
            return seed_values[run.config["seed"]]
        return None  # everything else not run yet

    text = render_leaderboard(suite, plan, _records(plan, top1), _families(host), load_reported())
    mean, std, n = cell_stats([70.0, 71.0, 72.5])
    assert n == 3 and std == pytest.approx(1.2583, abs=1e-4)
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd "))
    cells = [c.strip() for c in kd_row.strip("|").split("|")][1:]
    pairs = [p.label for p in suite.pairs]
    r8x4 = cells[pairs.index("resnet32x4→resnet8x4")]
    # Last epoch (the suite's rule); the only method run yet is the best of its column.
    assert r8x4.startswith(f"**{mean:.2f} ± {std:.2f}** (n=3)")
    # RepDistiller's claim for KD resnet32x4→resnet8x4 is 73.33; it wins over other sources.
    assert "paper 73.33" in r8x4
    r56 = cells[pairs.index("resnet56→resnet20")]
    assert r56.startswith("—") and "paper 70.66" in r56
    assert "RepDistiller README (CRD, ICLR 2020)" in text
    assert "last epoch (RepDistiller convention)" in text
    teacher_row = next(line for line in text.splitlines() if line.startswith("| Teacher"))
    assert "75.00 (n=1)" in teacher_row and "paper 79.42" in teacher_row


def test_rendering_is_byte_stable_and_independent_of_record_order(host, similar) -> None:
    suite, plan = similar
    records = _records(plan, lambda run: 60 + len(run.run_id) % 7 + int(run.run_id[:2], 16) / 100)
    first = render_leaderboard(suite, plan, records, _families(host), load_reported())
    random.Random(1).shuffle(records)
    assert render_leaderboard(suite, plan, records, _families(host), load_reported()) == first
    assert "—" not in first.split("## Top-1 accuracy")[1].split("## Efficiency")[0].replace("<br>", "")


class _SecondMethod:
    @kdbench.hookimpl
    def kdbench_register_distillers(self):
        from kdbench_plugins.distillers.kd import KD

        return [
            kdbench.DistillerSpec(name="kd_hot", builder=KD, description="KD at T=8", defaults={"temperature": 8.0})
        ]


def test_best_method_per_column_is_bold() -> None:
    host = kdbench.create_plugin_host(plugins=[("second", _SecondMethod())])
    suite = replace(host.suites.get("smoke"), distillers=("vanilla", "kd", "kd_hot"))
    plan = plan_suite(suite, host)

    def top1(run):
        if run.kind == "teacher":
            return 99.0
        return {"vanilla": 90.0, "kd": 95.0, "kd_hot": 94.0}[run.config["distiller"]]

    text = render_leaderboard(suite, plan, _records(plan, top1), _families(host))
    assert text.count("**95.50 ± 0.00** (n=3)") == 2  # kd wins both columns (best-epoch rule: +0.5)
    assert text.count("94.50 ± 0.00 (n=3)") == 2 and "**94.50" not in text
    assert "**90.50" not in text  # the student row is not a method


def test_leaderboard_command_writes_jsonl_and_markdown_and_check_detects_drift(host, tmp_path, capsys) -> None:
    suite = host.suites.get("smoke")
    plan = plan_suite(suite, host)
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        for record in _records(plan, lambda run: 97.0 + (run.config.get("seed") or 0)):
            store.put(record)
    out = tmp_path / "boards"
    assert main(["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out)]) == 0
    markdown = (out / "smoke.md").read_bytes()
    assert len(read_jsonl(out / "smoke.jsonl")) == len(plan)
    assert main(["leaderboard", "--suite", "smoke", "--results", str(db), "--out", str(out)]) == 0
    assert (out / "smoke.md").read_bytes() == markdown
    capsys.readouterr()
    assert main(["leaderboard", "--check", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    records = read_jsonl(out / "smoke.jsonl")
    records[0]["best_top1"] = 12.34
    write_jsonl(records, out / "smoke.jsonl")
    assert main(["leaderboard", "--check", "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert "STALE" in report and "@@" in report and "(committed)" in report


def test_committed_leaderboards_are_fresh(capsys) -> None:
    boards = REPO / "leaderboards"
    if not any(boards.glob("*.jsonl")):
        pytest.fail("no committed leaderboard records in leaderboards/")
    assert main(["leaderboard", "--check", "--out", str(boards)]) == 0, capsys.readouterr().out


def test_methods_with_published_numbers_only_are_reference_rows(host, similar) -> None:
    suite, plan = similar
    text = render_leaderboard(suite, plan, [], _families(host), load_reported())
    section = text.split("*Published only (not run by kdbench)*")[1].split("## Efficiency")[0]
    askd = next(line for line in section.splitlines() if line.startswith("| ASKD "))
    assert "n/a · paper 75.34" in askd  # ASKD README, resnet32x4→resnet8x4
    assert "| kd " not in section  # a registered method is never a reference row
