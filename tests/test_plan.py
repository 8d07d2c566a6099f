"""The typed, serialisable plan: ids of every committed record unchanged, JSON round trips, DAG checks, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import kdbench
from kdbench.cli import main
from kdbench.errors import PlanError
from kdbench.plan import (
    CheckpointWeights,
    Plan,
    PruneRun,
    RunWeights,
    TeacherCheck,
    TrainRun,
    plan_suite,
    run_from_config,
    run_id_of,
)
from kdbench.publish import PLAN_SUFFIX, teacher_checkpoints
from kdbench.results import read_jsonl

REPO = Path(__file__).resolve().parents[1]
BOARDS = REPO / "leaderboards"


def _committed_records() -> list[dict]:
    records = [record for path in sorted(BOARDS.glob("*.jsonl")) for record in read_jsonl(path)]
    assert len(records) >= 50, "the committed boards should hold the smoke runs"
    return records


def test_every_committed_record_keeps_its_run_id() -> None:
    kinds = set()
    for record in _committed_records():
        run = run_from_config(record["config"], record["kind"])
        assert run.run_id == record["run_id"] == run_id_of(record["config"]), record["config"]
        assert run.to_config() == record["config"] and run.role == record["kind"]
        kinds.add(type(run).__name__)
    assert kinds == {"TrainRun", "PruneRun"}  # the smoke boards train and prune (no checkpoint teachers)


def test_every_committed_plan_is_what_the_first_party_plugins_plan_now(host: kdbench.PluginHost) -> None:
    """A suite edited without re-rendering its board is caught here (``--check`` reads the committed plan)."""
    first_party = kdbench.create_plugin_host(
        strict=True, disabled=[p.name for p in host.plugins if p.distribution != "kdbench"]
    )
    plans = sorted(BOARDS.glob(f"*{PLAN_SUFFIX}"))
    assert {p.name[: -len(PLAN_SUFFIX)] for p in plans} == {p.stem for p in BOARDS.glob("*.jsonl")}
    for path in plans:
        committed = Plan.load(path)
        records = read_jsonl(path.with_name(path.name.replace(PLAN_SUFFIX, ".jsonl")))
        fresh = plan_suite(first_party.suites.get(committed.suite.name), first_party, teacher_checkpoints(records))
        assert fresh.to_json() == committed.to_json(), f"{path.name}: re-render it (kdbench leaderboard --suite …)"


@pytest.mark.parametrize("name", ["smoke", "smoke-prune", "cifar100-similar", "cifar100-prune"])
def test_plans_round_trip_through_json(host: kdbench.PluginHost, name: str) -> None:
    suite = host.suites.get(name)
    named = {pair.teacher: f"{pair.teacher}@mdistiller" for pair in suite.pairs}
    overrides = {arch: teacher for arch, teacher in named.items() if teacher in host.teachers}
    plan = plan_suite(suite, host, overrides)
    text = plan.to_json()
    back = Plan.from_json(text, "test")
    assert back.to_json() == text and len(text.splitlines()) == len(plan) + 7  # one line per run
    assert back.suite == replace(suite, source=back.suite.source) and back.families == plan.families
    for ours, theirs in zip(plan, back):
        assert type(ours) is type(theirs) and ours == theirs
        assert (ours.run_id, ours.role, ours.requires, ours.label) == (
            theirs.run_id,
            theirs.role,
            theirs.requires,
            theirs.label,
        )
    ids = [run.run_id for run in plan]
    for position, run in enumerate(plan):  # a DAG in execution order: what a run needs comes before it
        assert all(ids.index(needed) < position for needed in run.requires)


def test_the_runs_are_typed_with_recipes_and_resolved_names(host: kdbench.PluginHost) -> None:
    plan = plan_suite(host.suites.get("cifar100-different"), host, {"resnet32x4": "resnet32x4@mdistiller"})
    check = next(run for run in plan if isinstance(run, TeacherCheck))
    assert (check.model, check.source, check.role, check.seed) == (
        "resnet32x4",
        "resnet32x4@mdistiller",
        "teacher",
        None,
    )
    shuffle = next(run for run in plan if isinstance(run, TrainRun) and run.model == "ShuffleV1" and run.method == "kd")
    assert isinstance(shuffle.recipe, kdbench.Recipe) and shuffle.recipe.lr == 0.01  # the student's own LR
    assert shuffle.recipe.lr_overrides == {} and shuffle.teacher == CheckpointWeights("resnet32x4", check.source)
    assert shuffle.requires == (check.run_id,) and shuffle.pair.label == "resnet32x4→ShuffleV1"
    prune = plan_suite(host.suites.get("smoke-prune"), host)
    after = next(run for run in prune if isinstance(run, PruneRun) and run.trained_with == "kd")
    source = next(run for run in prune if run.run_id == after.source.run)
    assert isinstance(after.source, RunWeights) and isinstance(source, TrainRun) and source.method == "kd"
    assert after.finetune_recipe.epochs == after.finetune_epochs and after.finetune_recipe.lr_milestones == ()


def test_an_option_off_by_default_stays_out_of_configs_so_earlier_run_ids_hold(host: kdbench.PluginHost) -> None:
    smoke = host.suites.get("smoke-methods")
    dkd = next(run for run in plan_suite(smoke, host) if isinstance(run, TrainRun) and run.method == "dkd")
    assert (
        set(dkd.params)
        == set(dkd.to_config()["params"])
        == {"alpha", "beta", "temperature", "ce_weight", "warmup_epochs"}
    )
    assert dkd.run_id in {record["run_id"] for record in read_jsonl(BOARDS / "smoke-methods.jsonl")}
    clamped = replace(smoke, distiller_params={"dkd": {"logit_clamp": 10.0}})
    run = next(r for r in plan_suite(clamped, host) if isinstance(r, TrainRun) and r.method == "dkd")
    assert run.to_config()["params"]["logit_clamp"] == 10.0 and run.run_id != dkd.run_id
    assert run_from_config(run.to_config(), "student").run_id == run.run_id
    emptied = replace(smoke, distiller_params={"dkd": {"beta": None}})
    with pytest.raises(kdbench.KdbenchError, match=r"\[distiller_params.dkd\] sets beta to None"):
        plan_suite(emptied, host)


def test_a_hand_edited_or_foreign_plan_is_refused_naming_it(host: kdbench.PluginHost, tmp_path: Path) -> None:
    plan = plan_suite(host.suites.get("smoke"), host)
    data = json.loads(plan.to_json())
    data["runs"][3]["config"]["seed"] = 7  # edited by hand: the id no longer fits
    with pytest.raises(PlanError, match=rf"run 4: id {data['runs'][3]['run_id']} does not match its config"):
        Plan.from_json(json.dumps(data), "edited.json")
    data = json.loads(plan.to_json())
    data["runs"].reverse()  # students before their teacher
    with pytest.raises(PlanError, match="needs .*, which does not come before it"):
        Plan.from_json(json.dumps(data), "reversed.json")
    for text, message in (
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a kdbench plan"),
        (json.dumps({"format": "kdbench-plan-1", "runs": []}), "lacks families, suite"),
    ):
        with pytest.raises(PlanError, match=message):
            Plan.from_json(text, "x.json")
    with pytest.raises(PlanError, match="cannot read plan"):
        Plan.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="unknown config version"):
        run_from_config({"kdbench_config": 99, "distiller": "kd"})


def test_plan_command_writes_the_plan_and_selects_with_dependencies(host: kdbench.PluginHost, tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    assert main(["plan", "--suite", "smoke", "-o", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == plan_suite(host.suites.get("smoke"), host).to_json()
    one = tmp_path / "one.json"
    assert main(["plan", "--suite", "smoke", "-k", "kd digits_cnn_s seed=1", "--epochs", "1", "-o", str(one)]) == 0
    selected = Plan.load(one)
    assert [run.role for run in selected] == ["teacher", "student"] and selected.suite.recipe.epochs == 1
    assert selected[1].requires == (selected[0].run_id,)
    assert main(["plan", "--suite", "smoke", "-k", "no-such-run"]) == 2


def test_the_plan_and_publishing_layers_load_without_torch(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from kdbench.cli import main\n"
        f"assert main(['leaderboard', '--check', '--out', {str(BOARDS)!r}]) == 0\n"
        "from kdbench.plan import Plan\n"
        f"Plan.load({str(BOARDS / 'smoke.plan.json')!r})\n"
        "heavy = ('torch', 'kdbench.engine', 'kdbench.runner', 'kdbench.weights')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
