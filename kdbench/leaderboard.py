"""Leaderboards: markdown tables rendered deterministically from stored run records only.

Layout of the KD papers' tables: one column per teacher→student pair; a teacher
row and a student (vanilla) row on top; one row per method, grouped logit-based
then feature-based; the best mean per column in bold; every cell is
``mean ± std`` over seeds with ``n``, and — where a paper published one — the
claimed number beside it with our delta. Runs of the plan without a result are
listed, never dropped. An efficiency table and accuracy-vs-cost plots follow;
``render_index`` writes the ``README.md`` that indexes every leaderboard.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tabulate import tabulate

from kdbench.plan import Plan, PlannedRun, PruneRun, TrainRun, recipe_config, student_recipe
from kdbench.plots import PLOT_KINDS, AccuracyPlot, PlotPoint, plot_stem
from kdbench.records import MACS_CONVENTION, stored_latency_ms
from kdbench.specs import Recipe, SuiteSpec

__all__ = [
    "BoardSummary",
    "RenderedBoard",
    "Reported",
    "cell_stats",
    "leaderboard_plots",
    "load_reported",
    "mean_std_text",
    "render_board",
    "render_index",
    "render_leaderboard",
    "summarize_leaderboard",
]

PENDING = "—"
FAMILY_TITLES = {"baseline": "Baseline", "logit": "Logit-based", "feature": "Feature-based"}
FAMILY_ORDER = ("logit", "feature")
#: Which published source wins where several report the same cell (the method's own toolkit first).
SOURCE_PRIORITY = ("RepDistiller", "MDistiller", "SSKD", "ASKD", "Streamlined")
THROUGHPUT_BATCH = 256


@dataclass(frozen=True, slots=True)
class Reported:
    """A published top-1 (%) for (reference, teacher, student, method), its source and its protocol.

    ``protocol`` is the epoch rule the source reports (``best`` or ``last``; what its code keeps
    where the text does not say) and ``runs`` how many runs its number averages (0: not stated).
    ``dataset`` is the reference key a suite names (``cifar100``; ``cifar100-streamlined`` for a
    table made under another recipe). ``method`` is the source's label, matched to a kdbench method
    name ignoring case, ``-`` and ``_``; a label that names a method differently is written as
    kdbench's name in the CSV (Streamlined KD's "StreamlinedKD" is ``SKD``).
    """

    source: str
    dataset: str
    teacher: str
    student: str
    method: str
    top1: float
    protocol: str = "last"
    runs: int = 0

    @property
    def rule(self) -> str:
        """Return the record field that holds our number under this claim's protocol."""
        return "best_top1" if self.protocol == "best" else "last_top1"


def load_reported() -> list[Reported]:
    """Return the published numbers shipped with kdbench (every ``kdbench/reference/*_reported.csv``, by name)."""
    folder = resources.files("kdbench").joinpath("reference")
    files = sorted((f for f in folder.iterdir() if f.name.endswith("_reported.csv")), key=lambda f: f.name)
    return [
        Reported(
            r["source"],
            r["dataset"],
            r["teacher"],
            r["student"],
            r["method"],
            float(r["top1"]),
            r["protocol"],
            int(r["runs"] or 0),
        )
        for f in files
        for r in csv.DictReader(f.read_text(encoding="utf-8").splitlines())
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
    text = mean_std_text(values)
    return f"**{text}** (n={len(values)})" if bold else f"{text} (n={len(values)})"


@dataclass(frozen=True, slots=True)
class _Cell:
    values: tuple[float, ...]
    expected: int
    failed: int
    unverified: int = 0
    """Results made from data whose files differ from the published dataset (checksums, image counts)."""
    by_rule: Mapping[str, tuple[float, ...]] | None = None
    """The finished runs' numbers under each epoch rule (``best_top1``, ``last_top1``): what a Δ uses."""
    rule: str = "best_top1"
    """The rule of ``values`` (the board's)."""

    def under(self, rule: str) -> tuple[float, ...]:
        """Return the cell's numbers under epoch rule ``rule``."""
        return (self.by_rule or {}).get(rule, self.values if rule == self.rule else ())


def _unverified(record: Mapping[str, Any]) -> bool:
    return ((record.get("versions") or {}).get("data") or {}).get("verified") is False


def _trained(runs: Iterable[PlannedRun], role: str) -> list[TrainRun]:
    return [run for run in runs if isinstance(run, TrainRun) and run.role == role]


class _Table:
    """Collects per-(row, pair) top-1 values from records for one suite plan."""

    def __init__(self, plan: Plan, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.suite: SuiteSpec = plan.suite
        self.rule = "best_top1" if self.suite.epoch_rule == "best" else "last_top1"
        self.plan: Sequence[PlannedRun] = plan.runs
        self.records = records
        self.memo: dict[str, Any] = {}  # derived views computed once per table (profiles, plots)

    def _values(self, runs: Iterable[PlannedRun]) -> _Cell:
        runs = list(runs)
        values, failed, unverified = [], 0, 0
        by_rule: dict[str, list[float]] = {"best_top1": [], "last_top1": []}
        for run in runs:
            record = self.records.get(run.run_id)
            if record is None:
                continue
            if record["status"] == "finished" and record.get(self.rule) is not None:
                values.append(float(record[self.rule]))
                unverified += _unverified(record)
                for rule, numbers in by_rule.items():
                    if record.get(rule) is not None:
                        numbers.append(float(record[rule]))
            elif record["status"] in ("failed", "diverged"):
                failed += 1
        frozen = {rule: tuple(numbers) for rule, numbers in by_rule.items()}
        return _Cell(tuple(values), len(runs), failed, unverified, frozen, self.rule)

    def any_unverified(self) -> bool:
        """Return whether any finished record of the plan was made from unverified data."""
        return any(_unverified(self.records[r.run_id]) for r in self.plan if r.run_id in self.records)

    def teacher_cell(self, arch: str) -> _Cell:
        return self._values(r for r in self.plan if r.role == "teacher" and r.model == arch)

    def student_cell(self, student: str) -> _Cell:
        return self._values(r for r in _trained(self.plan, "student") if not r.teacher and r.model == student)

    def method_cell(self, method: str, pair_label: str) -> _Cell:
        return self._values(
            r
            for r in _trained(self.plan, "student")
            if r.pair is not None and r.pair.label == pair_label and r.method == method
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
    if cell.unverified:
        ours += " ⚠unverified data"
    if claim is None:
        return ours
    marker = markers.setdefault(claim.source, _superscript(len(markers) + 1))
    text = f"{ours} · paper {claim.top1:.2f}{marker}"
    ours_under_claim = cell.under(claim.rule)
    if ours_under_claim:
        # Our mean under the claim's own epoch rule, rounded as shown; + 0.0: no "-0.00".
        delta = round(_shown_mean(ours_under_claim) - claim.top1, 2) + 0.0
        other = "" if claim.rule == cell.rule else f", {claim.protocol} epoch"
        text += f" (Δ {delta:+.2f}{other})"
    return text


def _source_note(claim: Reported, board_rule: str) -> str:
    """Return a footnote: the source, the epoch rule it reports, how many runs, and what its Δ compares."""
    runs = "" if not claim.runs else (", one run" if claim.runs == 1 else f", mean of {claim.runs} runs")
    note = f"{claim.source}: {claim.protocol} epoch{runs}"
    if claim.rule != board_rule:
        note += f"; its Δ uses our {claim.protocol}-epoch numbers"
    return note


def _settings_notes(table: _Table) -> list[str]:
    """Return the notes naming every method setting the suite gives (all else is the method's default)."""
    suite_pairs = {pair.label: pair for pair in table.suite.pairs}
    set_on: dict[tuple[str, str, str], list[str]] = {}
    pairs_of: dict[str, list[str]] = {}
    for run in _trained(table.plan, "student"):
        if run.pair is None or run.pair.label not in suite_pairs:
            continue
        pairs = pairs_of.setdefault(run.method, [])
        if run.pair.label in pairs:
            continue
        pairs.append(run.pair.label)
        pair_params = suite_pairs[run.pair.label].params.get(run.method, {})
        names = {**table.suite.distiller_params.get(run.method, {}), **pair_params}
        for name in names:
            set_on.setdefault((run.method, name, json.dumps(run.params.get(name))), []).append(run.pair.label)
    if not set_on:
        return []
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (method, name, value), pairs in sorted(set_on.items()):
        grouped.setdefault((method, tuple(pairs)), []).append(f"{name} = {value}")
    lines = ["Method settings this suite sets (every other setting is the method's default):", ""]
    for (method, pairs), settings in grouped.items():
        where = "every pair" if list(pairs) == pairs_of[method] else ", ".join(pairs)
        lines.append(f"- `{method}` {', '.join(settings)} on {where}")
    return [*lines, ""]


def _choices_notes(table: _Table) -> list[str]:
    """Return the notes naming every per-pair setting that has no published source (kdbench's choice)."""
    chosen: dict[tuple[str, str, str], list[str]] = {}
    for pair in table.suite.pairs:
        for method, names in pair.choices.items():
            run = next((r for r in _trained(table.plan, "student") if r.pair and r.pair.label == pair.label
                        and r.method == method), None)  # fmt: skip
            if run is None:
                continue
            for name in names:
                value = json.dumps(run.params.get(name))
                chosen.setdefault((method, name, value), []).append(pair.label)
    if not chosen:
        return []
    lines = ["Settings without a published source (kdbench's choice, marked in the suite file):", ""]
    for (method, name, value), pairs in sorted(chosen.items()):
        lines.append(f"- `{method}` {name} = {value} on {', '.join(pairs)}")
    return [*lines, ""]


def _superscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def _methods_by_family(plan: Sequence[PlannedRun], families: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    methods = _method_names(plan)
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
                is_best = bool(cell.values) and _shown_mean(cell.values) == best[p.label]
                row.append(_cell_text(cell, is_best and len(methods) > 1, claim(p, _method_key(method)), markers))
            rows.append(row)
    rows.extend(_reference_rows(table, pairs, claims, markers))
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _reference_rows(
    table: _Table, pairs: Sequence[Any], claims: Mapping[tuple[str, str, str], Reported], markers: dict[str, str]
) -> list[list[str]]:
    """Return rows for methods that only have published numbers here (not registered, or no public method)."""
    planned = {_method_key(r.to_config()["distiller"]) for r in table.plan} | {"teacher", "student"}
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


def _shown_mean(values: Sequence[float]) -> float:
    """Return the mean as a reader sees it (two decimals): what bold, deltas and winners compare."""
    return round(cell_stats(values)[0], 2)


def _best_mean(cells: Iterable[_Cell]) -> float | None:
    means = [_shown_mean(c.values) for c in cells if c.values]
    return max(means) if means else None


@dataclass(frozen=True, slots=True)
class _Profiled:
    """The profile shown for one architecture (the first profiled run of the plan) and its role."""

    profile: Mapping[str, Any]
    role: str
    extras: tuple[str, ...]

    def latency_ms(self, batch_size: int) -> float | None:
        return stored_latency_ms(self.profile, batch_size)


def _profiles(table: _Table) -> dict[str, _Profiled]:
    """Return architecture → its profile, role (teacher, student, pruned) and training-only parameters."""
    if "profiles" not in table.memo:
        table.memo["profiles"] = _collect_profiles(table)
    return table.memo["profiles"]


def _collect_profiles(table: _Table) -> dict[str, _Profiled]:
    profiles: dict[str, Mapping[str, Any]] = {}
    roles: dict[str, str] = {}
    extras: dict[str, set[str]] = {}
    for run in table.plan:
        arch = run.model
        role = {"teacher": "teacher", "prune": "pruned"}.get(run.role, "student")
        if roles.get(arch) != "teacher":
            roles[arch] = role
        record = table.records.get(run.run_id)
        if not record or not record.get("profile"):
            continue
        profiles.setdefault(arch, record["profile"])
        extra = int(record["profile"].get("extra_params", 0))
        if extra and isinstance(run, TrainRun):
            extras.setdefault(arch, set()).add(f"{run.method} +{extra:,}")
    return {
        arch: _Profiled(profile, roles[arch], tuple(sorted(extras.get(arch, ())))) for arch, profile in profiles.items()
    }


def _throughput(profiled: _Profiled) -> str:
    milliseconds = profiled.latency_ms(THROUGHPUT_BATCH)
    if not milliseconds or milliseconds <= 0:
        return PENDING
    return f"{THROUGHPUT_BATCH / (milliseconds / 1000):,.0f}"


def _efficiency_table(table: _Table) -> str:
    profiles = _profiles(table)
    if not profiles:
        return f"{PENDING} (no profiled runs stored yet)"
    timed = {int(lat["batch_size"]) for p in profiles.values() for lat in p.profile.get("latency", [])}
    others = sorted(timed - {1, THROUGHPUT_BATCH})
    headers = [
        "model",
        "role",
        "params",
        "MACs (M)",
        "latency b=1 (ms)",
        *(f"latency b={b} (ms)" for b in others),
        f"throughput b={THROUGHPUT_BATCH} (img/s)",
        "training-only params",
        "device",
    ]
    rows = []
    for arch in sorted(profiles):
        profiled = profiles[arch]
        latency = {b: profiled.latency_ms(b) for b in (1, *others)}
        rows.append(
            [
                arch,
                profiled.role,
                f"{int(profiled.profile['params']):,}",
                f"{int(profiled.profile['macs']) / 1e6:.1f}",
                *(PENDING if latency[b] is None else f"{latency[b]:.2f}" for b in (1, *others)),
                _throughput(profiled),
                ", ".join(profiled.extras) or "0",
                profiled.profile.get("device_name", "?"),
            ]
        )
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _pair_of(run: PlannedRun) -> str:
    return run.pair.label if run.pair is not None else run.model


def _method_of(run: PlannedRun) -> str:
    if isinstance(run, PruneRun):
        return f"prune ({run.pruner})"
    return run.method if isinstance(run, TrainRun) else run.to_config()["distiller"]


def _status_of(record: Mapping[str, Any] | None) -> str:
    if record is None:
        return "not run yet"
    first_line = (record.get("error") or "").strip().splitlines()[:1]
    reason = first_line[0] if first_line else ""
    if len(reason) > 80:
        reason = reason[:79] + "…"
    reason = reason.replace("|", "\\|")
    return f"{record['status']}: {reason}" if reason else record["status"]


def _missing_runs(table: _Table) -> list[str]:
    """Return the section listing every planned run without a finished result, grouped, in plan order."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for run in table.plan:
        record = table.records.get(run.run_id)
        if record is not None and record["status"] == "finished":
            continue
        key = (run.role, _pair_of(run), _method_of(run), _status_of(record))
        groups.setdefault(key, []).append(PENDING if run.seed is None else str(run.seed))
    lines = ["## Runs not stored yet", ""]
    if not groups:
        return [*lines, f"All {len(table.plan)} planned runs are stored.", ""]
    rows = [
        [kind, pair, method, ", ".join(sorted(seeds, key=_seed_order)), status]
        for (kind, pair, method, status), seeds in groups.items()
    ]
    missing = sum(len(seeds) for seeds in groups.values())
    lines += [
        f"{missing} of {len(table.plan)} planned runs {'has' if missing == 1 else 'have'} no result: not run yet, "
        "failed (retried by the next "
        "`kdbench run`) or diverged.",
        "",
        tabulate(
            rows,
            headers=["kind", "pair / model", "method", "seeds", "status"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]
    return lines


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (-1, seed)


def _own_recipes(table: _Table) -> list[str]:
    """Return one line per method whose runs use recipe fields other than the suite's."""
    changes: dict[str, dict[str, str]] = {}
    for run in _trained(table.plan, "student"):
        suite_recipe = recipe_config(student_recipe(table.suite.recipe, run.model))
        own = recipe_config(run.recipe)
        keys = set(own) | set(suite_recipe)
        diff = {k: own.get(k) for k in keys if k != "lr_overrides" and suite_recipe.get(k) != own.get(k)}
        if diff:
            text = ", ".join(f"{k} {v}" for k, v in sorted(diff.items()))
            changes.setdefault(run.method, {})[run.pair.label if run.pair else run.model] = text
    lines = []
    for method, per_pair in sorted(changes.items()):
        by_text: dict[str, list[str]] = {}
        for pair, text in sorted(per_pair.items()):
            by_text.setdefault(text, []).append(pair)
        parts = "; ".join(f"{text} on {', '.join(pairs)}" for text, pairs in by_text.items())
        lines.append(f"- `{method}` runs with its own published recipe: {parts}.")
    return lines


def _pruning_table(table: _Table) -> str | None:
    """Return the pruning table (accuracy before/after, compression, speed-up), or None without prune runs."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    labels: dict[tuple[str, str], str] = {}
    for run in table.plan:
        if not isinstance(run, PruneRun):
            continue
        settings = ", ".join(f"{k}={v}" for k, v in sorted(run.settings.items()))
        method = run.trained_with or "—"
        key = (f"{run.source.arch} ({method})", f"{run.pruner} {settings}")
        labels[key] = f"{run.finetune_epochs}"
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
                mean_std_text(before),
                mean_std_text(after),
                f"{mean_std_text(tuned)} ({labels[key]})" if tuned else "n/a (0)",
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


def mean_std_text(values: Sequence[float]) -> str:
    """Return ``mean ± std`` of ``values`` to two decimals (just the value when there is one)."""
    mean, std, n = cell_stats(values)
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def _run_counts(table: _Table) -> tuple[int, int, int, int]:
    """Return (finished, failed, diverged, planned) over the runs of the plan."""
    statuses = [(table.records.get(run.run_id) or {}).get("status") for run in table.plan]
    return statuses.count("finished"), statuses.count("failed"), statuses.count("diverged"), len(statuses)


def _decay(recipe: Recipe) -> str:
    if not recipe.lr_milestones:
        return "constant lr"
    at = "epoch" if len(recipe.lr_milestones) == 1 else "epochs"
    return f"×{recipe.lr_gamma} at {at} {', '.join(map(str, recipe.lr_milestones))}"


def _provenance(table: _Table) -> list[str]:
    records = [r for r in table.records.values()]
    finished, failed, diverged, planned = _run_counts(table)
    problems = ", ".join(f"{count} {name}" for count, name in ((failed, "failed"), (diverged, "diverged")) if count)
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
        f"- **{finished}/{planned} runs stored**"
        + (f" ({problems})" if problems else "")
        + ("; the others are listed under *Runs not stored yet*." if finished < planned else "."),
        f"- **Top-1 (%)** on the `{table.suite.dataset}` test set, **{rule}**, mean ± sample std over seeds "
        f"{', '.join(map(str, table.suite.seeds))}; `n` = runs stored; {PENDING} = not run yet.",
        f"- Recipe: {recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}, batch {recipe.batch_size}, "
        f"SGD lr {recipe.lr} (momentum {recipe.momentum}, wd {recipe.weight_decay}), {_decay(recipe)}"
        + (
            f"; each epoch the train set twice, its usual views and a copy through the `{recipe.strong_copy}` "
            "RandAugment + Cutout policy."
            if recipe.strong_copy
            else "."
        ),
        *_own_recipes(table),
        f"- Produced on: {'; '.join(devices) or PENDING}; kdbench {', '.join(versions) or PENDING}; "
        f"{minutes:.1f} min of training in the stored runs.",
    ]


def _method_names(plan: Sequence[PlannedRun]) -> list[str]:
    return sorted({r.method for r in _trained(plan, "student") if r.pair is not None})


def _plot_points(table: _Table, cost: Callable[[_Profiled], float | None]) -> tuple[PlotPoint, ...]:
    """Return one point per teacher, vanilla student and (pair, method) with a mean top-1 and a known cost."""
    profiles = _profiles(table)
    pairs = table.suite.pairs
    teachers_of = Counter(pair.student for pair in pairs)
    points = []

    def add(series: str, role: str, arch: str, label: str, cell: _Cell) -> None:
        x = cost(profiles[arch]) if arch in profiles else None
        if x is not None and cell.values:
            mean, _, n = cell_stats(cell.values)
            points.append(PlotPoint(series, role, label, float(f"{x:.6g}"), round(mean, 4), n))

    for teacher in dict.fromkeys(pair.teacher for pair in pairs):
        add("teacher", "teacher", teacher, teacher, table.teacher_cell(teacher))
    for student in dict.fromkeys(pair.student for pair in pairs):
        add("student (vanilla)", "student", student, student, table.student_cell(student))
    for pair in pairs:
        # A student distilled from several teachers: its points say which teacher.
        label = pair.student if teachers_of[pair.student] == 1 else f"{pair.student}←{pair.teacher}"
        for method in _method_names(table.plan):
            add(method, "method", pair.student, label, table.method_cell(method, pair.label))
    return tuple(points)


def _macs(profiled: _Profiled) -> float:
    return int(profiled.profile["macs"]) / 1e6


def _latency_b1(profiled: _Profiled) -> float | None:
    return profiled.latency_ms(1)


def _plots(table: _Table) -> list[AccuracyPlot]:
    if "plots" not in table.memo:
        table.memo["plots"] = _plot_specs(table)
    return table.memo["plots"]


def _plot_specs(table: _Table) -> list[AccuracyPlot]:
    name = table.suite.name
    rule = "best" if table.suite.epoch_rule == "best" else "last"
    ylabel = f"top-1 (%), {rule} epoch, mean over seeds"
    devices = sorted({p.profile.get("device_name", "?") for p in _profiles(table).values() if _latency_b1(p)})
    where = f"on {devices[0]}" if len(devices) == 1 else "devices differ, see the efficiency table"
    specs = {
        "macs": (_macs, f"{name}: top-1 vs MACs", "MACs (millions, batch 1)"),
        "latency": (_latency_b1, f"{name}: top-1 vs latency at batch 1", f"latency at batch 1 (ms), {where}"),
    }
    plots = []
    for kind in PLOT_KINDS:
        cost, title, xlabel = specs[kind]
        points = _plot_points(table, cost)
        if points:
            plots.append(AccuracyPlot(kind, plot_stem(name, kind), title, xlabel, ylabel, points))
    return plots


def _plot_section(plots: Sequence[AccuracyPlot]) -> list[str]:
    lines = ["## Accuracy vs cost", ""]
    if not plots:
        return [*lines, f"{PENDING} No plot yet: no run with a stored top-1 has been profiled.", ""]
    lines += [
        "One point per student and method: mean top-1 over the stored seeds; ★ teachers, □ vanilla students, "
        "methods by colour and marker (legend); annotations name the architecture.",
        "",
    ]
    by_kind = {plot.kind: plot for plot in plots}
    for kind in PLOT_KINDS:
        plot = by_kind.get(kind)
        if plot is None:
            what = "MACs" if kind == "macs" else "a batch-1 latency"
            lines += [f"{PENDING} No {kind} plot: no run with a stored top-1 has {what} profiled.", ""]
            continue
        lines += [f"![{plot.title}]({plot.stem}.svg)", "", f"PNG: [{plot.stem}.png]({plot.stem}.png)", ""]
    return lines


def _by_id(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {r["run_id"]: r for r in records}


def leaderboard_plots(plan: Plan, records: Iterable[Mapping[str, Any]]) -> list[AccuracyPlot]:
    """Return the accuracy-vs-cost plots of ``plan``'s board (MACs, latency), only those with something to draw."""
    return _plots(_Table(plan, _by_id(records)))


def render_leaderboard(plan: Plan, records: Iterable[Mapping[str, Any]], reported: Iterable[Reported] = ()) -> str:
    """Return the markdown leaderboard of ``plan`` from ``records`` (same inputs → same bytes)."""
    return _markdown(_Table(plan, _by_id(records)), plan.families, reported)


def _execution_note(table: _Table) -> list[str]:
    """Say how many runs trained in cohorts or read a teacher table, and that it is the same math."""
    executions = [
        table.records[run.run_id].get("versions", {}).get("execution") or {}
        for run in table.plan
        if run.run_id in table.records
    ]
    cohorts, tables = sum("cohort" in e for e in executions), sum("teacher_table" in e for e in executions)
    lines = []
    if cohorts or tables:
        lines += [
            f"Execution: {cohorts} runs trained in cohorts (the runs of one teacher, seed and recipe in lockstep, one "
            f"teacher pass per step) and {tables} read their teacher's table (its logits for every train image and "
            "view, computed once). Same math as a run alone: a cohort member's numbers equal its solo run's bitwise, "
            "a table run's losses equal the live teacher's to 1e-5 (`tests/test_cohorts.py`); each record says how "
            "it ran (`versions.execution`).",
            "",
        ]
    processes = Counter(e["processes"] for e in executions if "processes" in e)
    loaders = Counter(e["loader"] for e in executions if e.get("loader"))
    if processes:
        counts = ", ".join(f"{runs} by {n} processes" for n, runs in sorted(processes.items()))
        lines += [
            f"Distributed: runs trained by several processes (DDP; {counts}) split every batch between them, with "
            "per-process BatchNorm statistics unless their recipe says `sync_bn`, as the references do.",
            "",
        ]
    if loaders:
        counts = ", ".join(f"`{name}` {runs}" for name, runs in sorted(loaders.items()))
        lines += [f"Images read by the loaders {counts} (the same crops; pixels differ by the decoders' rounding).", ""]
    return lines


def _markdown(table: _Table, families: Mapping[str, str], reported: Iterable[Reported]) -> str:
    suite = table.suite
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
    if table.any_unverified():
        lines += [
            "⚠unverified data: made from dataset files that differ from the published dataset (e.g. "
            "torchvision's CIFAR MD5s, or not ILSVRC2012's image counts): not comparable with published numbers.",
            "",
        ]
    lines += _execution_note(table)
    if markers:
        lines += [
            "Published claims (`paper`; Δ = ours − paper, of the rounded numbers shown, with our number under the "
            "claim's own epoch rule):",
            "",
        ]
        protocols = {claim.source: claim for claim in claims.values()}
        lines += [f"- {marker} {_source_note(protocols[source], table.rule)}" for source, marker in markers.items()]
        lines.append("")
    lines += _settings_notes(table)
    lines += _choices_notes(table)
    lines += _missing_runs(table)
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
        f"Params at inference; MACs: {MACS_CONVENTION}; latency: median of timed iterations after warm-up; "
        f"throughput = {THROUGHPUT_BATCH} / latency at batch {THROUGHPUT_BATCH}; training-only params: modules a "
        "method trains beside the student and drops afterwards.",
        "",
        _efficiency_table(table),
        "",
        *_plot_section(_plots(table)),
        f"_Rendered by `kdbench leaderboard --suite {suite.name}` from `{suite.name}.jsonl`; do not edit by hand._",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BoardSummary:
    """One row of the leaderboard index: what a leaderboard shows and how complete it is."""

    name: str
    dataset: str
    epoch_rule: str
    stored: int
    planned: int
    methods: tuple[str, ...]
    best: tuple[str, ...]
    plots: tuple[str, ...]


def _best_per_pair(table: _Table) -> tuple[str, ...]:
    methods = _method_names(table.plan)
    lines = []
    for pair in table.suite.pairs:
        cells = {m: table.method_cell(m, pair.label) for m in methods}
        top = _best_mean(cells.values())
        if top is None:
            lines.append(f"{pair.label}: {PENDING}")
            continue
        winners = " / ".join(m for m, c in cells.items() if c.values and _shown_mean(c.values) == top)
        lines.append(f"{pair.label}: {winners} {top:.2f}")
    return tuple(lines)


def summarize_leaderboard(plan: Plan, records: Iterable[Mapping[str, Any]]) -> BoardSummary:
    """Return the index row of ``plan``'s leaderboard rendered from ``records``."""
    return _summary(_Table(plan, _by_id(records)))


def _summary(table: _Table) -> BoardSummary:
    suite, plan = table.suite, table.plan
    finished, _, _, planned = _run_counts(table)
    methods = tuple(sorted({r.method for r in _trained(plan, "student")}))
    plots = tuple(plot.stem for plot in _plots(table))
    return BoardSummary(
        suite.name, suite.dataset, suite.epoch_rule, finished, planned, methods, _best_per_pair(table), plots
    )


def _index_row(board: BoardSummary) -> list[str]:
    methods = ", ".join(board.methods) if len(board.methods) <= 8 else f"{len(board.methods)} methods"
    plots = " · ".join(f"[{stem.rsplit('-', 1)[-1]}]({stem}.svg)" for stem in board.plots) or PENDING
    return [
        f"[{board.name}]({board.name}.md)",
        board.dataset,
        board.epoch_rule,
        f"{board.stored}/{board.planned}",
        methods,
        "<br>".join(board.best) or PENDING,
        plots,
    ]


def render_index(boards: Iterable[BoardSummary]) -> str:
    """Return ``leaderboards/README.md``: one row per leaderboard (sorted by name), what the files are."""
    rows = [_index_row(board) for board in sorted(boards, key=lambda b: b.name)]
    headers = ["leaderboard", "dataset", "epoch rule", "runs stored", "methods", "best method per pair", "plots"]
    lines = [
        "# Leaderboards",
        "",
        "Every table here is rendered by `kdbench leaderboard` from stored run records only; do not edit by hand.",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        "## The files",
        "",
        "- `<suite>.md`: the leaderboard: top-1 mean ± std (n) per teacher→student pair and method, the paper's "
        "claim and our delta where published, runs not stored yet, an efficiency table, the plots.",
        "- `<suite>.jsonl`: the run records it is rendered from (one JSON object per line, sorted by run id).",
        "- `<suite>-accuracy-vs-macs.{svg,png}`, `<suite>-accuracy-vs-latency.{svg,png}`: top-1 against cost; "
        "each file carries a digest of the data it draws in its metadata.",
        "- `<suite>.plan.json`: the plan the board is rendered with (the suite, every planned run, each method's "
        "family); `--from-jsonl` and `--check` read it instead of the installed plugins.",
        "- `README.md`: this index.",
        "",
        "## Regenerate and check",
        "",
        "```",
        "kdbench run --suite NAME                # train what is missing, into the results database",
        "kdbench leaderboard --suite NAME        # re-plan NAME; write its records, plan, markdown, plots, this index",
        "kdbench leaderboard --from-jsonl        # re-render every board here from its committed records and plan",
        "kdbench leaderboard --check             # CI: exit 1 and name what is stale; rewrites nothing",
        "```",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RenderedBoard:
    """Everything a leaderboard shows, from one pass over the records: markdown, plots, index row."""

    markdown: str
    plots: tuple[AccuracyPlot, ...]
    summary: BoardSummary


def render_board(plan: Plan, records: Iterable[Mapping[str, Any]], reported: Iterable[Reported] = ()) -> RenderedBoard:
    """Return the markdown, plots and index row of ``plan``'s leaderboard (what ``kdbench leaderboard`` writes)."""
    table = _Table(plan, _by_id(records))
    return RenderedBoard(_markdown(table, plan.families, reported), tuple(_plots(table)), _summary(table))
