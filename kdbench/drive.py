"""The driver: walks a plan's DAG and hands ready runs (or cohorts) to an executor.

The driver writes the plan once (``WORK_DIR/.plans/``), and for each ready unit — a run, or
the ready runs of one cohort — submits a :class:`~kdbench.executors.Task` whose command is
``python -m kdbench execute PLAN --run ID …``. Workers write only their run directories
(``result.json``, under the run's lock); the driver alone writes the store, ingesting each
record when its task ends. A task that ends without a record (a killed worker, a lost node)
is submitted again, up to ``retries`` times, and resumes from the run's checkpoint; then the
run is stored as failed with the reason. Ctrl-C stops the tasks (resumable), keeps every
stored result, and re-raises.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.executors import Ended, Executor, Task
from kdbench.files import atomic_write_text
from kdbench.plan import Plan, PlannedRun
from kdbench.records import RunResult
from kdbench.results import RESULT_FILE, RESULT_STATUSES, ResultsStore, read_result_file
from kdbench.runner import (
    SuiteReport,
    Workspace,
    import_run_directories,
    pending_runs,
    schedule_runs,
    store_blocked,
    stored_results,
)

__all__ = ["QUEUED_FILE", "DriveOptions", "drive_plan", "plan_file", "run_states"]

#: Written in a run's directory when its task is submitted (``kdbench status`` shows it as queued).
QUEUED_FILE = "queued.json"


@dataclass(frozen=True, slots=True)
class DriveOptions:
    """How the driver starts tasks: the execute command's options, retries, GPUs per task, where logs go."""

    execute_options: tuple[str, ...] = ()
    """Options every ``kdbench execute`` gets (device, data root, work dir, threads, plugins…)."""
    retries: int = 2
    """Submissions of a task that ended without its result, after the first."""
    gpus_per_task: float = 0.0
    python: str = field(default_factory=lambda: sys.executable)
    poll_seconds: float = 0.5
    wait: bool = True
    """False: submit every task whose needs are met and return (the cluster runs them)."""
    lines: bool = True
    """Print one line per run that ends (counts, status, top-1, what runs, the ETA)."""


def plan_file(plan: Plan, work_root: Path) -> Path:
    """Write ``plan`` under ``WORK_ROOT/.plans/`` (named by its content) and return the path."""
    text = plan.to_json()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = work_root / ".plans" / f"{plan.suite.name}-{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


class _Drive:
    """One driver's state: what waits, what runs, attempts, outcomes."""

    def __init__(
        self, plan: Plan, workspace: Workspace, store: ResultsStore, executor: Executor, options: DriveOptions
    ) -> None:
        self.plan, self.workspace, self.store, self.executor, self.options = plan, workspace, store, executor, options
        self.work_root = workspace.options.work_root
        self.path = plan_file(plan, self.work_root)
        self.by_id = {run.run_id: run for run in plan}
        self.waiting: list[PlannedRun] = []
        self.running: dict[str, tuple[Task, float]] = {}  # task key → (task, submitted at)
        self.attempts: dict[str, int] = {}
        self.unusable: dict[str, str] = {}
        self.outcome: dict[str, list[Any]] = {"finished": [], "diverged": [], "failed": [], "elsewhere": []}
        self.waiting_on: dict[str, list[str]] = {}
        self.epoch_seconds: list[float] = []
        self.started = time.monotonic()

    # --- submitting ------------------------------------------------------------------------------------------------

    def ready(self) -> list[PlannedRun]:
        waiting = {run.run_id for run in self.waiting}
        in_flight = set() if self.submit_all else {i for task, _ in self.running.values() for i in task.run_ids}
        return [r for r in self.waiting if not any(n in waiting or n in in_flight for n in r.requires)]

    @property
    def submit_all(self) -> bool:
        """Whether every task is submitted at once, each after the tasks it needs (``--no-wait`` on Slurm)."""
        return not self.options.wait and bool(getattr(self.executor, "dependencies", False))

    def submit_ready(self) -> None:
        """Submit ready units while the executor has room; store runs whose needed run failed as failed."""
        for run in self.ready():
            if run not in self.waiting:
                continue  # taken into a cohort just now
            blocked = next((needed for needed in run.requires if needed in self.unusable), None)
            if blocked is not None:
                self._blocked(run, blocked)
                continue
            if self.executor.capacity() <= 0:
                return
            unit = self._unit(run)
            for member in unit:
                self.waiting.remove(member)
            self._submit(unit)

    def _unit(self, run: PlannedRun) -> list[PlannedRun]:
        cohort = set(self.workspace.schedule.cohort_of(run.run_id))
        ready = self.ready()
        return [r for r in ready if r.run_id in cohort and not any(n in self.unusable for n in r.requires)] or [run]

    def _submit(self, unit: list[PlannedRun]) -> None:
        ids = [run.run_id for run in unit]
        attempt = max(self.attempts.get(run_id, 0) for run_id in ids)
        table = "on" if all(run_id in self.workspace.schedule.table_runs for run_id in ids) else "off"
        command = [self.options.python, "-m", "kdbench", "execute", str(self.path.resolve())]
        for run_id in ids:
            command += ["--run", run_id]
        command += [*self.options.execute_options, "--teacher-table", table]
        log = self.work_root / ids[0] / f"worker-{attempt}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        label = unit[0].label + (f" (+{len(unit) - 1} in its cohort)" if len(unit) > 1 else "")
        needed = {n for run in unit for n in run.requires}
        after = tuple(key for key, (task, _) in self.running.items() if needed & set(task.run_ids))
        task = Task(
            after=after,
            key=f"{ids[0]}#{attempt}",
            run_ids=tuple(ids),
            command=tuple(command),
            label=label,
            work_dir=self.work_root,
            gpus=self.options.gpus_per_task,
            log=log,
        )
        try:
            self.executor.submit(task)
        except Exception as exc:  # an executor that cannot submit: one clear error, nothing stored is lost
            raise KdbenchError(f"the executor could not submit {task.label}: {type(exc).__name__}: {exc}") from None
        self.running[task.key] = (task, time.time())
        for run_id in ids:  # what `kdbench status` reads until the run's worker takes its lock
            atomic_write_text(self.work_root / run_id / QUEUED_FILE, json.dumps({"task": task.key, "at": time.time()}))

    def _blocked(self, run: PlannedRun, needed: str) -> None:
        why = self.unusable[needed]
        self.unusable[run.run_id] = store_blocked(
            run, needed, why, self.workspace, self.plan, self.store, self.waiting_on
        )
        self.waiting.remove(run)

    # --- collecting ------------------------------------------------------------------------------------------------

    def collect(self, ended: Ended, report: Callable[[PlannedRun, dict[str, Any]], None]) -> None:
        """Ingest the records of an ended task; resubmit (or fail) its runs that have none."""
        task, submitted = self.running.pop(ended.task.key)
        for run_id in task.run_ids:
            run = self.by_id[run_id]
            record = self._record_of(run, submitted)
            if record is not None:
                self._settle(run, record, report)
                continue
            self.attempts[run_id] = self.attempts.get(run_id, 0) + 1
            if self.attempts[run_id] <= self.options.retries:
                self.waiting.append(run)
                continue
            why = ended.reason or f"exit code {ended.exit_code}"
            error = f"its worker ended without a result {self.attempts[run_id]} times ({why}; see {task.log})"
            self._settle(run, self.workspace.record(self.plan.suite.name, run, RunResult("failed", error=error), None),
                         report)  # fmt: skip

    def _record_of(self, run: PlannedRun, submitted: float) -> dict[str, Any] | None:
        record = read_result_file(self.work_root / run.run_id)
        if record is None:
            return None
        if record["status"] in RESULT_STATUSES:
            return record
        fresh = (self.work_root / run.run_id / RESULT_FILE).stat().st_mtime >= submitted - 1
        return record if fresh else None  # a failure from an earlier invocation is not this task's

    def _settle(self, run: PlannedRun, record: dict[str, Any], report: Callable[[PlannedRun, dict[str, Any]], None]):
        self.store.put(record)
        status = record["status"]
        if status != "finished":
            self.unusable[run.run_id] = record.get("error") or status
        self.outcome["failed" if status == "failed" else status].append(
            (run.run_id, record.get("error", "")) if status == "failed" else run.run_id
        )
        self.epoch_seconds += [e["seconds"] for e in record.get("curve") or []]
        report(run, record)

    def eta(self) -> str:
        """Return the estimated time left from measured epoch times (per run-epoch, divided by tasks at once)."""
        if not self.epoch_seconds:
            return "?"
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        left = [r for r in self.waiting] + [self.by_id[i] for t, _ in self.running.values() for i in t.run_ids]
        epochs = sum(getattr(getattr(r, "recipe", None), "epochs", 1) or 1 for r in left)
        parallel = max(1, len(self.running) or 1)
        seconds = per_epoch * epochs / parallel
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def drive_plan(
    plan: Plan,
    workspace: Workspace,
    store: ResultsStore,
    executor: Executor,
    options: DriveOptions,
    on_run: Callable[[PlannedRun, dict[str, Any]], None] | None = None,
) -> SuiteReport:
    """Execute every run of ``plan`` without a result through ``executor``; store each record; return the report.

    Results in run directories are imported first; a run whose required run failed is stored as
    failed without being submitted. With ``options.wait`` False, every unit whose needs are met is
    submitted and the driver returns (``kdbench collect`` ingests what the cluster finishes).
    """
    work_root = workspace.options.work_root
    imported = import_run_directories(plan, store, work_root)
    done = set(stored_results(plan, store, work_root))
    pending = pending_runs(plan, done, work_root)
    workspace.schedule = schedule_runs(pending, workspace, data_loaded=False)
    drive = _Drive(plan, workspace, store, executor, options)
    drive.waiting = list(pending)
    settled = [0]

    def report(run: PlannedRun, record: dict[str, Any]) -> None:
        settled[0] += 1
        if options.lines:
            print(progress_line(settled[0], len(pending), run, record, len(drive.running), drive.eta()), flush=True)
        if on_run is not None:
            on_run(run, record)

    try:
        while drive.waiting or drive.running:
            drive.submit_ready()
            if not options.wait:
                if drive.submit_all:
                    while drive.waiting and drive.ready():
                        drive.submit_ready()
                break
            if not drive.running:
                if drive.waiting:  # pragma: no cover - every waiting run has a ready ancestor
                    raise KdbenchError(
                        f"plan {plan.suite.name}: runs {[r.run_id for r in drive.waiting]} can never run"
                    )
                break
            for ended in executor.poll(options.poll_seconds):
                drive.collect(ended, report)
    except KdbenchError:
        executor.shutdown(cancel=True)
        raise
    except KeyboardInterrupt:  # stop the tasks (they resume next time); keep what they finished
        executor.shutdown(cancel=True)
        for task, submitted in list(drive.running.values()):
            for run_id in task.run_ids:
                record = drive._record_of(drive.by_id[run_id], submitted)
                if record is not None and record["status"] in RESULT_STATUSES:
                    store.put(record)
        raise
    executor.shutdown(cancel=False)
    pending_ids = {run.run_id for run in pending}
    return SuiteReport(
        skipped=tuple(run.run_id for run in plan if run.run_id not in pending_ids),
        finished=tuple(drive.outcome["finished"]),
        diverged=tuple(drive.outcome["diverged"]),
        failed=tuple(drive.outcome["failed"]),
        imported=imported,
        waiting_on={run_id: tuple(runs) for run_id, runs in drive.waiting_on.items()},
    )


def progress_line(done: int, total: int, run: PlannedRun, record: dict[str, Any], running: int, eta: str) -> str:
    """Return the line printed when a run ends: counts, its status and top-1, what is running, the ETA."""
    top1 = record.get("best_top1")
    what = record["status"] + ("" if top1 is None else f", top-1 {top1:.2f}")
    return f"[{done}/{total}] {run.label}: {what} ({running} running, ETA {eta})"


def run_states(plan: Plan, work_root: Path) -> dict[str, str]:
    """Return run id → ``finished``/``diverged``/``failed`` (its result), ``running`` (its lock is held),
    ``queued`` (submitted, not started), ``interrupted`` (a checkpoint, nobody on it) or ``planned``."""
    from kdbench.locks import RunLock

    states = {}
    for run in plan:
        directory = work_root / run.run_id
        record = read_result_file(directory) if (directory / RESULT_FILE).exists() else None
        if record is not None:
            states[run.run_id] = record["status"]
            continue
        if directory.is_dir():
            lock = RunLock(directory)
            if not lock.acquire(blocking=False):
                states[run.run_id] = "running"
                continue
            lock.release()
        if (directory / QUEUED_FILE).exists():
            states[run.run_id] = "queued"
        elif (directory / "checkpoint.pt").exists():
            states[run.run_id] = "interrupted"
        else:
            states[run.run_id] = "planned"
    return states
