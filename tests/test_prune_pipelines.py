"""Prune-then-distill (derived students) and distill-then-prune, end to end on digits (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdbench
from kdbench.cli import main
from kdbench.derived import parse_derived
from kdbench.errors import SuiteError
from kdbench.leaderboard import render_leaderboard
from kdbench.plan import TrainRun, plan_suite
from kdbench.results import ResultsStore


def test_derived_student_names_parse_and_bad_ones_say_why() -> None:
    derived = parse_derived("pruned(resnet32x4, ratio=0.5, pruner=ssa, theta=0.3, init=scratch)")
    assert derived is not None
    assert (derived.base, derived.pruner, derived.settings, derived.params, derived.init) == (
        "resnet32x4",
        "ssa",
        {"ratio": 0.5},
        {"theta": 0.3},
        "scratch",
    )
    assert parse_derived("resnet8") is None
    with pytest.raises(SuiteError, match="needs pruner=NAME"):
        parse_derived("pruned(resnet8, ratio=0.5)")
    with pytest.raises(SuiteError, match="exactly one of ratio"):
        parse_derived("pruned(resnet8, pruner=l1)")
    with pytest.raises(SuiteError, match="cannot read derived student"):
        parse_derived("pruned(resnet8 ratio=0.5")


def test_smoke_prune_plan(host: kdbench.PluginHost) -> None:
    plan = plan_suite(host.suites.get("smoke-prune"), host)
    kinds = [run.role for run in plan]
    # One teacher; one derivation shared by the pruned- and scratch-initialised students;
    # 3 students × (vanilla, kd); every KD student pruned twice afterwards.
    assert (kinds.count("teacher"), kinds.count("student"), kinds.count("prune")) == (1, 6, 1 + 3 * 2)
    derivation = next(run for run in plan if run.role == "prune" and run.trained_with is None)
    assert derivation.requires == (plan[0].run_id,)
    assert derivation.pruner == "ssa" and derivation.settings == {"ratio": 0.5}
    scratch = [r for r in plan if isinstance(r, TrainRun) and r.init and r.init.weights == "scratch"]
    assert len(scratch) == 2 and all(derivation.run_id in r.requires for r in scratch)
    kd_pruned = next(
        r for r in plan if isinstance(r, TrainRun) and r.method == "kd" and r.init and r.init.weights == "pruned"
    )
    assert kd_pruned.params["temperature"] == 3.0 and set(kd_pruned.requires) == {
        plan[0].run_id,
        derivation.run_id,
    }


def test_both_pipelines_run_end_to_end(host: kdbench.PluginHost, tmp_path: Path, capsys) -> None:
    results, work = tmp_path / "r.sqlite", tmp_path / "runs"
    args = ["run", "--suite", "smoke-prune", "--results", str(results), "--work-dir", str(work)]
    assert main([*args, "--no-progress", "--latency-batch-sizes", "1"]) == 0, capsys.readouterr().err
    with ResultsStore(results) as store:
        records = store.records()
    assert {r["status"] for r in records} == {"finished"}
    teacher = next(r for r in records if r["kind"] == "teacher")
    derivation = next(r for r in records if r["kind"] == "prune" and "after" not in r["config"])
    pruning = derivation["profile"]["pruning"]
    assert pruning["before"]["params"] == teacher["profile"]["params"]
    assert derivation["profile"]["macs"] < pruning["before"]["macs"] / 2.5  # ratio 0.5 on channels: ~4× fewer MACs
    students = [r for r in records if r["kind"] == "student" and r["config"].get("init")]
    assert {r["profile"]["params"] for r in students} == {derivation["profile"]["params"]}
    from kdbench.pruning import load_pruned

    trained = load_pruned(work / students[0]["run_id"] / "final.pt", host)
    assert sum(p.numel() for p in trained.parameters()) == derivation["profile"]["params"]
    after = [r for r in records if r["kind"] == "prune" and "after" in r["config"]]
    structured = [r for r in after if r["config"]["prune"]["pruner"] == "l1"]
    unstructured = [r for r in after if r["config"]["prune"]["pruner"] == "l1_unstructured"]
    assert len(structured) == len(unstructured) == 3
    for record in structured:
        assert record["profile"]["macs"] < record["profile"]["pruning"]["before"]["macs"]
        assert [e["phase"] for e in record["curve"]] == ["main", "main"]  # the 2 fine-tune epochs
    for record in unstructured:
        assert record["profile"]["params"] == record["profile"]["pruning"]["before"]["params"]
        assert record["profile"]["pruning"]["sparsity"] == pytest.approx(0.3, abs=0.02)
    suite = host.suites.get("smoke-prune")
    text = render_leaderboard(plan_suite(suite, host), records)
    assert "| prune " not in text  # pruning runs are not method rows
    section = text.split("## Pruning")[1].split("## Efficiency")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 7  # the derivation + 3 KD students × 2 pruners
    derivation_row = next(row for row in rows if "ssa ratio=0.5" in row)
    assert "n/a (0)" in derivation_row and "149,738 → " in derivation_row
    assert torch.load(work / derivation["run_id"] / "pruned.pt", weights_only=True)["format"] == "kdbench-pruned-1"
