"""Suite files: TOML data that expands into a benchmark (dataset × pairs × methods × seeds)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from kdbench.errors import SuiteError
from kdbench.specs import PairSpec, Recipe, SuiteSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_suite_file", "parse_suite", "recipe_problems", "suite_to_data"]

_TOP_LEVEL = {
    "name": str,
    "description": str,
    "dataset": str,
    "pairs": list,
    "distillers": list,
    "seeds": list,
    "recipe": dict,
    "teacher_recipe": dict,
    "teacher_seed": int,
    "teachers": dict,
    "distiller_params": dict,
    "method_recipes": dict,
    "prune_after": list,
    "epoch_rule": str,
    "reference": str,
}
_REQUIRED = ("name", "description", "dataset", "pairs")
#: A suite's name names its leaderboard files: no path separators, no leading dot.
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RECIPE_FIELDS = {f.name for f in fields(Recipe)}


def load_suite_file(path: Path) -> SuiteSpec:
    """Return the suite defined by the TOML file at ``path``; any defect raises SuiteError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {path} is not valid TOML: {exc}") from None
    return parse_suite(data, source=str(path))


def parse_suite(data: Mapping[str, Any], source: str = "<suite>") -> SuiteSpec:
    """Return a SuiteSpec from decoded TOML, checking every key and type."""
    where = f"suite file {source}"
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_LEVEL))}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise SuiteError(f"{where}: missing required key(s) {', '.join(missing)}")
    for key, kind in _TOP_LEVEL.items():
        if key in data and not isinstance(data[key], kind):
            raise SuiteError(f"{where}: `{key}` must be a {kind.__name__}, got {type(data[key]).__name__}")
    if data.get("epoch_rule", "best") not in ("best", "last"):
        raise SuiteError(f'{where}: `epoch_rule` must be "best" or "last"')
    if not SUITE_NAME.fullmatch(data["name"]):
        raise SuiteError(
            f"{where}: `name` {data['name']!r} must be letters, digits, '-', '_' or '.', starting with a letter or "
            "digit (it names the leaderboard files)"
        )
    recipe = _recipe(data.get("recipe", {}), where, "recipe")
    teacher_recipe = _recipe(data["teacher_recipe"], where, "teacher_recipe") if "teacher_recipe" in data else None
    return SuiteSpec(
        name=data["name"],
        description=data["description"],
        dataset=data["dataset"],
        pairs=tuple(_pair(entry, where, i) for i, entry in enumerate(data["pairs"])),
        distillers=tuple(_strings(data.get("distillers", ["*"]), where, "distillers")),
        seeds=tuple(_ints(data.get("seeds", [0, 1, 2]), where, "seeds")),
        recipe=recipe,
        teacher_recipe=teacher_recipe,
        teacher_seed=data.get("teacher_seed", 0),
        teachers={str(k): _string(v, where, f"teachers.{k}") for k, v in data.get("teachers", {}).items()},
        distiller_params=_tables(data.get("distiller_params", {}), where, "distiller_params"),
        method_recipes=_recipe_tables(data.get("method_recipes", {}), recipe, where, "method_recipes"),
        prune_after=tuple(_prune_stage(stage, where, i) for i, stage in enumerate(data.get("prune_after", []))),
        epoch_rule=data.get("epoch_rule", "best"),
        reference=data.get("reference", ""),
        source=source,
    )


def _recipe_data(recipe: Recipe) -> dict[str, Any]:
    data = {name: getattr(recipe, name) for name in sorted(_RECIPE_FIELDS)}
    data["lr_milestones"] = list(recipe.lr_milestones)
    data["lr_overrides"] = dict(recipe.lr_overrides)
    if not recipe.strong_copy:
        del data["strong_copy"]  # as before the field existed
    if not recipe.sync_bn:
        del data["sync_bn"]
    return data


def _nested(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: dict(values) for name, values in tables.items()}


def suite_to_data(suite: SuiteSpec) -> dict[str, Any]:
    """Return ``suite`` as the data of a suite file: ``parse_suite(suite_to_data(s))`` equals ``s`` (but its source).

    Every recipe field is written out, so the data does not depend on this kdbench's defaults.
    """
    data: dict[str, Any] = {
        "name": suite.name,
        "description": suite.description,
        "dataset": suite.dataset,
        "pairs": [
            {
                "teacher": pair.teacher,
                "student": pair.student,
                "params": _nested(pair.params),
                "skip": list(pair.skip),
                "recipes": _nested(pair.recipes),
                **({"choices": {k: list(v) for k, v in pair.choices.items()}} if pair.choices else {}),
            }
            for pair in suite.pairs
        ],
        "distillers": list(suite.distillers),
        "seeds": list(suite.seeds),
        "recipe": _recipe_data(suite.recipe),
        "teacher_seed": suite.teacher_seed,
        "teachers": dict(suite.teachers),
        "distiller_params": _nested(suite.distiller_params),
        "method_recipes": _nested(suite.method_recipes),
        "prune_after": [dict(stage) for stage in suite.prune_after],
        "epoch_rule": suite.epoch_rule,
        "reference": suite.reference,
    }
    if suite.teacher_recipe is not None:
        data["teacher_recipe"] = _recipe_data(suite.teacher_recipe)
    return data


def _recipe(table: Mapping[str, Any], where: str, key: str) -> Recipe:
    unknown = sorted(set(table) - _RECIPE_FIELDS)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) in [{key}]: {', '.join(unknown)}")
    for name, kind in (("lr_milestones", list), ("lr_overrides", dict)):
        if name in table and not isinstance(table[name], kind):
            raise SuiteError(f"{where}: [{key}] {name} must be a {'list' if kind is list else 'table'}")
    try:
        recipe = Recipe(**table)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{where}: bad [{key}]: {exc}") from None
    problems = recipe_problems(recipe)
    if problems:
        raise SuiteError(f"{where}: [{key}] {problems[0]}")
    return recipe


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def recipe_problems(recipe: Recipe) -> list[str]:
    """Return what is wrong with ``recipe`` (types and ranges), one phrase each; empty when it is sound."""
    problems = []
    for name in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(recipe, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    ranges = {
        "lr": (lambda v: v > 0, "a positive number"),
        "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": (lambda v: v >= 0, "a number ≥ 0"),
        "lr_gamma": (lambda v: v > 0, "a positive number"),
    }
    for name, (fits, what) in ranges.items():
        value = getattr(recipe, name)
        if not _number(value) or not fits(value):
            problems.append(f"{name} must be {what}, got {value!r}")
    for name in ("nesterov", "sync_bn"):
        if not isinstance(getattr(recipe, name), bool):
            problems.append(f"{name} must be true or false, got {getattr(recipe, name)!r}")
    if not isinstance(recipe.strong_copy, str):
        problems.append(f"strong_copy must be the name of an augmentation policy, got {recipe.strong_copy!r}")
    milestones = recipe.lr_milestones
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones):
        problems.append(f"lr_milestones must be non-negative integers (epochs), got {list(milestones)!r}")
    for student, lr in recipe.lr_overrides.items():
        if not _number(lr) or lr <= 0:
            problems.append(f"lr_overrides.{student} must be a positive number, got {lr!r}")
    return problems


def _pair(entry: Any, where: str, index: int) -> PairSpec:
    if not isinstance(entry, dict) or not {"teacher", "student"} <= set(entry):
        raise SuiteError(f"{where}: pairs[{index}] needs `teacher` and `student`")
    unknown = sorted(set(entry) - {"teacher", "student", "params", "skip", "recipes", "choices"})
    if unknown:
        raise SuiteError(f"{where}: pairs[{index}] has unknown key(s) {', '.join(unknown)}")
    params = _tables(entry.get("params", {}), where, f"pairs[{index}].params")
    return PairSpec(
        teacher=_string(entry["teacher"], where, f"pairs[{index}].teacher"),
        student=_string(entry["student"], where, f"pairs[{index}].student"),
        params=params,
        skip=tuple(_strings(entry.get("skip", []), where, f"pairs[{index}].skip")),
        recipes=_recipe_tables(entry.get("recipes", {}), Recipe(), where, f"pairs[{index}].recipes"),
        choices=_choices(entry.get("choices", {}), where, f"pairs[{index}].choices"),
    )


def _choices(value: Any, where: str, key: str) -> dict[str, list[str]]:
    """Return method → parameter names (settings without a published source), checked for shape."""
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: `{key}` must map method names to lists of parameter names")
    return {str(method): _strings(names, where, f"{key}.{method}") for method, names in value.items()}


_PRUNE_KEYS = {"pruner", "ratio", "macs", "finetune_epochs", "finetune_lr", "methods", "round_to", "global", "params"}


def _prune_stage(stage: Any, where: str, index: int) -> dict[str, Any]:
    """Return a distill-then-prune stage with its defaults.

    Defaults (seed 001): structured L1 channel pruning at 30 %, 5 fine-tune epochs at LR 0.01, every method.
    """
    key = f"prune_after[{index}]"
    if not isinstance(stage, dict):
        raise SuiteError(f"{where}: {key} must be a table")
    unknown = sorted(set(stage) - _PRUNE_KEYS)
    if unknown:
        raise SuiteError(
            f"{where}: {key} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_PRUNE_KEYS))}"
        )
    if "ratio" in stage and "macs" in stage:
        raise SuiteError(f"{where}: {key} takes one of `ratio` or `macs`, not both")
    amount = {} if "macs" in stage else {"ratio": 0.3}
    defaults = {"pruner": "l1", **amount, "finetune_epochs": 5, "finetune_lr": 0.01, "methods": ["*"], "params": {}}
    stage = {**defaults, **stage}
    _string(stage["pruner"], where, f"{key}.pruner")
    if (
        not isinstance(stage["finetune_epochs"], int)
        or isinstance(stage["finetune_epochs"], bool)
        or (stage["finetune_epochs"] < 0)
    ):
        raise SuiteError(f"{where}: {key}.finetune_epochs must be a non-negative integer")
    checks = {
        "ratio": (lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1"),
        "macs": (lambda v: _number(v) and v > 1, "a MACs reduction above 1 (2.0 halves MACs)"),
        "finetune_lr": (lambda v: _number(v) and v > 0, "a positive number"),
        "round_to": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
        "global": (lambda v: isinstance(v, bool), "true or false"),
        "params": (lambda v: isinstance(v, dict), "a table of the pruner's parameters"),
    }
    for name, (fits, what) in checks.items():
        if name in stage and not fits(stage[name]):
            raise SuiteError(f"{where}: {key}.{name} must be {what}, got {stage[name]!r}")
    _strings(stage["methods"], where, f"{key}.methods")
    return stage


def _recipe_tables(value: Any, base: Recipe, where: str, key: str) -> dict[str, dict[str, Any]]:
    """Return per-method recipe fields, each table checked by building the recipe it makes."""
    tables = _tables(value, where, key)
    for method, changes in tables.items():
        if "lr_overrides" in changes:
            raise SuiteError(f"{where}: [{key}.{method}] cannot set lr_overrides; set lr")
        known = _recipe_data(base)
        _recipe({**known, **changes}, where, f"{key}.{method}")
    return tables


def _tables(value: Any, where: str, key: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SuiteError(f"{where}: `{key}` must map method names to tables of parameters")
    return {str(k): dict(v) for k, v in value.items()}


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise SuiteError(f"{where}: `{key}` must be a non-empty string")
    return value


def _strings(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list):
        raise SuiteError(f"{where}: `{key}` must be a list of strings")
    return [_string(v, where, f"{key}[{i}]") for i, v in enumerate(value)]


def _ints(value: list[Any], where: str, key: str) -> list[int]:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SuiteError(f"{where}: `{key}` must be a non-empty list of integers")
    return list(value)
