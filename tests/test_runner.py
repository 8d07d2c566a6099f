"""The runner and engine end to end on the embedded digits data (CPU, seconds)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import kdbench
from kdbench import Distiller, DistillerSpec, hookimpl
from kdbench.engine import EngineOptions
from kdbench.errors import KdbenchError
from kdbench.plan import TrainRun, plan_suite, run_id_of, select_runs
from kdbench.results import ResultsStore
from kdbench.runner import RunnerOptions, run_suite
from kdbench.suites import load_suite_file


def _options(tmp_path: Path, **kwargs) -> RunnerOptions:
    return RunnerOptions(work_root=tmp_path / "runs", latency_batch_sizes=(1, 8), **kwargs)


def test_smoke_plan_shares_teacher_and_vanilla_runs(host: kdbench.PluginHost) -> None:
    plan = plan_suite(host.suites.get("smoke"), host)
    kinds = [run.role for run in plan]
    assert kinds.count("teacher") == 1 and kinds[0] == "teacher"
    students = [run for run in plan if run.role == "student"]
    # 2 students × 3 seeds of vanilla (no teacher in their config) + 2 pairs × 3 seeds of KD.
    assert len(students) == 12
    vanilla = [run for run in students if run.to_config()["distiller"] == "vanilla"]
    assert len(vanilla) == 6 and all(run.to_config()["teacher"] is None for run in vanilla)
    kd = [run for run in students if run.to_config()["distiller"] == "kd"]
    assert {run.requires for run in kd} == {(plan[0].run_id,)}
    assert all(run.to_config()["params"] == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9} for run in kd)
    assert len({run.run_id for run in plan}) == len(plan)


def test_run_ids_are_stable_and_change_with_the_config(host: kdbench.PluginHost) -> None:
    suite = host.suites.get("smoke")
    first = [run.run_id for run in plan_suite(suite, host)]
    assert first == [run.run_id for run in plan_suite(suite, host)]
    warmer = replace(suite, distiller_params={"kd": {"temperature": 8.0}})
    changed = {run.run_id for run in plan_suite(warmer, host)} - set(first)
    assert len(changed) == 6  # exactly the KD runs
    run = plan_suite(suite, host)[1]
    config = run.to_config()
    assert run_id_of(config) == run.run_id
    assert run_id_of(dict(reversed(list(config.items())))) == run_id_of(config)


def test_per_pair_params_and_student_lr_override_reach_the_config(host: kdbench.PluginHost) -> None:
    suite = host.suites.get("cifar100-different")
    suite = replace(suite, pairs=(kdbench.PairSpec("resnet32x4", "ShuffleV1", params={"kd": {"temperature": 2.0}}),))
    plan = plan_suite(suite, host)
    kd = [run for run in plan if isinstance(run, TrainRun) and run.method == "kd"]
    assert {run.params["temperature"] for run in kd} == {2.0}
    assert {run.recipe.lr for run in kd} == {0.01} and {run.to_config()["recipe"]["lr"] for run in kd} == {0.01}
    teacher = next(run for run in plan if run.role == "teacher")
    assert teacher.recipe.lr == 0.05


def test_select_keeps_the_teachers_a_selection_needs(host: kdbench.PluginHost) -> None:
    plan = plan_suite(host.suites.get("smoke"), host)
    chosen = select_runs(plan, ["kd digits_cnn_s"])
    assert [run.role for run in chosen].count("teacher") == 1
    assert {run.to_config()["distiller"] for run in chosen if run.role == "student"} == {"kd"}
    assert len(chosen) == 4


def test_tiny_suite_trains_stores_and_skips_finished(host, tiny_suite_file: Path, tmp_path: Path) -> None:
    suite = load_suite_file(tiny_suite_file)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        report = run_suite(suite, host, store, _options(tmp_path))
        assert report.failed == () and len(report.finished) == 3
        records = {r["run_id"]: r for r in store.records()}
        for record in records.values():
            assert record["status"] == "finished"
            assert len(record["curve"]) == 2 and 0 <= record["best_top1"] <= 100
            assert record["best_top1"] == max(e["test_top1"] for e in record["curve"])
            assert record["last_top1"] == record["curve"][-1]["test_top1"]
            assert record["profile"]["params"] > 0 and record["profile"]["macs"] > 0
            assert record["versions"]["torch"] == torch.__version__
            run_dir = tmp_path / "runs" / record["run_id"]
            assert (run_dir / "final.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
        kd = next(r for r in records.values() if r["config"]["distiller"] == "kd")
        assert set(kd["curve"][0]["losses"]) == {"ce", "kd"}
        assert kd["curve"][1]["lr"] == pytest.approx(0.005)
        again = run_suite(suite, host, store, _options(tmp_path))
        assert len(again.skipped) == 3 and again.finished == ()


class _Exploding(Distiller):
    def __init__(self, student, teacher, context, **params):
        super().__init__()

    def loss_terms(self, student, teacher, batch, progress):
        raise RuntimeError("exploded on purpose")


class _Diverging(Distiller):
    def __init__(self, student, teacher, context, **params):
        super().__init__()

    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": student.logits.sum() * float("nan")}


class _BadMethods:
    @hookimpl
    def kdbench_register_distillers(self):
        return [
            DistillerSpec(name="exploding", builder=_Exploding, description="raises", needs_teacher=False),
            DistillerSpec(name="diverging", builder=_Diverging, description="NaN loss", needs_teacher=False),
        ]


def test_failures_are_isolated_and_divergence_is_recorded(tiny_suite_file: Path, tmp_path: Path) -> None:
    host = kdbench.create_plugin_host(strict=True, plugins=[("bad_methods", _BadMethods())])
    suite = replace(load_suite_file(tiny_suite_file), distillers=("exploding", "diverging", "vanilla"))
    with ResultsStore(tmp_path / "r.sqlite") as store:
        report = run_suite(suite, host, store, _options(tmp_path))
        assert len(report.failed) == 1 and "exploded on purpose" in report.failed[0][1]
        assert len(report.diverged) == 1 and len(report.finished) == 2  # teacher + vanilla
        failed = store.get(report.failed[0][0])
        assert failed["status"] == "failed" and "RuntimeError: exploded on purpose" in failed["error"]
        diverged = store.get(report.diverged[0])
        assert diverged["status"] == "diverged" and math.isnan(diverged["curve"][0]["losses"]["ce"])
        # Failed runs are retried next time; diverged and finished ones are results.
        assert store.finished_ids() == set(report.finished) | set(report.diverged)


def test_teacher_gets_no_gradient_and_stays_frozen(host, tiny_suite_file: Path, tmp_path: Path) -> None:
    suite = load_suite_file(tiny_suite_file)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        run_suite(suite, host, store, _options(tmp_path), runs=select_runs(plan_suite(suite, host), ["teacher"]))
        teacher_run = plan_suite(suite, host)[0]
        weights = torch.load(tmp_path / "runs" / teacher_run.run_id / "final.pt", weights_only=True)["model"]
        from kdbench.runner import Workspace, execute_run

        workspace = Workspace(host, _options(tmp_path))
        kd_run = next(r for r in plan_suite(suite, host) if r.to_config()["distiller"] == "kd")
        teacher = workspace.teacher(kd_run.teacher, kd_run.dataset)
        assert not teacher.module.training
        assert all(not p.requires_grad for p in teacher.module.parameters())
        execute_run(kd_run, workspace, suite.name, store)
        for name, tensor in teacher.module.state_dict().items():
            torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0, msg=name)


def test_corrupt_checkpoint_fails_the_run_with_its_path_and_keeps_the_file(host, tiny_suite_file, tmp_path) -> None:
    suite = replace(load_suite_file(tiny_suite_file), distillers=("vanilla",))
    plan = plan_suite(suite, host)
    student = next(run for run in plan if run.role == "student")
    checkpoint = tmp_path / "runs" / student.run_id / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\x00garbage")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        report = run_suite(suite, host, store, _options(tmp_path), runs=[student])
    assert report.failed and str(checkpoint) in report.failed[0][1] and "delete it" in report.failed[0][1]
    assert checkpoint.read_bytes() == b"\x00garbage"


def test_cuda_switches_are_refused_on_cpu() -> None:
    with pytest.raises(KdbenchError, match="CUDA switches"):
        EngineOptions(device=torch.device("cpu"), bf16=True)


def test_missing_teacher_checkpoint_is_one_clear_error(host, tiny_suite_file, tmp_path) -> None:
    suite = replace(load_suite_file(tiny_suite_file), distillers=("kd",))
    options = _options(tmp_path, teacher_overrides={"digits_cnn_m": str(tmp_path / "nope.pth")})
    with ResultsStore(tmp_path / "r.sqlite") as store:
        report = run_suite(suite, host, store, options)
    assert report.failed and all("nope.pth" in error for _, error in report.failed)


def test_reference_format_teacher_checkpoint_loads_strictly_and_is_evaluated(host, tiny_suite_file, tmp_path) -> None:
    import argparse

    teacher = kdbench.create_model("digits_cnn_m", host=host)
    # The CRD/MDistiller layout: a dict with the state_dict under "model" (RepDistiller adds its options).
    checkpoint = tmp_path / "digits_cnn_m_vanilla" / "ckpt_epoch_240.pth"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 240, "model": teacher.state_dict(), "opt": argparse.Namespace(lr=0.05)}, checkpoint)
    suite = replace(load_suite_file(tiny_suite_file), distillers=("kd",))
    options = _options(tmp_path, teacher_overrides={"digits_cnn_m": str(checkpoint)})
    plan = plan_suite(suite, host, options.teacher_overrides)
    assert [run.to_config()["distiller"] for run in plan if run.role == "teacher"] == ["pretrained"]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        report = run_suite(suite, host, store, options, runs=plan)
        assert report.failed == ()
        record = store.get(plan[0].run_id)
    data = host.datasets.get("digits").loader(tmp_path, False)
    from kdbench.engine import evaluate

    expected = evaluate(teacher, data.test_images, data.test_labels, host.datasets.get("digits"), 100, False)
    assert record["best_top1"] == pytest.approx(float(expected), abs=1e-4)

    wrong = tmp_path / "wrong.pth"
    torch.save({"model": kdbench.create_model("digits_cnn_s", host=host).state_dict()}, wrong)
    options = _options(tmp_path / "w", teacher_overrides={"digits_cnn_m": str(wrong)})
    with ResultsStore(tmp_path / "w.sqlite") as store:
        report = run_suite(suite, host, store, options)
    assert report.failed and "does not fit digits_cnn_m" in report.failed[0][1]
