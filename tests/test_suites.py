"""Suite files: parsing, validation errors that name the culprit, the shipped suites."""

from __future__ import annotations

from pathlib import Path

import pytest

import kdbench
from kdbench.errors import SuiteError
from kdbench.suites import load_suite_file, parse_suite

MINIMAL = {"name": "x", "description": "d", "dataset": "digits", "pairs": [{"teacher": "a", "student": "b"}]}


def test_minimal_suite_gets_the_cifar_recipe_and_three_seeds() -> None:
    suite = parse_suite(MINIMAL)
    assert suite.seeds == (0, 1, 2) and suite.distillers == ("*",)
    assert (suite.recipe.epochs, suite.recipe.batch_size, suite.recipe.lr) == (240, 64, 0.05)
    assert suite.recipe.lr_milestones == (150, 180, 210)


def test_lr_schedule_decays_after_each_milestone_as_the_reference_code() -> None:
    # RepDistiller/MDistiller: lr = base · 0.1^(#milestones < epoch) with 1-based epochs.
    recipe = kdbench.Recipe(lr_overrides={"ShuffleV1": 0.01})
    for epoch0 in range(240):
        epoch1 = epoch0 + 1
        steps = sum(epoch1 > m for m in (150, 180, 210))
        assert recipe.lr_at(epoch0, "resnet8") == pytest.approx(0.05 * 0.1**steps)
    assert recipe.lr_at(0, "ShuffleV1") == 0.01


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pairz": []}, "unknown key.*pairz"),
        ({"pairs": None}, "missing required key.*pairs"),
        ({"seeds": "0"}, "`seeds` must be a list"),
        ({"seeds": []}, "`seeds` must be a non-empty list of integers"),
        ({"recipe": {"epochz": 3}}, r"unknown key\(s\) in \[recipe\]: epochz"),
        ({"recipe": {"epochs": 0}}, "epochs must be a positive integer"),
        ({"pairs": [{"teacher": "a"}]}, r"pairs\[0\] needs `teacher` and `student`"),
        ({"epoch_rule": "median"}, "epoch_rule"),
        ({"distiller_params": {"kd": 3}}, "distiller_params"),
        ({"name": "../escaped"}, "`name` '../escaped' must be letters"),  # it names files in --out
        ({"name": "Bad Name/x"}, "`name` 'Bad Name/x' must be letters"),
        ({"name": ".hidden"}, "`name` '.hidden' must be letters"),
    ],
)
def test_malformed_suites_name_the_problem(change: dict, message: str) -> None:
    data = {**MINIMAL, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(SuiteError, match=message):
        parse_suite(data, source="bad.toml")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x\n', encoding="utf-8")
    with pytest.raises(SuiteError, match="broken.toml is not valid TOML"):
        load_suite_file(path)
    with pytest.raises(SuiteError, match="cannot read suite file .*missing.toml"):
        load_suite_file(tmp_path / "missing.toml")


def test_shipped_suites_are_registered_and_reference_registered_names(host: kdbench.PluginHost) -> None:
    assert {"smoke", "cifar100-similar", "cifar100-different", "cifar10"} <= set(host.suites.names())
    from kdbench.derived import parse_derived

    assert {"smoke-prune", "cifar100-prune", "cifar10-distill-prune"} <= set(host.suites.names())
    for suite in host.suites:
        host.datasets.get(suite.dataset)
        for pair in suite.pairs:
            host.models.get(pair.teacher)
            derived = parse_derived(pair.student)
            if derived is None:
                host.models.get(pair.student)
            else:
                assert derived.base == pair.teacher
                host.pruners.get(derived.pruner)
        for stage in suite.prune_after:
            host.pruners.get(stage["pruner"])


def test_cifar_suites_have_the_seed_tables_pairs(host: kdbench.PluginHost) -> None:
    similar = [(p.teacher, p.student) for p in host.suites.get("cifar100-similar").pairs]
    assert similar == [
        ("resnet56", "resnet20"),
        ("resnet110", "resnet32"),
        ("resnet110", "resnet20"),
        ("resnet32x4", "resnet8x4"),
        ("wrn_40_2", "wrn_16_2"),
        ("wrn_40_2", "wrn_40_1"),
        ("vgg13", "vgg8"),
    ]
    different = host.suites.get("cifar100-different")
    assert [(p.teacher, p.student) for p in different.pairs] == [
        ("vgg13", "MobileNetV2"),
        ("ResNet50", "MobileNetV2"),
        ("ResNet50", "vgg8"),
        ("resnet32x4", "ShuffleV1"),
        ("resnet32x4", "ShuffleV2"),
        ("wrn_40_2", "ShuffleV1"),
    ]
    assert {s: different.recipe.base_lr(s) for s in ("MobileNetV2", "ShuffleV1", "ShuffleV2", "vgg8")} == {
        "MobileNetV2": 0.01,
        "ShuffleV1": 0.01,
        "ShuffleV2": 0.01,
        "vgg8": 0.05,
    }


def test_pair_skips_and_method_recipes() -> None:
    data = {
        **MINIMAL,
        "recipe": {"lr_overrides": {"b": 0.01}},
        "method_recipes": {"mlkd": {"lr": 0.025}},
        "pairs": [{"teacher": "a", "student": "b", "skip": ["fsp"], "recipes": {"mlkd": {"epochs": 480}}}],
    }
    suite = parse_suite(data)
    (pair,) = suite.pairs
    assert pair.skip == ("fsp",)
    mlkd = suite.recipe_for(pair, "mlkd")
    assert (mlkd.epochs, mlkd.base_lr("b")) == (480, 0.025)  # an explicit method LR beats the student override
    assert suite.recipe_for(pair, "kd") is suite.recipe and suite.recipe.base_lr("b") == 0.01
    with pytest.raises(SuiteError, match=r"unknown key\(s\) in \[method_recipes.mlkd\]: epochz"):
        parse_suite({**data, "method_recipes": {"mlkd": {"epochz": 1}}})
    with pytest.raises(SuiteError, match=r"\[pairs\[0\].recipes.mlkd\] epochs must be a positive integer"):
        parse_suite({**data, "pairs": [{"teacher": "a", "student": "b", "recipes": {"mlkd": {"epochs": 0}}}]})
    with pytest.raises(SuiteError, match=r"pairs\[0\].skip"):
        parse_suite({**data, "pairs": [{"teacher": "a", "student": "b", "skip": "fsp"}]})


def test_cifar_plans_follow_the_per_pair_settings(host: kdbench.PluginHost) -> None:
    from kdbench.plan import TrainRun, plan_suite

    similar = plan_suite(host.suites.get("cifar100-similar"), host)

    def configs(method: str, pair: str) -> list[dict]:
        runs = [r for r in similar if isinstance(r, TrainRun) and r.pair and r.pair.label == pair]
        return [r.to_config() for r in runs if r.method == method]

    assert {c["params"]["beta"] for c in configs("dkd", "resnet56→resnet20")} == {2.0}
    assert {c["params"]["beta"] for c in configs("dkd", "wrn_40_2→wrn_16_2")} == {6.0}
    assert {c["params"]["beta"] for c in configs("dkd", "resnet32x4→resnet8x4")} == {8.0}
    assert configs("fsp", "wrn_40_2→wrn_40_1") == [] and len(configs("fsp", "resnet56→resnet20")) == 3
    assert {c["recipe"]["lr"] for c in configs("mlkd", "vgg13→vgg8")} == {0.025}
    different = plan_suite(host.suites.get("cifar100-different"), host)
    shuffle = [r.to_config() for r in different if r.pair and r.pair.student == "ShuffleV2"]
    assert {c["recipe"]["epochs"] for c in shuffle if c["distiller"] == "mlkd"} == {480}
    assert {c["recipe"]["lr"] for c in shuffle if c["distiller"] == "kd"} == {0.01}
    assert not [c for c in shuffle if c["distiller"] in ("fsp", "kdsvd")]
    # SDD pools each model's pooled map (ShuffleV2's is its head conv's output), so it runs on these pairs.
    assert {c["distiller"] for c in shuffle} >= {"sdd_kd", "sdd_dkd"}


def test_prune_after_defaults_are_seed_001s() -> None:
    suite = parse_suite({**MINIMAL, "prune_after": [{}, {"pruner": "l1_unstructured", "macs": 2.0}]})
    first, second = suite.prune_after
    assert (first["pruner"], first["ratio"], first["finetune_epochs"], first["finetune_lr"]) == ("l1", 0.3, 5, 0.01)
    assert "ratio" not in second and second["macs"] == 2.0
    with pytest.raises(SuiteError, match=r"prune_after\[0\] takes one of `ratio` or `macs`"):
        parse_suite({**MINIMAL, "prune_after": [{"ratio": 0.3, "macs": 2.0}]})
    with pytest.raises(SuiteError, match=r"prune_after\[0\] has unknown key\(s\) ratioo"):
        parse_suite({**MINIMAL, "prune_after": [{"ratioo": 0.3}]})


def test_the_streamlined_suite_plans_its_own_recipe(host) -> None:
    from kdbench.plan import TrainRun, plan_suite

    plan = plan_suite(host.suites.get("cifar100-streamlined"), host)
    trained = [run for run in plan if isinstance(run, TrainRun)]
    assert len(plan) == 221 and {run.recipe.strong_copy for run in trained} == {"streamlined"}
    teachers = [run for run in trained if run.role == "teacher"]
    assert {(r.recipe.epochs, r.recipe.lr, r.recipe.weight_decay) for r in teachers} == {(240, 0.1, 5e-4)}
    vanilla = [run for run in trained if run.role == "student" and run.method == "vanilla"]
    assert {(r.recipe.epochs, r.recipe.weight_decay) for r in vanilla} == {(240, 5e-4)}  # train.py's baselines
    skd = [run for run in trained if run.method == "skd"]
    assert {(r.recipe.epochs, r.recipe.lr, r.recipe.weight_decay) for r in skd} == {(250, 0.1, 4e-5)}
    assert all(run.to_config()["recipe"]["strong_copy"] == "streamlined" for run in skd)
    # Their SDD script's recipe and SDD_DKD's constants, its pyramid's 4×4-first order, their 0-based ramps.
    sdd = [run for run in trained if run.method == "sdd_dkd"]
    assert {(r.recipe.epochs, r.recipe.lr, r.recipe.weight_decay) for r in sdd} == {(240, 0.01, 5e-4)}
    assert {(r.params["ce_weight"], r.params["alpha"], r.params["beta"], tuple(r.params["scales"])) for r in sdd} == {
        (2.0, 3.0, 6.0, (4, 2, 1))
    }
    dkd = [run for run in trained if run.method == "dkd"]
    assert len(dkd) == 18 and all(r.params["logit_clamp"] == 10.0 and r.params["beta"] == 6.0 for r in dkd)
    ramped = [run for run in trained if run.method in ("dkd", "reviewkd", "sdd_dkd")]
    assert {run.params["warmup_first_epoch"] for run in ramped} == {0}
