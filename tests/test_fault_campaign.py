"""A fault campaign: kdbench killed with SIGKILL at random moments, again and again, until a suite completes,
ends with exactly the numbers of an uninterrupted run; any suite file plans or gives one KdbenchError.

``KDBENCH_FAULT_KILLS`` sets how many kills the campaign makes (default 20); each lands at a random
moment of a fresh process (start-up, training, checkpointing, storing), drawn from a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdbench
from kdbench.errors import KdbenchError
from kdbench.results import ResultsStore
from kdbench.suites import parse_suite

CAMPAIGN = """
name = "campaign"
description = "several short runs on digits, killed again and again"
dataset = "digits"
distillers = ["vanilla", "kd"]
seeds = [0, 1]

[recipe]
epochs = 6
batch_size = 64
lr_milestones = [4]
eval_batch_size = 512

[[pairs]]
teacher = "digits_cnn_m"
student = "digits_cnn_s"

[[prune_after]]
pruner = "l1"
ratio = 0.3
finetune_epochs = 2
methods = ["kd"]
"""
KILLS = int(os.environ.get("KDBENCH_FAULT_KILLS", "20"))

pytestmark = pytest.mark.slow


def _kdbench(suite: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "kdbench.cli", "run", "--suite", str(suite), "--no-progress"]
    command += ["--results", str(tmp_path / f"{name}.sqlite"), "--work-dir", str(tmp_path / name)]
    command += ["--latency-batch-sizes", "1", "--threads", "1", "-p", "no:tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _comparable(path: Path) -> dict[str, dict[str, Any]]:
    def keep(record: dict[str, Any]) -> dict[str, Any]:
        curve = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["curve"]]
        profile = dict(record["profile"] or {})
        for part in (profile, profile.get("pruning", {}).get("before", {})):
            part.pop("latency", None)
        fields = ("kind", "status", "config", "best_top1", "last_top1", "best_epoch", "error")
        return {**{key: record[key] for key in fields}, "curve": curve, "profile": profile}

    with ResultsStore(path, read_only=True) as store:
        return {record["run_id"]: keep(record) for record in store.records()}


def _first_checkpoint(work: Path, process: subprocess.Popen, started: float) -> float:
    """Return the seconds from ``started`` until the process wrote its first checkpoint (its start-up, roughly)."""
    while not any(work.glob("*/checkpoint.pt")) and process.poll() is None:
        time.sleep(0.01)
    return time.monotonic() - started


def test_random_sigkills_change_no_number(tmp_path: Path) -> None:
    suite = tmp_path / "campaign.toml"
    suite.write_text(CAMPAIGN, encoding="utf-8")
    started = time.monotonic()
    reference = _kdbench(suite, tmp_path, "reference")
    start_up = _first_checkpoint(tmp_path / "reference", reference, started)
    output = reference.communicate(timeout=600)[0].decode()
    assert reference.returncode == 0, output
    expected = _comparable(tmp_path / "reference.sqlite")
    assert len(expected) == 7  # the teacher, 2 × vanilla, 2 × kd, the 2 kd students pruned and fine-tuned
    # Kills land anywhere from start-up to well into training, so every attempt gets a little further.
    draw = random.Random(20261206)
    kills, finished = 0, False
    while kills < KILLS:
        process = _kdbench(suite, tmp_path, "killed")
        time.sleep(draw.uniform(0.3 * start_up, 1.3 * start_up))
        if process.poll() is not None:
            output = process.stdout.read().decode()
            assert process.returncode == 0, output
            finished = True  # the suite completed before this kill could land
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        kills += 1
    if not finished:
        final = _kdbench(suite, tmp_path, "killed")
        output = final.communicate(timeout=600)[0].decode()
        assert final.returncode == 0, output
    assert kills >= KILLS, f"the suite finished after only {kills} kills: give it more work"
    assert _comparable(tmp_path / "killed.sqlite") == expected, f"after {kills} kills"


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzed suite files

_OPTIONAL_KEYS = [
    "distillers", "seeds", "recipe", "teacher_recipe", "teacher_seed", "teachers", "distiller_params",
    "method_recipes", "prune_after", "epoch_rule", "reference", "bogus",
]  # fmt: skip
_RECIPE_KEYS = [
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "lr_milestones", "lr_gamma",
    "lr_overrides", "eval_batch_size", "other",
]  # fmt: skip
_WORDS = [
    "digits", "vanilla", "kd", "*", "digits_cnn_m", "digits_cnn_s", "pruned(digits_cnn_m, ratio=0.5, pruner=l1)",
    "best", "last", "", "../x", "l1", "ssa",
]  # fmt: skip
_SCALARS = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(_WORDS),
    st.text(max_size=8),
)


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_RECIPE_KEYS), inner, max_size=3))


_VALUES = st.recursive(_SCALARS, _containers, max_leaves=8)
_PARAMS = st.dictionaries(
    st.sampled_from(["kd", "vanilla", "zz"]),
    st.dictionaries(st.sampled_from(["temperature", "ce_weight", "bogus"]), _SCALARS, max_size=2),
    max_size=2,
)
_PAIR = st.fixed_dictionaries(
    {
        "teacher": st.sampled_from(["digits_cnn_m", "digits_cnn_l", "nope", 3]),
        "student": st.sampled_from(["digits_cnn_s", "pruned(digits_cnn_m, ratio=0.5, pruner=l1)", "pruned(x)", ""]),
    },
    optional={"params": _PARAMS, "skip": st.lists(st.sampled_from(["kd", "fsp", 1]), max_size=2), "extra": _SCALARS},
)
_SUITE = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["fuzz", "", "a/b", 7]),
        "description": _SCALARS,
        "dataset": st.sampled_from(["digits", "x"]),
        "pairs": st.one_of(st.lists(_PAIR, max_size=2), _VALUES),
    },
    optional={
        key: st.one_of(_VALUES, st.dictionaries(st.sampled_from(_RECIPE_KEYS), _SCALARS, max_size=4))
        for key in _OPTIONAL_KEYS
    },
)

#: A sound suite, mutated below in one to four places: most inputs get past the shape checks and reach
#: the deeper ones (recipe ranges, method parameters, derived students, pruning stages, planning).
_BASE: dict[str, Any] = {
    "name": "fuzz",
    "description": "fuzzed",
    "dataset": "digits",
    "distillers": ["vanilla", "kd"],
    "seeds": [0],
    "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05, "lr_milestones": [1]},
    "pairs": [{"teacher": "digits_cnn_m", "student": "digits_cnn_s", "params": {"kd": {"temperature": 2.0}}}],
    "prune_after": [{"pruner": "l1", "ratio": 0.3, "methods": ["kd"]}],
}
_PATHS = [
    ("name",), ("dataset",), ("distillers",), ("seeds",), ("epoch_rule",), ("teacher_seed",), ("teachers",),
    ("recipe",), ("recipe", "epochs"), ("recipe", "batch_size"), ("recipe", "lr"), ("recipe", "momentum"),
    ("recipe", "weight_decay"), ("recipe", "lr_milestones"), ("recipe", "lr_gamma"), ("recipe", "nesterov"),
    ("recipe", "lr_overrides"), ("recipe", "eval_batch_size"), ("teacher_recipe",), ("method_recipes",),
    ("distiller_params",), ("pairs",), ("pairs", 0), ("pairs", 0, "teacher"), ("pairs", 0, "student"),
    ("pairs", 0, "params"), ("pairs", 0, "params", "kd"), ("pairs", 0, "params", "kd", "temperature"),
    ("pairs", 0, "skip"), ("pairs", 0, "recipes"), ("prune_after",), ("prune_after", 0),
    ("prune_after", 0, "pruner"), ("prune_after", 0, "ratio"), ("prune_after", 0, "macs"),
    ("prune_after", 0, "finetune_epochs"), ("prune_after", 0, "methods"), ("prune_after", 0, "params"),
]  # fmt: skip
_DELETE = object()
_STUDENTS = st.sampled_from(
    ["pruned(digits_cnn_m, ratio=0.5, pruner=l1)", "pruned(digits_cnn_m, macs=2.0, pruner=l1, init=scratch)",
     "pruned(digits_cnn_m, pruner=l1)", "pruned(digits_cnn_l, ratio=0.5, pruner=l1)", "pruned(digits_cnn_m,",
     "pruned(digits_cnn_m, ratio=0.5, pruner=l1, init=warm)", "digits_cnn_l"]
)  # fmt: skip
_MUTATION = st.tuples(
    st.sampled_from(_PATHS),
    st.one_of(_VALUES, _STUDENTS, st.just(_DELETE), st.floats(-1, 2), st.integers(-2, 3)),
)


def _mutated(mutations: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    data = json.loads(json.dumps(_BASE))
    for path, value in mutations:
        parent = data
        for step in path[:-1]:
            if isinstance(parent, dict) and step in parent:
                parent = parent[step]
            elif isinstance(parent, list) and isinstance(step, int) and step < len(parent):
                parent = parent[step]
            else:
                break
        else:
            last = path[-1]
            if isinstance(parent, dict):
                if value is _DELETE:
                    parent.pop(last, None)
                else:
                    parent[last] = value
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent) and value is not _DELETE:
                parent[last] = value
    return data


@pytest.fixture(scope="module")
def fuzz_host() -> kdbench.PluginHost:
    return kdbench.create_plugin_host(disabled=["tensorboard"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.one_of(_SUITE, st.lists(_MUTATION, min_size=1, max_size=4).map(_mutated)))
def test_any_suite_data_plans_or_gives_one_kdbench_error(fuzz_host: kdbench.PluginHost, data: dict) -> None:
    try:
        suite = parse_suite(data, source="fuzz.toml")
        plan = kdbench.plan_suite(suite, fuzz_host)
    except KdbenchError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), str(exc)
        return
    assert all(run.run_id for run in plan) and kdbench.Plan.from_json(plan.to_json()).to_json() == plan.to_json()


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_suite_file_text_loads_or_gives_one_kdbench_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "suite.toml"
    path.write_text(text, encoding="utf-8")
    try:
        kdbench.load_suite_file(path)
    except KdbenchError:
        return
