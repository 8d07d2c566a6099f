"""The ImageNet-sized suites (imagenet, imagenet100-prune, flowers102-prune, tiny-imagenet) and the ImageNet claims.

Planning only: nothing trains, no data is read.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pytest

import kdbench
from kdbench.cli import main
from kdbench.leaderboard import load_reported, render_leaderboard
from kdbench.plan import CheckpointWeights, Plan, PruneRun, RunWeights, TeacherCheck, TrainRun, plan_suite
from kdbench.publish import PLAN_SUFFIX

REPO = Path(__file__).resolve().parents[1]
SUITES = ("imagenet", "imagenet100-prune", "flowers102-prune", "tiny-imagenet")
R18, MV1 = ("resnet34", "resnet18"), ("resnet50", "MobileNetV1")
#: MDistiller's configs/imagenet/{r34_r18,r50_mv1}/*.yaml: (batch, LR) per method and pair; None: no config.
MDISTILLER_RECIPES = {
    "kd": {R18: (512, 0.2), MV1: (512, 0.2)},
    "dkd": {R18: (512, 0.2), MV1: (512, 0.2)},
    "dot": {R18: (512, 0.2), MV1: (512, 0.2)},
    "at": {R18: (512, 0.2), MV1: (512, 0.2)},
    "crd": {R18: (256, 0.1), MV1: (256, 0.1)},
    "reviewkd": {R18: (256, 0.1), MV1: None},  # kdbench's MobileNetV1 has no stem tap: skipped there
    "ofd": {R18: None, MV1: (128, 0.05)},  # MDistiller ships no r34_r18 OFD config
}
#: The sources imagenet_reported.csv may cite: each backed by [code]/[doc] in the reference notes (imagenet.md §2).
ALLOWED_SOURCES = {
    "MDistiller README (DKD, CVPR 2022; DOT, ICCV 2023): ImageNet",
    "torchvision IMAGENET1K_V1 weights (ResNet*_Weights metadata)",
    "torchdistill benchmark TSV (imagenet-resnet18_kd.tsv; torchdistill's own runs)",
}
#: Numbers the notes tag [recalled] / [3rd-party] / [issue]: never claims.
UNBACKED = ("76.16", "68.87", "70.66", "68.58", "69.56", "70.81", "71.25", "72.56", "72.03")


@pytest.fixture(scope="module")
def plans(host: kdbench.PluginHost) -> dict[str, Plan]:
    return {name: plan_suite(host.suites.get(name), host) for name in SUITES}


def _students(plan: Plan) -> dict[tuple[str, str, str, int], TrainRun]:
    return {
        (run.pair.teacher, run.pair.student, run.method, run.seed)
        if run.pair
        else ("", run.model, run.method, run.seed): run
        for run in plan
        if isinstance(run, TrainRun) and run.role == "student"
    }


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("imagenet", {"TeacherCheck": 2, "TrainRun": 14}),
        ("imagenet100-prune", {"TrainRun": 5, "PruneRun": 1}),
        ("flowers102-prune", {"TrainRun": 13, "PruneRun": 1}),
        ("tiny-imagenet", {"TrainRun": 7}),
    ],
)
def test_each_suite_plans_and_its_plan_round_trips(plans: dict[str, Plan], name: str, kinds: dict[str, int]) -> None:
    plan = plans[name]
    counted: dict[str, int] = {}
    for run in plan:
        counted[type(run).__name__] = counted.get(type(run).__name__, 0) + 1
    assert counted == kinds
    text = plan.to_json()
    assert Plan.from_json(text, "test").to_json() == text


def test_the_cli_writes_the_imagenet_plan(tmp_path: Path, plans: dict[str, Plan], capsys) -> None:
    out = tmp_path / "imagenet.plan.json"
    assert main(["plan", "--suite", "imagenet", "-o", str(out)]) == 0
    assert "16 runs" in capsys.readouterr().err
    assert Plan.load(out).to_json() == plans["imagenet"].to_json()


def test_imagenet_checks_torchvisions_v1_teachers_instead_of_training_them(plans: dict[str, Plan]) -> None:
    plan = plans["imagenet"]
    checks = [run for run in plan if run.role == "teacher"]
    assert all(isinstance(run, TeacherCheck) for run in checks)
    assert {(run.model, run.source) for run in checks} == {
        ("resnet34", "resnet34@torchvision-v1"),
        ("resnet50", "resnet50@torchvision-v1"),
    }
    # Ids depend only on what a run is: these are the ids stored records carry.
    assert {run.model: run.run_id for run in checks} == {"resnet34": "1374d79efc96d5b7", "resnet50": "cb3ba67e944a8d68"}
    for run in _students(plan).values():
        if run.method != "vanilla":
            assert run.teacher == CheckpointWeights(run.pair.teacher, f"{run.pair.teacher}@torchvision-v1")
            assert run.requires == (next(c.run_id for c in checks if c.model == run.pair.teacher),)


def test_imagenet_runs_each_method_under_its_mdistiller_config(plans: dict[str, Plan]) -> None:
    students = _students(plans["imagenet"])
    methods = {(t, s, m) for t, s, m, _ in students}
    expected = {(*pair, m) for m, per_pair in MDISTILLER_RECIPES.items() for pair, rs in per_pair.items() if rs}
    assert methods == expected | {("", "resnet18", "vanilla"), ("", "MobileNetV1", "vanilla")}
    assert not any(m == "mlkd" for _, _, m in methods)  # no published ImageNet config in the reference notes
    for (teacher, student, method, seed), run in students.items():
        recipe = run.recipe
        assert seed == 0 and run.dataset == "imagenet"
        assert (recipe.epochs, recipe.lr_milestones, recipe.lr_gamma) == (100, (30, 60, 90), 0.1)
        assert (recipe.momentum, recipe.weight_decay, recipe.eval_batch_size) == (0.9, 1e-4, 128)
        wanted = (256, 0.1) if method == "vanilla" else MDISTILLER_RECIPES[method][(teacher, student)]
        assert (recipe.batch_size, recipe.lr) == wanted, (teacher, student, method)
    crd = students[(*R18, "crd", 0)].recipe
    assert (crd.batch_size, crd.lr) == (256, 0.1)


def test_imagenet_method_parameters_are_mdistillers(plans: dict[str, Plan]) -> None:
    students = _students(plans["imagenet"])

    def params(pair: tuple[str, str], method: str) -> dict:
        return dict(students[(*pair, method, 0)].params)

    for pair in (R18, MV1):
        assert params(pair, "kd") == {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
        assert params(pair, "dot") == {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5, "delta": 0.09}
        dkd = params(pair, "dkd")
        assert (dkd["temperature"], dkd["ce_weight"], dkd["alpha"], dkd["warmup_epochs"]) == (1.0, 1.0, 1.0, 1)
        assert (params(pair, "at")["p"], params(pair, "at")["at_weight"]) == (2.0, 1000.0)
        assert params(pair, "crd")["nce_k"] == 16384 and params(pair, "crd")["crd_weight"] == 0.8
    assert params(R18, "dkd")["beta"] == 0.5 and params(MV1, "dkd")["beta"] == 2.0
    review = params(R18, "reviewkd")
    assert (review["review_weight"], review["warmup_epochs"], review["max_mid_channel"]) == (1.0, 1, 512)
    assert params(MV1, "ofd")["ofd_weight"] == 1e-4
    suite = plans["imagenet"].suite
    assert suite.epoch_rule == "best" and suite.reference == "imagenet" and suite.seeds == (0,)
    (r18, mv1) = suite.pairs
    assert (r18.skip, mv1.skip) == (("ofd",), ("reviewkd",))
    assert dict(mv1.params["reviewkd"]) == {"review_weight": 8.0, "max_mid_channel": 256}  # kept for when it runs


def test_prune_suites_prune_a_trained_resnet50_and_distil_at_t3(plans: dict[str, Plan]) -> None:
    for name, dataset, seeds, teacher_epochs in (
        ("imagenet100-prune", "imagenet100", (0,), 90),
        ("flowers102-prune", "flowers102", (0, 1, 2), 150),
    ):
        plan = plans[name]
        (teacher,) = [run for run in plan if run.role == "teacher"]
        (prune,) = [run for run in plan if isinstance(run, PruneRun)]
        assert isinstance(teacher, TrainRun) and (teacher.model, teacher.method) == ("resnet50", "vanilla")
        assert teacher.recipe.epochs == teacher_epochs and teacher.dataset == dataset
        assert prune.source == RunWeights("resnet50", teacher.run_id)
        assert (prune.pruner, prune.settings["ratio"], prune.params["theta"]) == ("ssa", 0.5, 0.5)
        students = _students(plan)
        assert {seed for *_, seed in students} == set(seeds) and len(students) == 4 * len(seeds)
        for (_, student, method, _), run in students.items():
            assert run.init is not None and run.init.prune_run == prune.run_id
            assert run.init.weights == ("scratch" if "init=scratch" in student else "pruned")
            recipe = run.recipe  # SSA-KD's client.py: batch 128, SGD 0.01, wd 5e-4, StepLR(60, 0.2), 150 epochs
            assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay) == (150, 128, 0.01, 5e-4)
            assert (recipe.lr_milestones, recipe.lr_gamma) == ((60, 120), 0.2)
            if method == "kd":
                assert run.params["temperature"] == 3.0 and run.teacher == RunWeights("resnet50", teacher.run_id)
    imagenet100_teacher = next(run for run in plans["imagenet100-prune"] if run.role == "teacher").recipe
    assert (imagenet100_teacher.batch_size, imagenet100_teacher.lr, imagenet100_teacher.lr_milestones) == (
        256,
        0.1,
        (30, 60),
    )


def test_tiny_imagenet_is_seed_001s_resnet34_to_mobilenet_v2_at_64_pixels(
    host: kdbench.PluginHost, plans: dict[str, Plan]
) -> None:
    import torch

    plan = plans["tiny-imagenet"]
    (teacher,) = [run for run in plan if run.role == "teacher"]
    assert (teacher.model, teacher.recipe.lr, teacher.recipe.epochs) == ("ResNet34", 0.05, 240)
    for (_, student, method, _), run in _students(plan).items():
        assert student == "mobilenet_v2" and run.recipe.lr == 0.01 and run.recipe.batch_size == 64
        if method == "kd":
            assert dict(run.params) == {"temperature": 4.0, "ce_weight": 0.3, "kd_weight": 0.7}
    classes = host.datasets.get("tiny-imagenet").num_classes
    for name in ("ResNet34", "mobilenet_v2"):
        model = host.models.get(name).builder(num_classes=classes).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 200)
    student = host.models.get("mobilenet_v2").builder(num_classes=1000)
    assert sum(p.numel() for p in student.parameters()) == 3_504_872  # seed 001's "3.5M" student


def _claims_rows() -> list[dict[str, str]]:
    text = resources.files("kdbench").joinpath("reference/imagenet_reported.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_imagenet_claims_parse_and_cite_only_code_or_doc_backed_sources(plans: dict[str, Plan]) -> None:
    rows = _claims_rows()
    cifar = resources.files("kdbench").joinpath("reference/cifar100_reported.csv").read_text(encoding="utf-8")
    assert list(rows[0]) == next(csv.reader(cifar.splitlines()))  # the same columns
    suite = plans["imagenet"].suite
    pairs = {(p.teacher, p.student) for p in suite.pairs}
    methods = {run.method for run in _students(plans["imagenet"]).values()} - {"vanilla"}
    seen = set()
    for row in rows:
        assert row["source"] in ALLOWED_SOURCES and row["dataset"] == suite.reference
        assert (row["teacher"], row["student"]) in pairs
        assert row["method"].lower() in methods | {"teacher", "student"}
        assert 60 < float(row["top1"]) < 80 and row["protocol"] in ("best", "last") and int(row["runs"]) >= 0
        key = (row["source"], row["teacher"], row["student"], row["method"])
        assert key not in seen
        seen.add(key)
    assert len(rows) == 13
    mine = [r for r in load_reported() if r.dataset == "imagenet"]
    assert len(mine) == 13  # the leaderboard reads every kdbench/reference/*_reported.csv
    assert {r.dataset for r in load_reported()} >= {"cifar100", "cifar100-streamlined", "imagenet"}


def test_imagenet_board_shows_the_papers_numbers_beside_pending_cells(plans: dict[str, Plan]) -> None:
    text = render_leaderboard(plans["imagenet"], [], load_reported())
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| ")}  # fmt: skip
    assert rows["Teacher"] == ["— · paper 73.31¹", "— · paper 76.13¹"]
    assert rows["Student"] == ["— · paper 69.76¹", "—"]
    assert rows["kd"] == ["— · paper 71.03²", "— · paper 70.50²"]  # MDistiller's re-run wins over torchdistill's
    assert rows["dkd"] == ["— · paper 71.70²", "— · paper 72.05²"]
    assert rows["dot"] == ["— · paper 71.72²", "— · paper 73.09²"]
    assert rows["crd"] == ["— · paper 70.93³", "—"]
    assert rows["reviewkd"] == ["— · paper 71.64³", "n/a"] and rows["ofd"] == ["n/a", "—"]
    assert "Published only" not in text
    assert not any(f"paper {number}" in text for number in UNBACKED)


def test_committed_boards_of_these_suites_are_the_current_plans(plans: dict[str, Plan]) -> None:
    boards = REPO / "leaderboards"
    for name in SUITES:
        path = boards / f"{name}{PLAN_SUFFIX}"
        assert path.exists(), f"render it: kdbench leaderboard --suite {name}"
        committed = json.loads(path.read_text(encoding="utf-8"))
        assert [r["run_id"] for r in committed["runs"]] == [run.run_id for run in plans[name]]
