"""Leaderboards: markdown tables rendered deterministically from stored run records only.

Layout of the KD papers' tables: one column per teacher→student pair; a teacher
row and a student (vanilla) row on top; one row per method, grouped logit-based
then feature-based; the best mean per column in bold; every cell is
``mean ± std`` over seeds with ``n``, and — where a paper published one — the
claimed number beside it. An efficiency table follows.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tabulate import tabulate

from kdbench.profile import MACS_CONVENTION
from kdbench.runner import PlannedRun, student_recipe
from kdbench.specs import SuiteSpec

__all__ = ["Reported", "cell_stats", "load_reported", "render_leaderboard"]

PENDING = "—"
FAMILY_TITLES = {"baseline": "Baseline", "logit": "Logit-based", "feature": "Feature-based"}
FAMILY_ORDER = ("logit", "feature")
#: Which published source wins where several report the same cell (the method's own toolkit first).
SOURCE_PRIORITY = ("RepDistiller", "MDistiller", "SSKD", "ASKD", "Streamlined")


@dataclass(frozen=True, slots=True)
class Reported:
    """A published top-1 (%) for (dataset, teacher, student, method) and its source."""

    source: str
    dataset: str
    teacher: str
    student: str
    method: str
    top1: float


def load_reported() -> list[Reported]:
    """Return the published numbers shipped with kdbench (``kdbench/reference/cifar100_reported.csv``)."""
    text = resources.files("kdbench").joinpath("reference/cifar100_reported.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return [
        Reported(r["source"], r["dataset"], r["teacher"], r["student"], r["method"], float(r["top1"])) for r in rows
    ]


def _method_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _source_rank(source: str) -> int:
    for rank, prefix in enumerate(SOURCE_PRIORITY):
        if prefix.lower() in source.lower():
            return rank
    return len(SOURCE_PRIORITY)


def _claims(reported: Iterable[Reported], dataset: str) -> dict[tuple[str, str, str], Reported]:
    """Return the highest-priority claim per (teacher, student, method key)."""
    best: dict[tuple[str, str, str], Reported] = {}
    for row in sorted(reported, key=lambda r: (_source_rank(r.source), r.source)):
        if row.dataset == dataset:
            best.setdefault((row.teacher, row.student, _method_key(row.method)), row)
    return best


def cell_stats(values: Sequence[float]) -> tuple[float, float, int]:
    """Return (mean, sample standard deviation, n); the deviation of one value is 0."""
    n = len(values)
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if n > 1 else 0.0), n


def _format(values: Sequence[float], bold: bool) -> str:
    mean, std, n = cell_stats(values)
    text = f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"
    return f"**{text}** (n={n})" if bold else f"{text} (n={n})"


@dataclass(frozen=True, slots=True)
class _Cell:
    values: tuple[float, ...]
    expected: int
    failed: int


class _Table:
    """Collects per-(row, pair) top-1 values from records for one suite plan."""

    def __init__(self, suite: SuiteSpec, plan: Sequence[PlannedRun], records: Mapping[str, Mapping[str, Any]]) -> None:
        self.suite = suite
        self.rule = "best_top1" if suite.epoch_rule == "best" else "last_top1"
        self.plan = plan
        self.records = records

    def _values(self, runs: Iterable[PlannedRun]) -> _Cell:
        runs = list(runs)
        values, failed = [], 0
        for run in runs:
            record = self.records.get(run.run_id)
            if record is None:
                continue
            if record["status"] == "finished" and record.get(self.rule) is not None:
                values.append(float(record[self.rule]))
            elif record["status"] in ("failed", "diverged"):
                failed += 1
        return _Cell(tuple(values), len(runs), failed)

    def teacher_cell(self, arch: str) -> _Cell:
        return self._values(r for r in self.plan if r.kind == "teacher" and r.config["student"] == arch)

    def student_cell(self, student: str) -> _Cell:
        return self._values(
            r
            for r in self.plan
            if r.kind == "student" and not r.config.get("teacher") and r.config["student"] == student
        )

    def method_cell(self, method: str, pair_label: str) -> _Cell:
        return self._values(
            r
            for r in self.plan
            if r.kind == "student"
            and r.pair is not None
            and r.pair.label == pair_label
            and r.config["distiller"] == method
        )


def _cell_text(cell: _Cell, bold: bool, claim: Reported | None, markers: dict[str, str]) -> str:
    if cell.expected == 0:
        ours = "n/a"  # the suite skips this method on this pair
    elif cell.values:
        ours = _format(cell.values, bold)
        if len(cell.values) < cell.expected:
            ours += f" {len(cell.values)}/{cell.expected}"
    else:
        ours = PENDING
    if cell.failed:
        ours += f" ⚠{cell.failed} failed"
    if claim is None:
        return ours
    marker = markers.setdefault(claim.source, _superscript(len(markers) + 1))
    return f"{ours} · paper {claim.top1:.2f}{marker}"


def _superscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def _methods_by_family(plan: Sequence[PlannedRun], families: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    methods = sorted({r.config["distiller"] for r in plan if r.pair is not None and r.kind == "student"})
    groups = []
    for family in (*FAMILY_ORDER, *sorted(set(families.values()) - set(FAMILY_ORDER))):
        names = [m for m in methods if families.get(m, "other") == family]
        if names:
            groups.append((family, names))
    unknown = [m for m in methods if m not in families]
    if unknown:
        groups.append(("other", unknown))
    return groups


def _accuracy_table(
    table: _Table, families: Mapping[str, str], claims: Mapping[tuple[str, str, str], Reported], markers: dict[str, str]
) -> str:
    pairs = list(table.suite.pairs)
    headers = ["", *(f"{p.teacher}<br>{p.student}" for p in pairs)]
    rows: list[list[str]] = []

    def claim(pair: Any, key: str) -> Reported | None:
        return claims.get((pair.teacher, pair.student, key))

    rows.append(
        ["Teacher", *(_cell_text(table.teacher_cell(p.teacher), False, claim(p, "teacher"), markers) for p in pairs)]
    )
    rows.append(
        ["Student", *(_cell_text(table.student_cell(p.student), False, claim(p, "student"), markers) for p in pairs)]
    )
    for family, methods in _methods_by_family(table.plan, families):
        rows.append([f"*{FAMILY_TITLES.get(family, family.title())}*", *([""] * len(pairs))])
        cells = {(m, p.label): table.method_cell(m, p.label) for m in methods for p in pairs}
        best = {p.label: _best_mean(cells[(m, p.label)] for m in methods) for p in pairs}
        for method in methods:
            row = [method]
            for p in pairs:
                cell = cells[(method, p.label)]
                is_best = bool(cell.values) and round(cell_stats(cell.values)[0], 2) == best[p.label]
                row.append(_cell_text(cell, is_best and len(methods) > 1, claim(p, _method_key(method)), markers))
            rows.append(row)
    rows.extend(_reference_rows(table, pairs, claims, markers))
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _reference_rows(
    table: _Table, pairs: Sequence[Any], claims: Mapping[tuple[str, str, str], Reported], markers: dict[str, str]
) -> list[list[str]]:
    """Return rows for methods that only have published numbers here (not registered, or no public method)."""
    planned = {_method_key(r.config["distiller"]) for r in table.plan} | {"teacher", "student"}
    names: dict[str, str] = {}
    for (teacher, student, key), row in sorted(claims.items()):
        if key not in planned and any((p.teacher, p.student) == (teacher, student) for p in pairs):
            names.setdefault(key, row.method)
    if not names:
        return []
    rows = [["*Published only (not run by kdbench)*", *([""] * len(pairs))]]
    for key in sorted(names, key=lambda k: names[k].lower()):
        cells = []
        for p in pairs:
            claim = claims.get((p.teacher, p.student, key))
            cells.append(_cell_text(_Cell((), 0, 0), False, claim, markers) if claim else "")
        rows.append([names[key], *cells])
    return rows


def _best_mean(cells: Iterable[_Cell]) -> float | None:
    means = [round(cell_stats(c.values)[0], 2) for c in cells if c.values]
    return max(means) if means else None


def _efficiency_table(table: _Table) -> str:
    profiles: dict[str, Mapping[str, Any]] = {}
    extras: dict[str, set[str]] = {}
    for run in table.plan:
        record = table.records.get(run.run_id)
        if not record or not record.get("profile"):
            continue
        arch = run.config["student"]
        profiles.setdefault(arch, record["profile"])
        extra = int(record["profile"].get("extra_params", 0))
        if extra:
            extras.setdefault(arch, set()).add(f"{run.config['distiller']} +{extra:,}")
    if not profiles:
        return f"{PENDING} (no profiled runs stored yet)"
    batch_sizes = sorted({int(lat["batch_size"]) for p in profiles.values() for lat in p.get("latency", [])})
    headers = [
        "model",
        "params",
        "MACs (M)",
        *(f"latency b={b} (ms)" for b in batch_sizes),
        "training-only params",
        "device",
    ]
    rows = []
    for arch in sorted(profiles):
        profile = profiles[arch]
        latency = {int(lat["batch_size"]): float(lat["median_ms"]) for lat in profile.get("latency", [])}
        rows.append(
            [
                arch,
                f"{int(profile['params']):,}",
                f"{int(profile['macs']) / 1e6:.1f}",
                *(f"{latency[b]:.2f}" if b in latency else PENDING for b in batch_sizes),
                ", ".join(sorted(extras.get(arch, ()))) or "0",
                profile.get("device_name", "?"),
            ]
        )
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _own_recipes(table: _Table) -> list[str]:
    """Return one line per method whose runs use recipe fields other than the suite's."""
    changes: dict[str, dict[str, str]] = {}
    for run in table.plan:
        if run.pair is None or not run.config.get("recipe"):
            continue
        suite_recipe = student_recipe(table.suite.recipe, run.config["student"])
        diff = {k: v for k, v in run.config["recipe"].items() if k != "lr_overrides" and suite_recipe.get(k) != v}
        if diff:
            text = ", ".join(f"{k} {v}" for k, v in sorted(diff.items()))
            changes.setdefault(run.config["distiller"], {})[run.pair.label] = text
    return [
        f"- `{method}` runs with its own published recipe: "
        + "; ".join(f"{text} on {pair}" for pair, text in sorted(per_pair.items()))
        + "."
        for method, per_pair in sorted(changes.items())
    ]


def _pruning_table(table: _Table) -> str | None:
    """Return the pruning table (accuracy before/after, compression, speed-up), or None without prune runs."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    labels: dict[tuple[str, str], str] = {}
    for run in table.plan:
        if run.kind != "prune":
            continue
        details = run.config["prune"]
        settings = ", ".join(f"{k}={v}" for k, v in sorted(details["settings"].items()))
        method = (run.config.get("after") or {}).get("distiller", "—")
        key = (str(details["source"]["arch"]) + f" ({method})", f"{details['pruner']} {settings}")
        labels[key] = f"{details['finetune_epochs']}"
        record = table.records.get(run.run_id)
        groups.setdefault(key, [])
        if record and record["status"] == "finished" and record.get("profile"):
            groups[key].append(record)
    if not groups:
        return None
    headers = ["model (trained with)", "pruner", "top-1 before", "after pruning", "after fine-tune (epochs)", "Δ top-1"]
    headers += ["params", "compression", "MACs (M)", "speed-up", "sparsity", "n"]
    rows = []
    for key in sorted(groups):
        records = groups[key]
        if not records:
            rows.append([*key, *([PENDING] * 9), "0"])
            continue
        pruning = [r["profile"]["pruning"] for r in records]
        before = [p["top1_before"] for p in pruning]
        after = [p["top1_after_prune"] for p in pruning]
        tuned = [float(r[table.rule]) for r in records] if int(labels[key]) else []
        first = records[0]["profile"]
        old = first["pruning"]["before"]
        rows.append(
            [
                *key,
                _plain(before),
                _plain(after),
                f"{_plain(tuned)} ({labels[key]})" if tuned else "n/a (0)",
                f"{cell_stats(tuned or after)[0] - cell_stats(before)[0]:+.2f}",
                f"{int(old['params']):,} → {int(first['params']):,}",
                f"{int(old['params']) / max(int(first['params']), 1):.2f}×",
                f"{int(old['macs']) / 1e6:.1f} → {int(first['macs']) / 1e6:.1f}",
                f"{int(old['macs']) / max(int(first['macs']), 1):.2f}×",
                f"{100 * float(first['pruning']['sparsity']):.1f} %",
                str(len(records)),
            ]
        )
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _plain(values: Sequence[float]) -> str:
    mean, std, n = cell_stats(values)
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def _provenance(table: _Table) -> list[str]:
    records = [r for r in table.records.values()]
    devices = sorted({r["device"] for r in records if r.get("device")})
    versions = sorted({r["versions"]["kdbench"] for r in records if r.get("versions")})
    minutes = sum(float(r.get("wall_seconds") or 0) for r in records) / 60
    recipe = table.suite.recipe
    rule = (
        "best epoch (MDistiller convention)"
        if table.suite.epoch_rule == "best"
        else "last epoch (RepDistiller convention)"
    )
    return [
        f"- **Top-1 (%)** on the `{table.suite.dataset}` test set, **{rule}**, mean ± sample std over seeds "
        f"{', '.join(map(str, table.suite.seeds))}; `n` = runs stored; {PENDING} = not run yet.",
        f"- Recipe: {recipe.epochs} epochs, batch {recipe.batch_size}, SGD lr {recipe.lr} "
        f"(momentum {recipe.momentum}, wd {recipe.weight_decay}), ×{recipe.lr_gamma} at epochs "
        f"{', '.join(map(str, recipe.lr_milestones)) or 'none'}.",
        *_own_recipes(table),
        f"- Produced on: {'; '.join(devices) or PENDING}; kdbench {', '.join(versions) or PENDING}; "
        f"{minutes:.1f} min of training in the stored runs.",
    ]


def render_leaderboard(
    suite: SuiteSpec,
    plan: Sequence[PlannedRun],
    records: Iterable[Mapping[str, Any]],
    families: Mapping[str, str],
    reported: Iterable[Reported] = (),
) -> str:
    """Return the markdown leaderboard of ``suite`` from ``records`` (same inputs → same bytes)."""
    by_id = {r["run_id"]: r for r in records}
    table = _Table(suite, plan, by_id)
    claims = _claims(reported, suite.reference) if suite.reference else {}
    markers: dict[str, str] = {}
    lines = [
        f"# Leaderboard: `{suite.name}`",
        "",
        suite.description,
        "",
        *_provenance(table),
        "",
        "## Top-1 accuracy",
        "",
        _accuracy_table(table, families, claims, markers),
        "",
    ]
    if markers:
        lines += ["Published claims (`paper`):", ""]
        lines += [f"- {marker} {source}" for source, marker in markers.items()]
        lines.append("")
    pruning = _pruning_table(table)
    if pruning is not None:
        lines += [
            "## Pruning",
            "",
            "Each trained model pruned (structured: whole channels through torch-pruning's dependency graph; "
            "unstructured: weights zeroed), then fine-tuned; Δ top-1 = final − before pruning; "
            "compression = params before / after, speed-up = MACs before / after (fvcore).",
            "",
            pruning,
            "",
        ]
    lines += [
        "## Efficiency",
        "",
        f"Params at inference; MACs: {MACS_CONVENTION}; latency: median of timed iterations after warm-up.",
        "",
        _efficiency_table(table),
        "",
        f"_Rendered by `kdbench leaderboard --suite {suite.name}` from `{suite.name}.jsonl`; do not edit by hand._",
        "",
    ]
    return "\n".join(lines)
