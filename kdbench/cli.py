"""The ``kdbench`` command line."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tabulate import tabulate

from kdbench._plugins import PluginHost, create_plugin_host
from kdbench.engine import EngineOptions
from kdbench.errors import KdbenchError
from kdbench.leaderboard import (
    BoardSummary,
    load_reported,
    render_board,
    render_index,
    summarize_leaderboard,
)
from kdbench.plots import AccuracyPlot, stale_plot_files, write_plots
from kdbench.profile import MACS_CONVENTION, profile_model
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
from kdbench.results import ResultsStore, jsonl_text, read_jsonl, write_jsonl
from kdbench.runner import PlannedRun, RunnerOptions, plan_suite, run_suite, select_runs
from kdbench.scaffold import write_plugin
from kdbench.specs import SuiteSpec
from kdbench.suites import load_suite_file

__all__ = ["build_parser", "main"]

LIST_KINDS = ("models", "distillers", "pruners", "datasets", "suites", "teachers")


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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``kdbench`` command."""
    plugins, store, teachers = _plugin_options(), _store_options(), _teacher_options()
    parser = argparse.ArgumentParser(prog="kdbench", description="Knowledge-distillation benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[plugins, store, teachers], help="train every missing run of a suite")
    run.add_argument("--suite", required=True, help="registered suite name or path to a suite .toml file")
    run.add_argument("-k", "--only", action="append", default=[], metavar="PATTERN", help="only runs matching")
    run.add_argument("--dry-run", action="store_true", help="print the plan without touching data")
    run.add_argument("--seeds", help="comma-separated seeds instead of the suite's (ad-hoc runs)")
    run.add_argument("--epochs", type=int, help="epochs instead of the suite's (ad-hoc runs)")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    run.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    run.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    run.add_argument("--data-root", type=Path, default=Path(os.environ.get("KDBENCH_DATA", "data")))
    run.add_argument("--download", action="store_true", help="download datasets that are missing")
    run.add_argument("--teacher-root", type=Path, default=Path("teachers"), help="where teacher checkpoints live")
    run.add_argument("--work-dir", type=Path, default=Path("runs"), help="checkpoints and final weights per run")
    run.add_argument("--latency-batch-sizes", default="1,256", help="batch sizes timed for the efficiency table")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    board = sub.add_parser(
        "leaderboard", parents=[plugins, store, teachers], help="render leaderboards from stored results"
    )
    board.add_argument("--suite", action="append", default=[], help="suite(s) to render (default: every suite)")
    board.add_argument("--out", type=Path, default=Path("leaderboards"), help="directory of the markdown files")
    board.add_argument(
        "--check", action="store_true", help="fail, naming what is stale, if committed leaderboards need re-rendering"
    )
    board.add_argument(
        "--from-jsonl", action="store_true", help="re-render from the *.jsonl records in --out, not the database"
    )

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
    results = sub.add_parser("results", help="export stored results")
    export = results.add_subparsers(dest="results_command", metavar="export", required=True).add_parser(
        "export", parents=[store], help="write stored runs as CSV or JSON lines"
    )
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument("--suite", help="only runs of this suite")
    export.add_argument("--status", choices=("finished", "failed", "diverged"), help="only runs with this status")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")

    compare = sub.add_parser("compare", help="per-cell deltas between two result sets (stores, .jsonl, REV:PATH)")
    source = "results database, .jsonl file, directory of .jsonl files, or any of these in git as REV:PATH"
    compare.add_argument("a", metavar="A", help=source)
    compare.add_argument("b", metavar="B", help=source)
    compare.add_argument("--metric", choices=METRICS, default="best_top1")
    compare.add_argument("--tolerance", type=float, default=0.5, help="flag |delta| above this (top-1 points)")
    compare.add_argument("--fail-on", choices=FAIL_ON, help="exit 1 on drift, on cells missing from one side, or any")
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


def _suite(name: str, host: PluginHost) -> SuiteSpec:
    if _is_suite_file(name):
        return load_suite_file(Path(name))
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


def _print_plan(plan: Sequence[PlannedRun], done: set[str]) -> None:
    rows = []
    for run in plan:
        pair = run.pair.label if run.pair else ("—" if run.kind == "student" else run.config["student"])
        recipe = run.config.get("recipe") or {}
        rows.append(
            [
                run.run_id,
                run.kind,
                pair,
                run.config["student"],
                run.config["distiller"],
                run.config.get("seed", "—"),
                recipe.get("epochs", "—"),
                "stored" if run.run_id in done else "to run",
            ]
        )
    headers = ["run id", "kind", "pair", "model", "method", "seed", "epochs", "result"]
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    print(f"{len(plan)} runs, {sum(r.run_id in done for r in plan)} already stored")


def _device(name: str) -> torch.device:
    """Return the torch device ``--device`` names; an unknown or unavailable one is a KdbenchError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdbenchError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdbenchError(f"--device {name}: no CUDA device is available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise KdbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _cmd_run(args: argparse.Namespace) -> int:
    host = _host(args)
    suite = _adjust(_suite(args.suite, host), args.seeds, args.epochs)
    overrides = _teacher_overrides(args, suite, host)
    plan = select_runs(plan_suite(suite, host, overrides), args.only)
    if not plan:
        raise KdbenchError(f"no run of suite {suite.name!r} matches {args.only}")
    if args.dry_run:
        done = ResultsStore(args.results).finished_ids() if args.results.exists() else set()
        _print_plan(plan, done)
        return 0
    for option, path in (("--work-dir", args.work_dir), ("--teacher-root", args.teacher_root)):
        if path.exists() and not path.is_dir():
            raise KdbenchError(f"{option} {path} is a file; give a directory")
    engine = EngineOptions(
        device=_device(args.device),
        bf16=args.bf16,
        channels_last=args.channels_last,
        progress=not args.no_progress,
    )
    options = RunnerOptions(
        data_root=args.data_root,
        teacher_root=args.teacher_root,
        work_root=args.work_dir,
        download=args.download,
        engine=engine,
        teacher_overrides=overrides,
        latency_batch_sizes=_integers(args.latency_batch_sizes, "--latency-batch-sizes"),
    )
    with ResultsStore(args.results) as store:
        report = run_suite(suite, host, store, options, runs=plan)
    print(
        f"suite {suite.name}: {len(report.finished)} finished, {len(report.diverged)} diverged, "
        f"{len(report.failed)} failed, {len(report.skipped)} already stored; results in {args.results}"
    )
    for run_id, error in report.failed:
        print(f"  failed {run_id}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _families(host: PluginHost) -> dict[str, str]:
    return {spec.name: spec.family for spec in host.distillers}


def _overrides_in(records: list[dict]) -> dict[str, str]:
    """Return the teacher checkpoints a leaderboard's records were produced with (arch → source)."""
    return {
        r["config"]["student"]: r["config"]["evaluate_checkpoint"]
        for r in records
        if r["kind"] == "teacher" and "evaluate_checkpoint" in r["config"]
    }


def _is_suite_file(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name


class _Boards:
    """The leaderboards of one directory: the suite that renders each board, and the index rows so far.

    A board rendered from a suite file keeps a copy of it beside its records (``NAME.suite.toml``), so
    later commands (another board, ``--check``, the index) can render it without the original file.
    """

    def __init__(self, out: Path, host: PluginHost) -> None:
        self.out = out
        self.host = host
        self.suites: dict[str, SuiteSpec] = {}
        self.summaries: dict[str, BoardSummary] = {}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.out.glob("*.jsonl"))

    def named(self, name: str, keep_file: bool = False) -> SuiteSpec:
        """Return the suite named on the command line: a file (kept beside its board if asked) or a board's suite.

        With ``keep_file``, naming a registered suite removes a kept copy of a file suite of the same name.
        """
        if not _is_suite_file(name):
            if keep_file and name in self.host.suites:
                (self.out / f"{name}.suite.toml").unlink(missing_ok=True)
                self.suites[name] = self.host.suites.get(name)
            return self.suite(name)
        suite = load_suite_file(Path(name))
        if keep_file:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"{suite.name}.suite.toml").write_bytes(Path(name).read_bytes())
        self.suites[suite.name] = suite
        return suite

    def suite(self, name: str) -> SuiteSpec:
        """Return the suite of the board ``name``: given in this command, kept beside the board, or registered."""
        if name not in self.suites:
            copy = self.out / f"{name}.suite.toml"
            if copy.exists():
                self.suites[name] = load_suite_file(copy)
            elif name in self.host.suites or not (self.out / f"{name}.jsonl").exists():
                self.suites[name] = self.host.suites.get(name)  # an unknown name: the registry's error
            else:
                raise KdbenchError(
                    f"{self.out / (name + '.jsonl')}: no registered suite {name!r} renders it and there is no "
                    f"{copy.name} beside it; pass --suite PATH.toml"
                )
        return self.suites[name]

    def records(self, suite: SuiteSpec) -> list[dict]:
        jsonl = self.out / f"{suite.name}.jsonl"
        if not jsonl.exists():
            raise KdbenchError(f"no stored records for leaderboard {suite.name!r}: {jsonl} is missing")
        return read_jsonl(jsonl)

    def _plan(self, suite: SuiteSpec, records: list[dict]) -> list[PlannedRun]:
        """Return the suite's plan with the teacher checkpoints its records were produced with."""
        return plan_suite(suite, self.host, _overrides_in(records))

    def render(self, suite: SuiteSpec, records: list[dict]) -> tuple[str, list[AccuracyPlot]]:
        """Return the markdown and plots of ``suite``'s board from ``records`` only; remember its index row."""
        board = render_board(suite, self._plan(suite, records), records, _families(self.host), load_reported())
        self.summaries[suite.name] = board.summary
        return board.markdown, list(board.plots)

    def write(self, suite: SuiteSpec, records: list[dict]) -> None:
        markdown, plots = self.render(suite, records)
        path = self.out / f"{suite.name}.md"
        path.write_text(markdown, encoding="utf-8")
        touched = write_plots(suite.name, plots, self.out)
        summary = self.summaries[suite.name]
        print(
            f"leaderboard {suite.name}: {summary.stored}/{summary.planned} runs stored → {path}; "
            f"{len(plots)} plot(s), {len(touched)} plot file(s) updated"
        )

    def index(self) -> str | None:
        """Return the README.md indexing every board in the directory (None when there is none)."""
        rows = []
        for name in self.names():
            if name not in self.summaries:
                suite = self.suite(name)
                records = self.records(suite)
                self.summaries[name] = summarize_leaderboard(suite, self._plan(suite, records), records)
            rows.append(self.summaries[name])
        return render_index(rows) if rows else None


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    host = _host(args)
    boards = _Boards(args.out, host)
    if args.check:
        return _check_leaderboards(args, boards)
    if args.from_jsonl:
        names = args.suite or boards.names()
        if not names:
            raise KdbenchError(f"no leaderboard records (*.jsonl) in {args.out}")
        for name in names:
            suite = boards.named(name, keep_file=True) if args.suite else boards.suite(name)
            boards.write(suite, boards.records(suite))
    else:
        _write_from_store(args, boards)
    if not boards.summaries:
        print(f"nothing rendered: {args.results} holds no run of a registered suite (see `kdbench run --dry-run`)")
        return 0
    index = boards.index()
    if index is not None:
        (args.out / "README.md").write_text(index, encoding="utf-8")
        print(f"leaderboard index → {args.out / 'README.md'}")
    return 0


def _write_from_store(args: argparse.Namespace, boards: _Boards) -> None:
    names = args.suite or boards.host.suites.names()
    if not args.results.exists():
        raise KdbenchError(f"no results database at {args.results}; run `kdbench run --suite NAME` first")
    with ResultsStore(args.results) as store:
        for name in names:
            suite = boards.named(name, keep_file=True)
            overrides = _teacher_overrides(args, suite, boards.host, strict=bool(args.suite))
            wanted = {run.run_id for run in plan_suite(suite, boards.host, overrides)}
            jsonl = args.out / f"{suite.name}.jsonl"
            records = _merged_records(store, wanted, jsonl)
            if not records and not args.suite:
                continue
            args.out.mkdir(parents=True, exist_ok=True)
            write_jsonl(records, jsonl)
            boards.write(suite, read_jsonl(jsonl))


def _merged_records(store: ResultsStore, wanted: set[str], jsonl: Path) -> list[dict]:
    """Return the board's records: the plan's runs from the database, plus every record the ``.jsonl`` holds.

    Rendering never drops what a board already publishes: runs missing from this database (another
    machine's, a fresh clone's) and runs the suite no longer plans (a changed recipe) are kept; the
    board shows only the planned ones. A run in both is taken from the database.
    """
    published = {r["run_id"]: r for r in read_jsonl(jsonl)} if jsonl.exists() else {}
    unplanned = sorted(set(published) - wanted)
    if unplanned:
        print(
            f"leaderboard {jsonl.stem}: kept {len(unplanned)} record(s) in {jsonl} that the suite no longer plans "
            f"(not shown; delete them from the file to drop them)",
            file=sys.stderr,
        )
    for run_id in sorted(wanted):
        record = store.get(run_id)
        if record is not None:
            published[run_id] = record
    return list(published.values())


def _text_is_fresh(path: Path, expected: str, source: str) -> bool:
    """Return whether ``path`` holds ``expected``; print a unified diff when it does not."""
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual == expected:
        return True
    diff = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile=f"{path} (rendered from {source})",
    )
    sys.stdout.writelines(diff)
    return False


def _check_leaderboards(args: argparse.Namespace, boards: _Boards) -> int:
    names = args.suite or boards.names()
    if not names:
        raise KdbenchError(f"no committed leaderboards (*.jsonl) in {args.out}")
    stale = 0
    where = "" if args.out == Path("leaderboards") else f" --out {args.out}"
    for name in names:
        try:
            suite = boards.named(name) if args.suite else boards.suite(name)
            markdown, plots = boards.render(suite, boards.records(suite))
        except KdbenchError as exc:
            raise KdbenchError(f"leaderboard {name} in {args.out}: {exc}") from None
        fresh = _text_is_fresh(args.out / f"{suite.name}.md", markdown, f"{suite.name}.jsonl")
        for path, why in stale_plot_files(suite.name, plots, args.out):
            print(f"plot {path}: STALE ({why})")
            fresh = False
        if fresh:
            print(f"leaderboard {suite.name}: up to date")
        else:
            stale += 1
            print(
                f"leaderboard {suite.name}: STALE — run `kdbench leaderboard --from-jsonl --suite {suite.name}{where}`"
            )
    index = boards.index() or ""
    if _text_is_fresh(args.out / "README.md", index, "every *.jsonl"):
        print(f"leaderboard index {args.out / 'README.md'}: up to date")
    else:
        stale += 1
        print(f"leaderboard index {args.out / 'README.md'}: STALE — run `kdbench leaderboard --from-jsonl{where}`")
    return 1 if stale else 0


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
    if kind == "suites":
        methods = ", ".join(spec.distillers)
        seeds = ",".join(map(str, spec.seeds))
        return [spec.name, spec.dataset, str(len(spec.pairs)), methods, seeds, spec.description, plugin]
    top1 = "" if spec.reported_top1 is None else f"{spec.reported_top1:.2f}"
    return [spec.name, spec.model, spec.dataset, spec.path, top1, plugin]


def _cmd_profile(args: argparse.Namespace) -> int:
    host = _host(args)
    spec = host.models.get(args.model)
    batch_sizes = _integers(args.batch_sizes, "--batch-sizes")
    model = spec.builder(num_classes=args.num_classes or spec.default_num_classes)
    result = profile_model(model, spec.input_size, device=torch.device(args.device), batch_sizes=batch_sizes)
    print(f"{spec.name}: {result.params:,} params, {result.macs / 1e6:.1f} M MACs ({MACS_CONVENTION})")
    for latency in result.latency:
        print(
            f"  latency batch {latency.batch_size}: {latency.median_ms:.3f} ms median "
            f"over {latency.iterations} iterations on {result.device_name}"
        )
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
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
    root = write_plugin(args.name, args.dir, force=args.force)
    print(f"wrote plugin {args.name!r} to {root}")
    print(f"next: cd {root} && pip install -e '.[test]' && pytest   (see README.md there)")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "leaderboard": _cmd_leaderboard,
    "plugins": _cmd_plugins,
    "list": _cmd_list,
    "profile": _cmd_profile,
    "results": _cmd_results,
    "compare": _cmd_compare,
    "show": _cmd_show,
    "new-plugin": _cmd_new_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line and return non-zero."""
    args = build_parser().parse_args(argv)
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
