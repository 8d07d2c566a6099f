"""The logger plugins: per-epoch CSV/JSON lines and a summary (epoch_log), TensorBoard events (tensorboard)."""

from __future__ import annotations

import csv
import json
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from kdbench_plugins.loggers import epoch_log
from kdbench_plugins.loggers import tensorboard as tensorboard_logger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import kdbench
from kdbench import EpochRecord, RunInfo, RunResult, hookimpl
from kdbench._plugins import DISABLE_ENV
from kdbench.cli import main
from kdbench.plan import plan_suite, select_runs
from kdbench.results import ResultsStore
from kdbench.runner import RunnerOptions, run_suite
from kdbench.suites import load_suite_file

FIXED = ("run_id", "phase", "epoch", "lr", "test_top1", "seconds")


def _run(host: kdbench.PluginHost, suite_file: Path, root: Path, only: str | None = None) -> dict[str, dict]:
    """Run the suite (or the runs matching ``only``) into ``root``; return the stored records by run id."""
    suite = load_suite_file(suite_file)
    plan = plan_suite(suite, host)
    runs = select_runs(plan, [only]) if only else plan
    options = RunnerOptions(work_root=root / "runs", latency_batch_sizes=(1, 8))
    with ResultsStore(root / "results.sqlite") as store:
        run_suite(suite, host, store, options, runs)
        return {record["run_id"]: record for record in store.records()}


def _jsonl(work_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _csv(work_dir: Path) -> list[dict[str, str]]:
    with (work_dir / "metrics.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _expected_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"run_id": record["run_id"], **epoch} for epoch in record["curve"]]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _info(tmp_path: Path) -> RunInfo:
    return RunInfo("r1", {"distiller": "kd", "params": {"temperature": 4.0}, "teacher": None}, tmp_path / "r1", "cpu")


def _epoch(epoch: int, phase: str = "main", **losses: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, lr=0.1, losses=losses or {"ce": 1.0}, test_top1=50.0 + epoch, seconds=0.5, phase=phase
    )


def test_metrics_files_and_summary_equal_the_stored_records(host, tiny_suite_file: Path, tmp_path: Path) -> None:
    records = _run(host, tiny_suite_file, tmp_path)
    assert len(records) == 3 and {r["status"] for r in records.values()} == {"finished"}
    for run_id, record in records.items():
        work_dir = tmp_path / "runs" / run_id
        expected = _expected_rows(record)
        assert _jsonl(work_dir) == expected
        terms = list(record["curve"][0]["losses"])
        rows = _csv(work_dir)
        assert list(rows[0])[: len(FIXED)] == list(FIXED)
        assert sorted(list(rows[0])[len(FIXED) :]) == sorted(f"loss_{term}" for term in terms)
        assert [row["run_id"] for row in rows] == [run_id] * 2
        assert [(row["phase"], int(row["epoch"])) for row in rows] == [(e["phase"], e["epoch"]) for e in expected]
        for name in ("lr", "test_top1", "seconds"):
            assert [float(row[name]) for row in rows] == [e[name] for e in expected]
        for term in terms:
            assert [float(row[f"loss_{term}"]) for row in rows] == [e["losses"][term] for e in expected]
        summary = json.loads((work_dir / "summary.json").read_text(encoding="utf-8"))
        keys = ("status", "best_top1", "last_top1", "best_epoch", "wall_seconds", "error")
        assert {key: summary[key] for key in keys} == {key: record[key] for key in keys}
    assert sorted(len(r["curve"][0]["losses"]) for r in records.values()) == [1, 1, 2]  # CE; CE + KD


def test_tensorboard_events_hold_scalars_config_and_hparams(host, tiny_suite_file: Path, tmp_path: Path) -> None:
    records = _run(host, tiny_suite_file, tmp_path, only="kd")
    record = next(r for r in records.values() if r["config"]["distiller"] == "kd")
    log_dir = tmp_path / "runs" / record["run_id"] / "tensorboard"
    scalars = _scalars(log_dir)
    curve = record["curve"]
    assert [step for step, _ in scalars["top1/test"]] == [0, 1]
    assert [value for _, value in scalars["top1/test"]] == pytest.approx([e["test_top1"] for e in curve])
    assert [value for _, value in scalars["lr"]] == pytest.approx([e["lr"] for e in curve])
    for term in ("ce", "kd"):
        assert [value for _, value in scalars[f"loss/{term}"]] == pytest.approx([e["losses"][term] for e in curve])
    assert scalars["hparam/best_top1"][0][1] == pytest.approx(record["best_top1"])

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    config = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config) == record["config"]
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["distiller"].string_value == "kd"
    assert hparams["params.temperature"].number_value == record["config"]["params"]["temperature"]
    assert hparams["status"].string_value == "finished"


class _KillAfterLoggers:
    @hookimpl(trylast=True)
    def kdbench_epoch_end(self, epoch: EpochRecord) -> None:
        raise KeyboardInterrupt


class _KillBeforeLoggers:
    @hookimpl(tryfirst=True)
    def kdbench_epoch_end(self, epoch: EpochRecord) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("killer", [_KillAfterLoggers, _KillBeforeLoggers], ids=["after-loggers", "before-loggers"])
def test_killed_and_resumed_run_logs_every_epoch_once(host, tiny_suite_file: Path, tmp_path: Path, killer) -> None:
    (reference,) = _run(host, tiny_suite_file, tmp_path / "reference", only="vanilla digits_cnn_s").values()
    run_id = reference["run_id"]
    work_dir = tmp_path / "killed" / "runs" / run_id

    killing = kdbench.create_plugin_host(strict=True, plugins=[("killer", killer())])
    with pytest.raises(KeyboardInterrupt):
        _run(killing, tiny_suite_file, tmp_path / "killed", only="vanilla digits_cnn_s")
    assert (work_dir / "checkpoint.pt").is_file() and not (work_dir / "final.pt").exists()
    assert len(epoch_log.read_metrics(work_dir)) == (1 if killer is _KillAfterLoggers else 0)

    (record,) = _run(host, tiny_suite_file, tmp_path / "killed", only="vanilla digits_cnn_s").values()
    rows = _jsonl(work_dir)
    assert rows == _expected_rows(record)
    without_time = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    reference_dir = tmp_path / "reference" / "runs" / run_id
    assert without_time == [{k: v for k, v in row.items() if k != "seconds"} for row in _jsonl(reference_dir)]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in _csv(work_dir)] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in _csv(reference_dir)
    ]
    if killer is _KillAfterLoggers:  # TensorBoard saw every epoch once, over two event files
        assert [step for step, _ in _scalars(work_dir / "tensorboard")["top1/test"]] == [0, 1]


def test_epoch_log_keeps_rows_in_run_order_and_replaces_repeated_epochs(tmp_path: Path) -> None:
    run = _info(tmp_path)
    epoch_log.kdbench_run_start(run)
    for record in (_epoch(0, "init", feat=2.0), _epoch(0, ce=1.0, kd=0.5), _epoch(1, ce=0.9, kd=0.4)):
        epoch_log.kdbench_epoch_end(run, record)
    rows = _csv(run.work_dir)
    assert list(rows[0]) == [*FIXED, "loss_feat", "loss_ce", "loss_kd"]
    assert [(r["phase"], r["epoch"], r["loss_feat"], r["loss_ce"]) for r in rows] == [
        ("init", "0", "2.0", ""),
        ("main", "0", "", "1.0"),
        ("main", "1", "", "0.9"),
    ]
    epoch_log.kdbench_epoch_end(run, _epoch(1, ce=0.8))  # resumed from an earlier checkpoint: epoch 1 again
    assert [(r["phase"], r["losses"]) for r in _jsonl(run.work_dir)][-1] == ("main", {"ce": 0.8})
    assert len(_jsonl(run.work_dir)) == 3
    epoch_log.kdbench_epoch_end(run, _epoch(0, "init", feat=3.0))  # restarted from scratch
    assert [(r["phase"], r["losses"]) for r in _jsonl(run.work_dir)] == [("init", {"feat": 3.0})]
    assert list(_csv(run.work_dir)[0]) == [*FIXED, "loss_feat"]
    assert sorted(p.name for p in run.work_dir.iterdir()) == ["metrics.csv", "metrics.jsonl"]  # no temporaries


def test_epoch_log_summary_of_a_failed_run_is_dropped_when_it_trains_again(tmp_path: Path) -> None:
    run = _info(tmp_path)
    epoch_log.kdbench_epoch_end(run, _epoch(0))
    epoch_log.kdbench_run_end(run, RunResult(status="failed", error="CUDA out of memory"))
    summary = json.loads((run.work_dir / "summary.json").read_text(encoding="utf-8"))
    assert (summary["status"], summary["error"], summary["best_top1"]) == ("failed", "CUDA out of memory", None)
    assert len(_jsonl(run.work_dir)) == 1  # a failed run has no curve: the logged epochs stay
    epoch_log.kdbench_run_start(run)
    assert not (run.work_dir / "summary.json").exists()


def test_unreadable_metrics_file_is_named_in_the_error(tmp_path: Path) -> None:
    run = _info(tmp_path)
    run.work_dir.mkdir()
    (run.work_dir / "metrics.jsonl").write_text("{not json\n", encoding="utf-8")
    host = kdbench.create_plugin_host(entry_points=False, plugins=[("epoch_log", epoch_log)])
    with pytest.raises(kdbench.KdbenchError, match=r"plugin 'epoch_log'.*metrics\.jsonl is not valid JSON lines"):
        host.notify("kdbench_epoch_end", run=run, epoch=_epoch(0))


def test_tensorboard_writer_is_closed_when_the_run_fails(tmp_path: Path) -> None:
    run = _info(tmp_path)
    threads = set(threading.enumerate())
    tensorboard_logger.kdbench_run_start(run)
    assert set(threading.enumerate()) > threads  # the writer's thread
    tensorboard_logger.kdbench_epoch_end(run, _epoch(0, "init", feat=2.0))
    tensorboard_logger.kdbench_epoch_end(run, _epoch(0))
    tensorboard_logger.kdbench_run_end(run, RunResult(status="failed", error="boom"))
    assert set(threading.enumerate()) <= threads  # closed
    accumulator = EventAccumulator(str(run.work_dir / "tensorboard"))
    accumulator.Reload()
    assert accumulator.Tensors("error/text_summary")[0].tensor_proto.string_val[0] == b"boom"  # written at close
    assert set(accumulator.Tags()["scalars"]) == {
        "init/top1/test",
        "init/lr",
        "init/loss/feat",
        "top1/test",
        "lr",
        "loss/ce",
    }
    tensorboard_logger.kdbench_run_end(run, RunResult(status="failed"))  # no open writer: nothing to do


@pytest.mark.parametrize(
    ("flags", "env", "absent", "present"),
    [
        (["-p", "no:epoch_log"], "", ["metrics.csv", "metrics.jsonl", "summary.json"], ["tensorboard"]),
        ([], "tensorboard", ["tensorboard"], ["metrics.csv", "metrics.jsonl", "summary.json"]),
    ],
    ids=["-p no:epoch_log", f"{DISABLE_ENV}=tensorboard"],
)
def test_disabled_logger_writes_nothing(
    tiny_suite_file: Path, tmp_path: Path, monkeypatch, flags, env, absent, present
) -> None:
    monkeypatch.setenv(DISABLE_ENV, env)
    args = ["--suite", str(tiny_suite_file), "-k", "vanilla digits_cnn_s", "--no-progress"]
    args += ["--results", str(tmp_path / "r.sqlite"), "--work-dir", str(tmp_path / "runs")]
    assert main(["run", *flags, *args, "--latency-batch-sizes", "1,8"]) == 0
    (work_dir,) = (tmp_path / "runs").iterdir()
    names = {path.name for path in work_dir.iterdir()}
    assert "final.pt" in names and not names & set(absent) and set(present) <= names


@pytest.fixture
def no_tensorboard(monkeypatch: pytest.MonkeyPatch):
    """Make ``torch.utils.tensorboard`` fail to import, as it does without the tensorboard package."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    tensorboard_logger._writer_class.cache_clear()
    yield
    tensorboard_logger._writer_class.cache_clear()


def test_missing_tensorboard_warns_once_and_runs_still_finish(
    host, no_tensorboard, tiny_suite_file: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = _run(host, tiny_suite_file, tmp_path)
    assert {r["status"] for r in records.values()} == {"finished"} and len(records) == 3
    messages = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(messages) == 1
    assert "pip install kdbench[tensorboard]" in messages[0] and "-p no:tensorboard" in messages[0]
    assert all((tmp_path / "runs" / run_id / "metrics.csv").is_file() for run_id in records)
    assert not list((tmp_path / "runs").glob("*/tensorboard"))
    assert next(p for p in host.plugins if p.name == "tensorboard").status == "loaded"
