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
from kdbench.leaderboard import load_reported, render_leaderboard
from kdbench.profile import MACS_CONVENTION, profile_model
from kdbench.results import ResultsStore, read_jsonl, write_jsonl
from kdbench.runner import PlannedRun, RunnerOptions, plan_suite, run_suite, select_runs
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
    board.add_argument("--check", action="store_true", help="fail with a diff if a committed leaderboard is stale")

    sub.add_parser("plugins", parents=[plugins], help="list plugins and what they register")

    lister = sub.add_parser("list", parents=[plugins], help="list registry entries")
    lister.add_argument("kind", choices=LIST_KINDS)
    lister.add_argument("pattern", nargs="?", help="glob filter, e.g. 'resnet*'")

    profile = sub.add_parser("profile", parents=[plugins], help="params, MACs and latency of a model")
    profile.add_argument("model")
    profile.add_argument("--num-classes", type=int)
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--batch-sizes", default="1,256", help="comma-separated latency batch sizes")
    return parser


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
    if name.endswith(".toml") or os.sep in name:
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
    engine = EngineOptions(
        device=torch.device(args.device),
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


def _render(suite: SuiteSpec, host: PluginHost, records: list[dict], overrides: dict[str, str]) -> str:
    plan = plan_suite(suite, host, overrides)
    return render_leaderboard(suite, plan, records, _families(host), load_reported())


def _overrides_in(records: list[dict]) -> dict[str, str]:
    """Return the teacher checkpoints a leaderboard's records were produced with (arch → source)."""
    return {
        r["config"]["student"]: r["config"]["evaluate_checkpoint"]
        for r in records
        if r["kind"] == "teacher" and "evaluate_checkpoint" in r["config"]
    }


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    host = _host(args)
    if args.check:
        return _check_leaderboards(args, host)
    names = args.suite or host.suites.names()
    if not args.results.exists():
        raise KdbenchError(f"no results database at {args.results}; run `kdbench run --suite NAME` first")
    with ResultsStore(args.results) as store:
        for name in names:
            suite = _suite(name, host)
            overrides = _teacher_overrides(args, suite, host, strict=bool(args.suite))
            wanted = {run.run_id for run in plan_suite(suite, host, overrides)}
            records = [r for r in (store.get(run_id) for run_id in sorted(wanted)) if r is not None]
            if not records and not args.suite:
                continue
            args.out.mkdir(parents=True, exist_ok=True)
            jsonl, markdown = args.out / f"{suite.name}.jsonl", args.out / f"{suite.name}.md"
            write_jsonl(records, jsonl)
            records = read_jsonl(jsonl)
            markdown.write_text(_render(suite, host, records, _overrides_in(records)), encoding="utf-8")
            print(f"leaderboard {suite.name}: {len(records)}/{len(wanted)} runs stored → {markdown}")
    return 0


def _check_leaderboards(args: argparse.Namespace, host: PluginHost) -> int:
    names = args.suite or sorted(p.stem for p in args.out.glob("*.jsonl"))
    if not names:
        raise KdbenchError(f"no committed leaderboards (*.jsonl) in {args.out}")
    stale = 0
    for name in names:
        suite = _suite(name, host)
        jsonl, markdown = args.out / f"{suite.name}.jsonl", args.out / f"{suite.name}.md"
        if not jsonl.exists():
            raise KdbenchError(f"no stored records for leaderboard {suite.name!r}: {jsonl} is missing")
        records = read_jsonl(jsonl)
        expected = _render(suite, host, records, _overrides_in(records))
        actual = markdown.read_text(encoding="utf-8") if markdown.exists() else ""
        if expected != actual:
            stale += 1
            diff = difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{markdown} (committed)",
                tofile=f"{markdown} (rendered from {jsonl.name})",
            )
            sys.stdout.writelines(diff)
            print(f"leaderboard {suite.name}: STALE — run `kdbench leaderboard --suite {suite.name}`")
        else:
            print(f"leaderboard {suite.name}: up to date")
    return 1 if stale else 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    host = _host(args)
    rows = []
    for info in sorted(host.plugins, key=lambda p: p.name):
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(info.registers.items()))
        detail = what if info.status == "loaded" else info.error or info.status
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


COMMANDS = {
    "run": _cmd_run,
    "leaderboard": _cmd_leaderboard,
    "plugins": _cmd_plugins,
    "list": _cmd_list,
    "profile": _cmd_profile,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
