"""The ``kdbench`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabulate import tabulate

from kdbench._plugins import PluginHost, create_plugin_host
from kdbench.distributed import init_distributed, launch, local_rank, torchrun_world
from kdbench.errors import KdbenchError
from kdbench.plan import Plan, PlannedRun, TeacherCheck, TrainRun, plan_suite
from kdbench.publish import Boards, merged_records, teacher_checkpoints
from kdbench.reports import (
    FAIL_ON,
    METRICS,
    check_export_target,
    compare_records,
    find_run,
    load_records,
    render_comparison,
    render_run,
    select_records,
    should_fail,
    write_csv,
)
from kdbench.results import (
    ResultsStore,
    import_records,
    jsonl_text,
    read_result_file,
    read_result_files,
    write_jsonl,
)
from kdbench.schedule import ScheduleOptions
from kdbench.specs import SuiteSpec
from kdbench.suites import load_suite_file

if TYPE_CHECKING:
    import torch

__all__ = ["build_parser", "main"]

LIST_KINDS = ("models", "distillers", "pruners", "datasets", "suites", "teachers", "executors", "loaders")
DEFAULT_BOARDS = Path("leaderboards")


def _plugin_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("plugins")
    group.add_argument(
        "-p", dest="plugin_flags", action="append", default=[], metavar="no:NAME", help="disable plugin NAME"
    )
    group.add_argument("--strict-plugins", action="store_true", help="a broken plugin is an error, not a warning")
    return parent


def _store_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("KDBENCH_RESULTS", "results/kdbench.sqlite")),
        help="results database (default: results/kdbench.sqlite or $KDBENCH_RESULTS)",
    )
    return parent


def _teacher_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("teachers")
    group.add_argument(
        "--teacher", action="append", default=[], metavar="ARCH=SOURCE", help="use a checkpoint for teacher ARCH"
    )
    group.add_argument(
        "--teacher-set",
        metavar="NAME",
        help="use the registered teacher ARCH@NAME for every teacher that has one (e.g. mdistiller)",
    )
    return parent


def _selection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--suite", required=True, help="registered suite name or path to a suite .toml file")
    parent.add_argument("-k", "--only", action="append", default=[], metavar="PATTERN", help="only runs matching")
    parent.add_argument("--seeds", help="comma-separated seeds instead of the suite's (ad-hoc runs)")
    parent.add_argument("--epochs", type=int, help="epochs instead of the suite's (ad-hoc runs)")
    return parent


def _execution_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("execution")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    group.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    group.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    group.add_argument(
        "--fused-sgd", action="store_true", help="fused SGD kernel (CUDA; same formula, last-bit rounding differs)"
    )
    group.add_argument("--data-root", type=Path, default=Path(os.environ.get("KDBENCH_DATA", "data")))
    group.add_argument("--download", action="store_true", help="download datasets that are missing")
    group.add_argument("--teacher-root", type=Path, default=Path("teachers"), help="where teacher checkpoints live")
    group.add_argument("--work-dir", type=Path, default=Path("runs"), help="checkpoints, weights and result per run")
    group.add_argument("--latency-batch-sizes", default="1,256", help="batch sizes timed for the efficiency table")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument(
        "--cohorts",
        choices=("on", "off"),
        default="on",
        help="train runs of one teacher, seed and recipe in lockstep, one teacher pass per step (same numbers; "
        "default on)",
    )
    group.add_argument("--cohort-size", type=int, default=32, metavar="N", help="at most N runs per cohort (32)")
    group.add_argument(
        "--teacher-table",
        choices=("auto", "on", "off"),
        default="auto",
        help="read the teacher's logits from its table of every train image and view (auto: where it saves "
        "teacher passes)",
    )
    group.add_argument(
        "--loader",
        default="auto",
        metavar="NAME",
        help="how streamed datasets (ImageNet) are read: pil, decode, dali or a plugin's (`kdbench list loaders`); "
        "auto: the best available for the device",
    )
    group.add_argument(
        "--loader-workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="worker processes reading a streamed dataset (default: min(8, CPU cores); 0: in the training process)",
    )
    group.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train each run with N processes of this node (DDP: one per GPU, gloo on the CPU; torchrun-compatible)",
    )
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch (default: torch's choice; results depend on it, records say which; on a "
        "loaded machine 1 avoids thrashing)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``kdbench`` command."""
    plugins, store, teachers = _plugin_options(), _store_options(), _teacher_options()
    selection, execution = _selection_options(), _execution_options()
    parser = argparse.ArgumentParser(prog="kdbench", description="Knowledge-distillation benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", parents=[plugins, store, teachers, selection, execution], help="train every missing run of a suite"
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan without touching data")
    scale = run.add_argument_group("executors (default: every run in this process, one after the other)")
    scale.add_argument("--executor", metavar="NAME", help="local, slurm, ray, or a plugin's (`kdbench list executors`)")
    scale.add_argument("--workers", type=int, help="local: processes at once (default: one per visible GPU, else 1)")
    scale.add_argument("--runs-per-gpu", type=int, default=1, metavar="K", help="tasks sharing one GPU (default 1)")
    scale.add_argument("--retries", type=int, default=2, help="resubmissions of a task whose worker died (default 2)")
    scale.add_argument("--no-wait", action="store_true", help="submit and return; `kdbench collect` ingests later")
    scale.add_argument(
        "--executor-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="executor setting, e.g. slurm_partition=gpu, slurm_time=240, ray_address=auto (repeatable)",
    )

    plan = sub.add_parser(
        "plan", parents=[plugins, teachers, selection], help="write a suite's plan (typed runs, their DAG) as JSON"
    )
    plan.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")

    execute = sub.add_parser(
        "execute",
        parents=[plugins, execution],
        help="execute one run of a plan file here; its result goes to WORK_DIR/RUN_ID/result.json",
    )
    execute.add_argument("plan", type=Path, metavar="PLAN", help="a plan file (from `kdbench plan -o`)")
    execute.add_argument(
        "--run",
        required=True,
        action="append",
        metavar="RUN_ID",
        help="the run's id (or a unique prefix, ≥ 4); repeat it for a cohort (runs of one teacher, seed, recipe)",
    )

    status = sub.add_parser(
        "status",
        parents=[plugins, teachers, selection],
        help="where a suite's runs are: planned, queued, running, interrupted, finished, diverged, failed",
    )
    status.add_argument("--work-dir", type=Path, default=Path("runs"), help="the runs' work directory")
    collect = sub.add_parser(
        "collect",
        parents=[plugins, store, teachers, selection],
        help="ingest the results a cluster left in the run directories of a suite (idempotent)",
    )
    collect.add_argument("--work-dir", type=Path, default=Path("runs"), help="the runs' work directory")

    board = sub.add_parser(
        "leaderboard", parents=[plugins, store, teachers], help="render leaderboards from stored results"
    )
    board.add_argument(
        "--suite", action="append", default=[], help="suite(s) to re-plan and render (default: every suite)"
    )
    board.add_argument("--out", type=Path, default=DEFAULT_BOARDS, help="directory of the leaderboards")
    board.add_argument(
        "--check", action="store_true", help="fail, naming what is stale, if committed leaderboards need re-rendering"
    )
    board.add_argument(
        "--from-jsonl",
        action="store_true",
        help="re-render from the committed records and plans in --out, not the database (with --suite: re-plan it)",
    )
    board.add_argument("--seeds", help="the board of ad-hoc runs made with these --seeds (needs --suite and --out)")
    board.add_argument("--epochs", type=int, help="the board of ad-hoc runs made with --epochs (needs --suite, --out)")

    sub.add_parser("plugins", parents=[plugins], help="list plugins and what they register")

    lister = sub.add_parser("list", parents=[plugins], help="list registry entries")
    lister.add_argument("kind", choices=LIST_KINDS)
    lister.add_argument("pattern", nargs="?", help="glob filter, e.g. 'resnet*'")

    profile = sub.add_parser("profile", parents=[plugins], help="params, MACs and latency of a model")
    profile.add_argument("model")
    profile.add_argument("--num-classes", type=int)
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--batch-sizes", default="1,256", help="comma-separated latency batch sizes")

    new = sub.add_parser("new-plugin", help="write a ready-to-install plugin package (one distiller, one test)")
    new.add_argument("name", help="plugin name, lower case (e.g. my_method): entry point, distiller, kdbench_NAME")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create kdbench-NAME/ (default: here)")
    new.add_argument("--force", action="store_true", help="overwrite the skeleton's files in an existing directory")
    _add_report_parsers(sub, store)
    return parser


def _add_report_parsers(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    results = sub.add_parser("results", help="export stored results, import run directories")
    commands = results.add_subparsers(dest="results_command", metavar="export|import", required=True)
    export = commands.add_parser("export", parents=[store], help="write stored runs as CSV or JSON lines")
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument("--suite", help="only runs of this suite")
    export.add_argument("--status", choices=("finished", "failed", "diverged"), help="only runs with this status")
    export.add_argument("-o", "--output", type=Path, help="file to write (default or '-': standard output)")
    ingest = commands.add_parser(
        "import", parents=[store], help="store the result records found in run directories (idempotent)"
    )
    ingest.add_argument("runs", type=Path, metavar="RUNS_DIR", help="a work directory (RUNS_DIR/RUN_ID/result.json)")

    compare = sub.add_parser("compare", help="per-cell deltas between two result sets (stores, .jsonl, REV:PATH)")
    source = "results database, .jsonl file, directory of .jsonl files, or any of these in git as REV:PATH"
    compare.add_argument("a", metavar="A", help=source)
    compare.add_argument("b", metavar="B", help=source)
    compare.add_argument("--metric", choices=METRICS, default="best_top1")
    compare.add_argument("--tolerance", type=float, default=0.5, help="flag |delta| above this (top-1 points)")
    compare.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        help="exit 1 on drift, on cells missing from a side, on cells of differing environments, any: drift or missing",
    )
    compare.add_argument("--suite", help="only cells of this suite")

    show = sub.add_parser("show", parents=[store], help="config, result, profile and curve of one run")
    show.add_argument("run_id", metavar="RUN_ID", help="run id or a unique prefix of at least 4 characters")


def _host(args: argparse.Namespace) -> PluginHost:
    disabled = []
    for flag in args.plugin_flags:
        if not flag.startswith("no:") or len(flag) == 3:
            raise KdbenchError(f"-p takes no:NAME (to disable plugin NAME), got {flag!r}")
        disabled.append(flag[3:])
    host = create_plugin_host(disabled=disabled, strict=args.strict_plugins)
    host.models  # noqa: B018 -- collect registrations now, so broken plugins are reported up front
    for problem in host.problems:
        print(f"kdbench: warning: {problem}", file=sys.stderr)
    return host


def _is_suite_file(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name


def _suite(name: str, host: PluginHost, boards: Boards | None = None) -> SuiteSpec:
    """Return the suite ``name``: a suite file, a registered suite, or the suite of board ``name`` in ``boards``."""
    if _is_suite_file(name):
        return load_suite_file(Path(name))
    if name not in host.suites and boards is not None and name in boards.names():
        return boards.plan(name).suite
    return host.suites.get(name)


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise KdbenchError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(value <= 0 for value in values):
        raise KdbenchError(f"{option} takes positive integers, got {text!r}")
    return values


def _adjust(suite: SuiteSpec, seeds: str | None, epochs: int | None) -> SuiteSpec:
    if seeds:
        try:
            suite = replace(suite, seeds=tuple(int(s) for s in seeds.split(",")))
        except ValueError:
            raise KdbenchError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    if epochs is not None:
        if epochs <= 0:
            raise KdbenchError("--epochs must be positive")
        suite = replace(suite, recipe=replace(suite.recipe, epochs=epochs))
    return suite


def _teacher_overrides(
    args: argparse.Namespace, suite: SuiteSpec, host: PluginHost, strict: bool = True
) -> dict[str, str]:
    """Return teacher arch → checkpoint source from the ``--teacher-set`` and ``--teacher`` options."""
    overrides = {}
    if args.teacher_set:
        named = {pair.teacher: f"{pair.teacher}@{args.teacher_set}" for pair in suite.pairs}
        overrides = {arch: name for arch, name in named.items() if name in host.teachers}
        if not overrides and strict:
            raise KdbenchError(f"no registered teacher of set {args.teacher_set!r} fits suite {suite.name!r}")
    for item in args.teacher:
        arch, sep, source = item.partition("=")
        if not sep or not arch or not source:
            raise KdbenchError(f"--teacher takes ARCH=SOURCE (a checkpoint path or registered teacher), got {item!r}")
        overrides[arch] = source
    return overrides


def _selected_plan(args: argparse.Namespace, host: PluginHost) -> tuple[Plan, dict[str, str]]:
    """Return the plan the selection options ask for (suite, seeds, epochs, teachers, -k) and its teacher overrides."""
    suite = _adjust(_suite(args.suite, host), args.seeds, args.epochs)
    overrides = _teacher_overrides(args, suite, host)
    plan = plan_suite(suite, host, overrides).select(args.only)
    if not len(plan):
        raise KdbenchError(f"no run of suite {suite.name!r} matches {args.only}")
    return plan, overrides


def _print_plan(plan: Sequence[PlannedRun], pending: set[str], schedule: Any = None) -> None:
    rows = []
    for run in plan:
        pair = run.pair.label if run.pair else ("—" if run.role == "student" else run.model)
        recipe = getattr(run, "recipe", None)
        method = run.to_config()["distiller"]
        rows.append(
            [
                run.run_id,
                run.role,
                pair,
                run.model,
                method,
                "—" if run.seed is None else run.seed,
                recipe.epochs if recipe is not None else "—",
                "to run" if run.run_id in pending else "stored",
                *([schedule.describe(run.run_id) if run.run_id in pending else ""] if schedule else []),
            ]
        )
    headers = ["run id", "kind", "pair", "model", "method", "seed", "epochs", "result"]
    headers += ["execution"] if schedule else []
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    print(f"{len(plan)} runs, {sum(r.run_id not in pending for r in plan)} already stored")
    if schedule is not None:
        cohorts, members = len(schedule.cohorts), sum(len(c) for c in schedule.cohorts)
        print(
            f"{cohorts} cohort{'' if cohorts == 1 else 's'} of {members} runs (one teacher pass per step), "
            f"{len(schedule.table_runs)} runs read a teacher table; the same math as alone (`--cohorts off`, "
            "`--teacher-table off`)"
        )


def _device(name: str) -> torch.device:
    """Return the torch device ``--device`` names; an unknown or unavailable one is a KdbenchError."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdbenchError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdbenchError(f"--device {name}: no CUDA device is available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise KdbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None and torchrun_world()[1] > 1:
        device = torch.device("cuda", local_rank())  # one GPU per rank
        torch.cuda.set_device(device)
    return device


def _cohort_budget(device: Any) -> int | None:
    """Return the bytes a cohort's members may hold on ``device``: half an accelerator's memory; no cap on the CPU."""
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory // 2


def _pick_loader(host: PluginHost, name: str, device: Any) -> Any:
    """Return the loader ``--loader`` names (``auto``: the available one of highest priority; None if none is)."""
    if name != "auto":
        spec = host.loaders.get(name)
        reason = spec.unavailable(device)
        if reason:
            raise KdbenchError(f"--loader {name} cannot serve {device}: {reason}")
        return spec
    ranked = sorted(
        (spec for spec in host.loaders if device.type in spec.priority and spec.unavailable(device) is None),
        key=lambda spec: (-spec.priority[device.type], spec.name),
    )
    return ranked[0] if ranked else None


def _runner_options(args: argparse.Namespace, overrides: dict[str, str], host: PluginHost) -> Any:
    """Return the RunnerOptions of the execution options (devices and directories checked)."""
    from kdbench.engine import EngineOptions
    from kdbench.runner import RunnerOptions

    for option, path in (("--work-dir", args.work_dir), ("--teacher-root", args.teacher_root)):
        if path.exists() and not path.is_dir():
            raise KdbenchError(f"{option} {path} is a file; give a directory")
    if args.threads is not None:
        if args.threads <= 0:
            raise KdbenchError(f"--threads takes a positive integer, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.loader_workers < 0:
        raise KdbenchError(f"--loader-workers takes 0 or more, got {args.loader_workers}")
    device = _device(args.device)
    rank, world = init_distributed(device)
    engine = EngineOptions(
        device=device,
        bf16=args.bf16,
        channels_last=args.channels_last,
        fused_sgd=args.fused_sgd,
        progress=not args.no_progress,
        loader=_pick_loader(host, args.loader, device),
        loader_workers=args.loader_workers,
        rank=rank,
        world_size=world,
    )
    schedule = ScheduleOptions(
        cohorts=args.cohorts == "on" and args.nproc_per_node == 1,  # a run of several processes trains alone
        max_members=args.cohort_size,
        memory_budget=_cohort_budget(engine.device),
        teacher_table=args.teacher_table,
    )
    return RunnerOptions(
        schedule=schedule,
        data_root=args.data_root,
        teacher_root=args.teacher_root,
        work_root=args.work_dir,
        download=args.download,
        engine=engine,
        teacher_overrides=overrides,
        latency_batch_sizes=_integers(args.latency_batch_sizes, "--latency-batch-sizes"),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    if torchrun_world()[1] > 1:
        raise KdbenchError(
            "under torchrun, start one run: `kdbench execute PLAN --run ID` (or let `kdbench run --nproc-per-node N` "
            "start each run's processes)"
        )
    if args.nproc_per_node < 1:
        raise KdbenchError(f"--nproc-per-node takes a positive integer, got {args.nproc_per_node}")
    host = _host(args)
    plan, overrides = _selected_plan(args, host)
    if args.dry_run:
        return _dry_run(args, host, plan)
    options = _runner_options(args, overrides, host)
    from kdbench.runner import run_plan

    with ResultsStore(args.results) as store:
        if args.executor or args.workers or args.nproc_per_node > 1:
            report = _drive(args, host, plan, store, options)
        else:
            report = run_plan(plan, host, store, options)
    elsewhere = f", {len(report.elsewhere)} done by another kdbench" if report.elsewhere else ""
    imported = f" ({len(report.imported)} imported from run directories)" if report.imported else ""
    print(
        f"suite {plan.suite.name}: {len(report.finished)} finished, {len(report.diverged)} diverged, "
        f"{len(report.failed)} failed{elsewhere}, {len(report.skipped)} already stored{imported}; "
        f"results in {args.results}"
    )
    for run_id, error in report.failed:
        waiting = report.waiting_on.get(run_id, ())
        after = f" ({len(waiting)} {'run waits' if len(waiting) == 1 else 'runs wait'} on it)" if waiting else ""
        print(f"  failed {run_id}{after}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _execute_options(args: argparse.Namespace) -> list[str]:
    """Return the options every `kdbench execute` of a driver gets: the run command's execution options."""
    # Paths absolute: a worker may start in another directory (a Slurm job, a Ray worker).
    data, teachers, work = (str(path.resolve()) for path in (args.data_root, args.teacher_root, args.work_dir))
    forwarded = ["--device", args.device, "--data-root", data, "--teacher-root", teachers, "--work-dir", work]
    forwarded += ["--latency-batch-sizes", args.latency_batch_sizes, "--no-progress"]
    forwarded += ["--loader", args.loader, "--loader-workers", str(args.loader_workers)]
    if args.nproc_per_node > 1:
        forwarded += ["--nproc-per-node", str(args.nproc_per_node)]
    for flag in ("bf16", "channels_last", "fused_sgd", "download", "strict_plugins"):
        if getattr(args, flag):
            forwarded.append("--" + flag.replace("_", "-"))
    threads = args.threads
    if threads is None and args.device == "cpu" and (args.executor or "local") == "local":
        # Workers sharing this machine's cores: each gets its share (torch's threads thrash when oversubscribed).
        threads = max(1, (os.cpu_count() or 1) // (args.workers or 1))
    if threads is not None:
        forwarded += ["--threads", str(threads)]
    for flag in args.plugin_flags:
        forwarded += ["-p", flag]
    return forwarded


def _executor_settings(items: Sequence[str]) -> dict[str, str]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KdbenchError(f"--executor-option takes KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def _drive(args: argparse.Namespace, host: PluginHost, plan: Plan, store: ResultsStore, options: Any) -> Any:
    """Run the plan through the executor the options name (``--workers`` alone means ``local``)."""
    from kdbench.drive import DriveOptions, drive_plan
    from kdbench.executors import ExecutorOptions
    from kdbench.runner import Workspace

    if (args.workers is not None and args.workers < 1) or args.runs_per_gpu < 1 or args.retries < 0:
        raise KdbenchError("--workers and --runs-per-gpu take a positive integer, --retries zero or more")
    spec = host.executors.get(args.executor or "local")
    executor_options = ExecutorOptions(
        workers=args.workers,
        runs_per_gpu=args.runs_per_gpu,
        processes_per_run=args.nproc_per_node,
        device=args.device,
        wait=not args.no_wait,
        settings=_executor_settings(args.executor_option),
    )
    try:
        executor = spec.builder(executor_options)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        raise KdbenchError(f"executor {spec.name!r} cannot start: {exc}") from None
    per_run = args.nproc_per_node if args.nproc_per_node > 1 else 1.0 / args.runs_per_gpu
    gpus = float(per_run) if args.device.startswith("cuda") else 0.0
    drive = DriveOptions(
        execute_options=tuple(_execute_options(args)), retries=args.retries, gpus_per_task=gpus, wait=not args.no_wait
    )
    return drive_plan(plan, Workspace(host, options), store, executor, drive)


def _dry_run(args: argparse.Namespace, host: PluginHost, plan: Plan) -> int:
    """Print the plan and what a run would do; check what its runs need that can be checked without data."""
    from kdbench.runner import pending_runs, stored_results
    from kdbench.weights import find_checkpoint

    store = ResultsStore(args.results, read_only=True) if args.results.exists() else None
    try:
        done = set(stored_results(plan, store, args.work_dir))
    finally:
        if store is not None:
            store.close()
    pending_list = pending_runs(plan, done, args.work_dir)
    pending = {run.run_id for run in pending_list}
    options = _runner_options(args, {}, host)  # the numeric and device options, the directories
    from kdbench.runner import Workspace, schedule_runs

    _print_plan(plan.runs, pending, schedule_runs(pending_list, Workspace(host, options), data_loaded=False))
    problems = []
    for run in plan:
        if isinstance(run, TeacherCheck) and run.run_id in pending:
            try:
                find_checkpoint(run.source, host, args.teacher_root)
            except KdbenchError as exc:
                problems.append(f"run {run.run_id} ({run.label}): {exc}")
    for problem in problems:
        print(f"kdbench: error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _cmd_plan(args: argparse.Namespace) -> int:
    host = _host(args)
    plan, _ = _selected_plan(args, host)
    if args.output is None:
        sys.stdout.write(plan.to_json())
    else:
        plan.write(args.output)
        print(f"plan of suite {plan.suite.name}: {len(plan)} runs → {args.output}", file=sys.stderr)
    return 0


def _result_in(run_dir: Path) -> dict[str, Any] | None:
    """Return the record in ``run_dir`` if it is a result (finished or diverged), else None."""
    record = read_result_file(run_dir)
    return record if record is not None and record["status"] in ("finished", "diverged") else None


def _cmd_execute(args: argparse.Namespace) -> int:
    from kdbench.drive import QUEUED_FILE
    from kdbench.locks import RunLock
    from kdbench.runner import RESULT_NAME, Workspace, execute_cohort, execute_run, method_traits
    from kdbench.schedule import Schedule, ScheduleOptions, TableCost, make_schedule

    if args.nproc_per_node < 1:
        raise KdbenchError(f"--nproc-per-node takes a positive integer, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and torchrun_world()[1] == 1:
        return launch(args.argv, args.nproc_per_node)  # N copies of this command, one per rank
    plan = Plan.load(args.plan)
    runs = list({run.run_id: run for run in map(plan.get, args.run)}.values())
    host = _host(args)
    options = _runner_options(args, {}, host)
    engine = options.engine
    if engine.distributed:
        if len(runs) > 1:
            raise KdbenchError("a run trained by several processes trains alone: give one --run (no cohort)")
        if not isinstance(runs[0], TrainRun):  # a teacher check or a pruning: rank 0 does it alone
            if not engine.writes:
                return 0
            options = replace(options, engine=replace(engine, rank=0, world_size=1))
    for run in runs:
        for needed in run.requires:
            if _result_in(options.work_root / needed) is None:
                raise KdbenchError(
                    f"run {run.run_id} ({run.label}) needs run {needed}, which has no result in "
                    f"{options.work_root / needed}; execute it first"
                )
    writes = options.engine.writes
    locks = [RunLock(options.work_root / run.run_id) for run in sorted(runs, key=lambda r: r.run_id)] if writes else []
    for lock in locks:  # another process on one of them: wait, then find its result
        lock.acquire()
        (lock.path.parent / QUEUED_FILE).unlink(missing_ok=True)  # started: no longer queued
    try:
        done = {run.run_id: _result_in(options.work_root / run.run_id) for run in runs}
        todo = _agreed([run for run in runs if done[run.run_id] is None], runs, options.engine)
        for run in runs:
            stored = done[run.run_id]
            if stored is not None and writes:
                target = options.work_root / run.run_id / RESULT_NAME
                print(f"run {run.run_id} ({run.label}): already {stored['status']} in {target}; nothing to do")
        workspace = Workspace(host, options)
        traits = lambda method: method_traits(host.distillers.get(method).builder)  # noqa: E731
        forced = ScheduleOptions(cohorts=False, teacher_table="on")
        tables = make_schedule(todo, traits, forced, table_cost=lambda run: TableCost(0, 0)).table_runs
        tables = tables if args.teacher_table == "on" else frozenset()
        cohort = (tuple(run.run_id for run in todo),) if len(todo) > 1 else ()
        workspace.schedule = Schedule(cohort, tables)
        if len(todo) > 1:
            records = execute_cohort(todo, workspace, plan.suite.name)  # type: ignore[arg-type]
        else:
            records = [execute_run(run, workspace, plan.suite.name) for run in todo]
    finally:
        for lock in locks:
            lock.release()
    failed = 0
    for run, record in zip(todo, records):
        top1 = "" if record["best_top1"] is None else f", best top-1 {record['best_top1']:.2f}"
        if writes:
            target = options.work_root / run.run_id / RESULT_NAME
            print(f"run {run.run_id} ({run.label}): {record['status']}{top1} → {target}")
        if record["status"] == "failed":
            print(f"  {record['error']}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _agreed(todo: list[PlannedRun], runs: list[PlannedRun], engine: Any) -> list[PlannedRun]:
    """Return rank 0's list of runs to do, on every rank of a distributed run (rank 0 holds the locks)."""
    if not engine.distributed:
        return todo
    import torch.distributed as dist

    decided = [[run.run_id for run in todo]]
    dist.broadcast_object_list(decided, src=0)
    return [run for run in runs if run.run_id in decided[0]]


STATES = ("planned", "queued", "running", "interrupted", "finished", "diverged", "failed")


def _cmd_status(args: argparse.Namespace) -> int:
    from kdbench.drive import run_states

    plan, _ = _selected_plan(args, _host(args))
    states = run_states(plan, args.work_dir)
    counts = {state: sum(s == state for s in states.values()) for state in STATES}
    rows = [[run.run_id, run.label, states[run.run_id]] for run in plan if states[run.run_id] not in ("finished",)]
    if rows:
        print(tabulate(rows, headers=["run id", "run", "state"], tablefmt="simple", disable_numparse=True))
    print(f"suite {plan.suite.name}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from kdbench.runner import import_run_directories

    plan, _ = _selected_plan(args, _host(args))
    with ResultsStore(args.results) as store:
        imported = import_run_directories(plan, store, args.work_dir)
    print(f"suite {plan.suite.name}: {len(imported)} results collected from {args.work_dir} into {args.results}")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    boards = Boards(args.out)
    where = "" if args.out == DEFAULT_BOARDS else f" --out {args.out}"
    adhoc = args.seeds is not None or args.epochs is not None
    if adhoc and (not args.suite or args.out == DEFAULT_BOARDS or args.check or args.from_jsonl):
        raise KdbenchError(
            "--seeds / --epochs render the board of ad-hoc runs: give --suite and an --out other than "
            f"{DEFAULT_BOARDS} (the suite's own board stays as its planned runs make it)"
        )
    if args.check:
        return _check_leaderboards(args, boards, where)
    if args.from_jsonl and not args.suite:
        names = [name for name in boards.names()]
        if not names:
            raise KdbenchError(f"no leaderboard records (*.jsonl) in {args.out}")
        for name in names:
            print(boards.rerender(name))
    else:
        host = _host(args)
        if args.from_jsonl:
            for name in args.suite:
                suite = _suite(name, host, boards)
                records = boards.records(suite.name)
                print(boards.write(plan_suite(suite, host, teacher_checkpoints(records)), records))
        else:
            _write_from_store(args, boards, host)
    if not boards.summaries:
        print(f"nothing rendered: {args.results} holds no run of a registered suite (see `kdbench run --dry-run`)")
        return 0
    index = boards.write_index()
    if index is not None:
        print(f"leaderboard index → {index}")
    return 0


def _write_from_store(args: argparse.Namespace, boards: Boards, host: PluginHost) -> None:
    names = args.suite or host.suites.names()
    if not args.results.exists():
        raise KdbenchError(f"no results database at {args.results}; run `kdbench run --suite NAME` first")
    if not args.suite:
        for name in boards.names():
            if name not in host.suites:
                print(f"leaderboard {name}: its suite is not registered here; the board is kept as it was rendered")
    with ResultsStore(args.results, read_only=True) as store:
        for name in names:
            suite = _adjust(_suite(name, host, boards), args.seeds, args.epochs)
            overrides = _teacher_overrides(args, suite, host, strict=bool(args.suite))
            wanted = {run.run_id for run in plan_suite(suite, host, overrides)}
            records = merged_records(store, wanted, boards.path(suite.name, ".jsonl"))
            if not records and not args.suite:
                continue
            print(boards.write(plan_suite(suite, host, teacher_checkpoints(records)), records))


def _check_leaderboards(args: argparse.Namespace, boards: Boards, where: str) -> int:
    names = [load_suite_file(Path(n)).name if _is_suite_file(n) else n for n in args.suite] or boards.names()
    if not names:
        raise KdbenchError(f"no committed leaderboards (*.jsonl) in {args.out}")
    report = boards.check(names, fix=f"kdbench leaderboard --from-jsonl{where}")
    for line in report.lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
    return 1 if report.stale else 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    host = _host(args)
    rows = []
    for info in sorted(host.plugins, key=lambda p: p.name):
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(info.registers.items()))
        if info.observes:
            hooks = ", ".join(hook.removeprefix("kdbench_") for hook in info.observes)
            what = f"{what}; observes: {hooks}" if what else f"observes: {hooks}"
        detail = what if info.status == "loaded" else info.error
        rows.append([info.name, f"{info.distribution} {info.version}".strip(), info.status, detail])
    print(tabulate(rows, headers=["plugin", "distribution", "status", "registers"], tablefmt="simple"))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    host = _host(args)
    registry = host.registry(args.kind)
    names = registry.names(args.pattern)
    rows = [_list_row(args.kind, registry.get(name), registry.owner(name)) for name in names]
    headers = {
        "models": ["model", "description", "citation", "plugin"],
        "distillers": ["distiller", "family", "defaults", "description", "citation", "plugin"],
        "datasets": ["dataset", "classes", "image", "description", "plugin"],
        "suites": ["suite", "dataset", "pairs", "methods", "seeds", "description", "plugin"],
        "teachers": ["teacher", "model", "dataset", "path", "reported top-1", "plugin"],
        "pruners": ["pruner", "kind", "defaults", "description", "citation", "plugin"],
        "executors": ["executor", "description", "needs", "plugin"],
        "loaders": ["loader", "description", "auto priority", "plugin"],
    }[args.kind]
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    return 0


def _list_row(kind: str, spec: object, plugin: str) -> list[str]:
    if kind == "models":
        return [spec.name, spec.description, spec.citation, plugin]
    if kind == "distillers":
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        return [spec.name, spec.family, defaults, spec.description, spec.citation, plugin]
    if kind == "pruners":
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        kind_text = "structured" if spec.structured else "unstructured"
        return [spec.name, kind_text, defaults, spec.description, spec.citation, plugin]
    if kind == "datasets":
        size = "×".join(map(str, spec.image_size))
        return [spec.name, str(spec.num_classes), size, spec.description, plugin]
    if kind == "executors":
        return [spec.name, spec.description, spec.needs, plugin]
    if kind == "loaders":
        priority = ", ".join(f"{device} {rank}" for device, rank in spec.priority.items())
        return [spec.name, spec.description, priority, plugin]
    if kind == "suites":
        methods = ", ".join(spec.distillers)
        seeds = ",".join(map(str, spec.seeds))
        return [spec.name, spec.dataset, str(len(spec.pairs)), methods, seeds, spec.description, plugin]
    top1 = "" if spec.reported_top1 is None else f"{spec.reported_top1:.2f}"
    return [spec.name, spec.model, spec.dataset, spec.path, top1, plugin]


def _cmd_profile(args: argparse.Namespace) -> int:
    from kdbench.profile import MACS_CONVENTION, profile_model
    from kdbench.weights import create_model

    host = _host(args)
    spec = host.models.get(args.model)
    batch_sizes = _integers(args.batch_sizes, "--batch-sizes")
    model = create_model(args.model, args.num_classes, host=host)
    result = profile_model(model, spec.input_size, device=_device(args.device), batch_sizes=batch_sizes)
    print(f"{spec.name}: {result.params:,} params, {result.macs / 1e6:.1f} M MACs ({MACS_CONVENTION})")
    for latency in result.latency:
        print(
            f"  latency batch {latency.batch_size}: {latency.median_ms:.3f} ms median "
            f"over {latency.iterations} iterations on {result.device_name}"
        )
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    if args.results_command == "import":
        return _import_results(args)
    if args.output == Path("-"):  # the usual spelling of standard output
        args.output = None
    if args.output is not None:
        check_export_target(args.output, args.results)
    records = select_records(load_records(args.results), args.suite, args.status)
    if args.output is None:
        if args.format == "csv":
            write_csv(records, sys.stdout)
        else:
            sys.stdout.write(jsonl_text(records))
        return 0
    if args.format == "csv":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8", newline="") as out:
            write_csv(records, out)
    else:
        write_jsonl(records, args.output)
    print(f"{len(records)} runs → {args.output}", file=sys.stderr)
    return 0


def _import_results(args: argparse.Namespace) -> int:
    records = read_result_files(args.runs)
    with ResultsStore(args.results) as store:
        counts = import_records(store, records)
    summary = ", ".join(f"{count} {what}" for what, count in counts.items())
    print(f"{len(records)} result record(s) in {args.runs}: {summary}; results in {args.results}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    a = select_records(load_records(args.a), args.suite)
    b = select_records(load_records(args.b), args.suite)
    deltas = compare_records(a, b, args.metric, args.tolerance)
    print(render_comparison(deltas, args.metric, args.tolerance), end="")
    return 1 if should_fail(deltas, args.fail_on) else 0


def _cmd_show(args: argparse.Namespace) -> int:
    record = find_run(load_records(args.results), args.run_id, str(args.results))
    print(render_run(record), end="")
    return 0


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from kdbench.scaffold import write_plugin

    root = write_plugin(args.name, args.dir, force=args.force)
    print(f"wrote plugin {args.name!r} to {root}")
    print(f"next: cd {root} && pip install -e '.[test]' && pytest   (see README.md there)")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "plan": _cmd_plan,
    "execute": _cmd_execute,
    "leaderboard": _cmd_leaderboard,
    "plugins": _cmd_plugins,
    "list": _cmd_list,
    "status": _cmd_status,
    "collect": _cmd_collect,
    "profile": _cmd_profile,
    "results": _cmd_results,
    "compare": _cmd_compare,
    "show": _cmd_show,
    "new-plugin": _cmd_new_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line and return non-zero."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except KdbenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; finished runs and checkpoints are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `kdbench run --dry-run | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a path the user gave that cannot be read or written: its name is in the message
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
