"""The plugin kit (kdbench.testing): its parts, every first-party model/pruner/dataset, and broken plugins caught.

The distillers are checked in ``test_distiller_contract.py``. The last test registers one plugin that
implements every hook, runs a suite on the kit's tiny models and synthetic data, and checks what each hook
received.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import random
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kdbench_plugins.pruners.magnitude import MagnitudePruner
from torch import nn

import kdbench
from kdbench import DatasetSpec, Distiller, DistillerSpec, ImageData, KdbenchError, ModelSpec, PrunerSpec, hookimpl
from kdbench._api import default_host
from kdbench.features import FeatureCapture
from kdbench.losses import kd_loss
from kdbench.pruning import Pruner
from kdbench.records import EpochRecord, RunInfo, RunResult
from kdbench.results import ResultsStore
from kdbench.runner import RunnerOptions, run_suite
from kdbench.specs import PairSpec, Recipe, SuiteSpec, TeacherSpec
from kdbench.testing import (
    TinyNet,
    check_dataset,
    check_distiller,
    check_model,
    check_pruner,
    synthetic_dataset_spec,
    synthetic_image_data,
    tiny_model,
    tiny_model_specs,
)

# ---------------------------------------------------------------------------------------------------------------------
# The kit's own parts


def test_tiny_models_are_cifar_shaped_with_taps_and_different_widths() -> None:
    teacher, student = tiny_model("tiny_teacher", num_classes=7), tiny_model("tiny_student", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    with FeatureCapture(teacher, {"feats", "embedding"}) as t, FeatureCapture(student, {"feats", "embedding"}) as s:
        t_signals, s_signals = t(x), s(x)
    assert t_signals.logits.shape == s_signals.logits.shape == (2, 7)
    assert [f.shape[1] for f in t_signals.feats] == [16, 16, 32, 64]
    assert [f.shape[1] for f in s_signals.feats] == [8, 8, 16, 32]
    assert [f.shape[-1] for f in s_signals.feats] == [32, 32, 16, 8]
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) < 100_000
    specs = {spec.name: spec for spec in tiny_model_specs()}
    assert set(specs) == {"tiny_teacher", "tiny_student"}
    assert specs["tiny_student"].builder(num_classes=3)(x).shape == (2, 3)
    with pytest.raises(KdbenchError, match="unknown tiny model 'tiny'"):
        tiny_model("tiny")


def test_synthetic_data_is_balanced_seeded_and_learnable() -> None:
    data = synthetic_image_data(num_classes=4, train=40, test=12, size=16, seed=3)
    assert data.train_images.shape == (40, 3, 16, 16) and data.test_images.shape == (12, 3, 16, 16)
    assert torch.bincount(data.train_labels).tolist() == [10, 10, 10, 10]
    again = synthetic_image_data(num_classes=4, train=40, test=12, size=16, seed=3)
    assert torch.equal(again.train_images, data.train_images) and torch.equal(again.test_labels, data.test_labels)
    other = synthetic_image_data(num_classes=4, train=40, test=12, size=16, seed=4)
    assert not torch.equal(other.train_images, data.train_images)
    # Learnable: the nearest class mean of the train images labels the test images far above chance.
    means = torch.stack([data.train_images[data.train_labels == c].float().mean(0) for c in range(4)])
    distances = ((data.test_images.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (distances.argmin(1) == data.test_labels).float().mean() > 0.9
    spec = synthetic_dataset_spec(num_classes=4, train=40, test=12, size=16, seed=3)
    assert (spec.name, spec.num_classes, spec.image_size) == ("synthetic", 4, (3, 16, 16))
    assert torch.equal(spec.loader(Path("."), False).train_images, data.train_images)


def test_the_kits_own_specs_pass_its_checks() -> None:
    for spec in tiny_model_specs():
        check_model(spec)
    check_dataset(synthetic_dataset_spec())


# ---------------------------------------------------------------------------------------------------------------------
# Every first-party model, pruner and dataset


@pytest.mark.parametrize("name", kdbench.list_models())
def test_first_party_models_pass(host: kdbench.PluginHost, name: str) -> None:
    check_model(name, host=host)


@pytest.mark.parametrize("name", default_host().pruners.names())
def test_first_party_pruners_pass(host: kdbench.PluginHost, name: str) -> None:
    check_pruner(name, host=host)


def test_digits_passes(host: kdbench.PluginHost) -> None:
    check_dataset("digits", host=host)


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_cifar_without_files_gives_the_clear_error(host: kdbench.PluginHost, name: str, tmp_path: Path) -> None:
    check_dataset(name, host=host)  # an empty root must give a KdbenchError naming the expected path
    with pytest.raises(AssertionError, match=rf"dataset '{name}'.*DataNotFoundError: CIFAR-10+ not found"):
        check_dataset(name, host=host, root=tmp_path)


def test_cifar100_files_on_disk_pass(host: kdbench.PluginHost, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 10)):
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), "fine_labels": list(range(count))}
        (folder / split).write_bytes(pickle.dumps(entry))
    check_dataset("cifar100", host=host, root=tmp_path)
    entry["fine_labels"] = [100] * 10  # out of range: the loader's own validation names the file
    (folder / "test").write_bytes(pickle.dumps(entry))
    with pytest.raises(AssertionError, match="labels outside 0..99"):
        check_dataset("cifar100", host=host, root=tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Broken distillers are caught


def test_spec_defaults_come_from_the_builder_or_must_equal_it() -> None:
    assert dict(_spec(WithWarmup).defaults) == {"warmup": 5}  # left out: the builder's signature
    assert dict(_spec(WithWarmup, defaults={"warmup": 5}).defaults) == {"warmup": 5}
    with pytest.raises(ValueError, match=r"default warmup=3 in the spec differs from the builder's warmup=5"):
        _spec(WithWarmup, defaults={"warmup": 3})
    with pytest.raises(ValueError, match="warmup=5.0 in the spec differs"):  # 5.0 hashes unlike 5 in run ids
        _spec(WithWarmup, defaults={"warmup": 5.0})
    variant = _spec(functools.partial(WithWarmup, warmup=3), name="variant")  # a variant binds its own value
    assert dict(variant.defaults) == {"warmup": 3} and variant.accepted_params == {"warmup"}


def _spec(builder: type, **fields) -> DistillerSpec:
    name = f"broken_{getattr(builder, '__name__', 'partial').lower()}"
    values = {"name": name, "description": "a broken method", "citation": "test"}
    return DistillerSpec(builder=builder, **{**values, **fields})


class _KD(Distiller):
    def __init__(self, student, teacher, context) -> None:
        super().__init__()

    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits, batch.targets), "kd": kd_loss(student.logits, teacher.logits, 4)}


class DetachedStudent(_KD):
    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        self.scale = nn.Parameter(torch.ones(()))

    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits.detach() * self.scale, batch.targets)}


class TrainsTeacher(_KD):
    """Runs the teacher again itself, in train mode: its BatchNorm statistics move."""

    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        self._teacher = (teacher,)

    def loss_terms(self, student, teacher, batch, progress):
        with torch.no_grad():
            logits = self._teacher[0].train()(batch.images)
        return {"kd": kd_loss(student.logits, logits, 4), "ce": F.cross_entropy(student.logits, batch.targets)}


class RegistersTeacher(_KD):
    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        self.teacher = teacher


class HiddenConnector(_KD):
    student_signals = frozenset({"logits", "embedding"})

    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        self.connectors = [nn.Linear(context.student_shapes.embedding.shape[1], 10)]  # a plain list: unregistered

    def loss_terms(self, student, teacher, batch, progress):
        terms = super().loss_terms(student, teacher, batch, progress)
        return {**terms, "aux": F.cross_entropy(self.connectors[0](student.embedding), batch.targets)}


class ForgetsStudent(DetachedStudent):
    """Its own optimiser leaves the student out (the risk of overriding make_optimizer, as DOT does)."""

    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits * self.scale, batch.targets)}

    def make_optimizer(self, parameters, settings):
        return torch.optim.SGD([self.scale], lr=settings.lr)


class NumpyNoise(_KD):
    def loss_terms(self, student, teacher, batch, progress):
        return {"kd": float(np.random.rand()) * kd_loss(student.logits, teacher.logits, 4)}


class GlobalTorchNoise(_KD):
    def loss_terms(self, student, teacher, batch, progress):
        noise = torch.rand(())  # the global generator, not batch.generator: a resumed run draws other numbers
        return {"ce": (1 + noise) * F.cross_entropy(student.logits, batch.targets)}


class TeacherOnlyTerm(_KD):
    """A typo computes the soft-target term from the teacher alone; CE still trains the student."""

    def loss_terms(self, student, teacher, batch, progress):
        return {
            "ce": F.cross_entropy(student.logits, batch.targets),
            "kd": kd_loss(teacher.logits, teacher.logits.flip(0), 4),
        }


class AllDetached(_KD):
    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits.detach(), batch.targets)}


class ReadsUndeclaredFeats(_KD):
    def loss_terms(self, student, teacher, batch, progress):  # only logits are declared (the default)
        return {"ce": F.cross_entropy(student.logits, batch.targets), "hint": student.feats[-1].pow(2).mean()}


class WithWarmup(_KD):
    def __init__(self, student, teacher, context, warmup: int = 5) -> None:
        super().__init__(student, teacher, context)
        self.warmup = warmup


class NaNLoss(_KD):
    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits, batch.targets) * float("nan")}


class CrashesOnWidths(_KD):
    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        s, t = context.student_shapes.embedding.shape[1], context.teacher_shapes.embedding.shape[1]
        torch.zeros(2, s) @ torch.zeros(t, 2)  # a shape error instead of a refusal


@pytest.mark.parametrize(
    ("builder", "fields", "message"),
    [
        (DetachedStudent, {}, r"the loss does not reach the student: parameters \['conv1.weight'"),
        (ForgetsStudent, {}, r"student parameters \['conv1.weight'.* did not change: is the optimiser given them"),
        (TrainsTeacher, {}, r"the teacher must stay frozen, yet \[.*'bn1.running_mean'"),
        (RegistersTeacher, {}, "the student or teacher is registered as a submodule"),
        (HiddenConnector, {}, r"trains tensors of shapes \[.*\(10, 32\).*\] that are neither the student's nor"),
        (NumpyNoise, {}, "the same seed must give the same losses"),
        (GlobalTorchNoise, {}, "a resumed run must repeat the losses exactly"),
        (NaNLoss, {}, "main training: loss term 'ce' is not finite"),
        (CrashesOnWidths, {}, "tiny_teacher→tiny_student .* raised RuntimeError.* refused with a kdbench.KdbenchError"),
        (_KD, {"defaults": {"weight": torch.tensor(1.0)}}, "spec.defaults must be JSON data"),
        (_KD, {"citation": ""}, "needs a `citation`"),
        (_KD, {"defaults": {"weight": 1.0}}, r"spec.defaults name parameters the builder does not take: \['weight'\]"),
        (WithWarmup, {"defaults": {}}, r"the builder takes \['warmup'\], missing from spec.defaults"),
        (AllDetached, {}, r"AllDetached: none of the loss terms \['ce'\] depends on a trained parameter"),
        (ReadsUndeclaredFeats, {}, r"signal 'feats' was not captured: add it to the distiller's student_signals"),
        (TeacherOnlyTerm, {}, r"loss term\(s\) \['kd'\] do not depend on the student or the method's own"),
    ],
)
def test_broken_distillers_are_caught(builder: type, fields: dict, message: str) -> None:
    spec = _spec(builder, **fields)
    with pytest.raises(AssertionError, match=rf"distiller '{spec.name}'.*{message}"):
        check_distiller(spec)


def test_an_unknown_family_is_refused_when_the_spec_is_made() -> None:
    with pytest.raises(ValueError, match="family must be one of baseline, logit, feature, got 'magic'"):
        _spec(_KD, family="magic")


def test_a_sound_distiller_passes_and_params_reach_it() -> None:
    check_distiller(_spec(_KD))
    with pytest.raises(AssertionError, match=r"params \['tau'\] are not parameters of the method; it takes \[\]"):
        check_distiller(_spec(_KD), params={"tau": 2.0})


class RefusesWidths(_KD):
    teachers: ClassVar[list[str | None]] = []

    def __init__(self, student, teacher, context) -> None:
        super().__init__(student, teacher, context)
        RefusesWidths.teachers.append(context.teacher_name)
        if context.student_shapes.feats[-1].shape != context.teacher_shapes.feats[-1].shape:
            raise KdbenchError("needs equal widths")


def test_a_method_refusing_different_widths_is_checked_on_equal_widths() -> None:
    RefusesWidths.teachers.clear()
    check_distiller(_spec(RefusesWidths))
    assert RefusesWidths.teachers[0] == "tiny_teacher" and set(RefusesWidths.teachers[1:]) == {"tiny_student"}


def test_names_are_looked_up_among_installed_plugins(host: kdbench.PluginHost) -> None:
    with pytest.raises(AssertionError, match="no distiller named 'kdd' is registered.*entry point in group 'kdbench'"):
        check_distiller("kdd", host=host)
    with pytest.raises(AssertionError, match="no model named 'resnet9'"):
        check_model("resnet9", host=host)
    disabled = kdbench.create_plugin_host(disabled=["dkd"])
    with pytest.raises(AssertionError, match="plugin 'dkd' is installed but disabled"):
        check_distiller("dkd", host=disabled)


# ---------------------------------------------------------------------------------------------------------------------
# Broken models, pruners and datasets are caught


def _in_place_stage_relus(num_classes: int = 10) -> nn.Module:
    model = tiny_model("tiny_student", num_classes)
    for stage in (model.stage1, model.stage2, model.stage3):
        stage.relu_out.inplace = True
    return model


def _model_spec(builder, name: str = "broken_model") -> ModelSpec:
    return ModelSpec(name=name, builder=builder, description="a broken model", citation="test")


def _with_taps(**changes):
    def build(num_classes: int = 10) -> nn.Module:
        model = tiny_model("tiny_student", num_classes)
        model.feature_taps = dataclasses.replace(model.feature_taps, **changes)
        return model

    return build


class _Dropout(TinyNet):
    """Dropout left on in eval mode: two passes of one input disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.relu(self.bn1(self.conv1(x))), p=0.5, training=True)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (lambda num_classes=10: tiny_model("tiny_student", 7), r"must give logits of shape \(2, 10\), got \(2, 7\)"),
        (_with_taps(stages=("relu", "stage9.relu_out")), r"modules the model does not have: \['stage9.relu_out'\]"),
        (_with_taps(classifier="avgpool"), "'avgpool' must be the module whose output is the logits"),
        (
            _with_taps(bn_before_relu=("bn1", "stage2.bn2", "stage2.bn2", "stage3.bn2")),
            r"bn_before_relu\[1\] .* 8 channels",
        ),
        (lambda num_classes=10: nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)), "needs a `feature_taps`"),
        (lambda num_classes=10: _Dropout((4, 4, 4, 4), num_classes), "two eval-mode forward passes"),
        (
            lambda num_classes=10: tiny_model("tiny_student"),
            r"builder\(num_classes=13\) gives outputs of shape \(2, 10\)",
        ),
        (_in_place_stage_relus, r"stage tap 1 \('stage1.relu_out'\): the captured pre-activation equals"),
        (
            _with_taps(pooled_map="stage3.relu_out"),
            r"embedding must be the spatial mean of pooled_map 'stage3.relu_out'",
        ),
        (_with_taps(pooled_map="head"), r"modules the model does not have: \['head'\]"),
    ],
)
def test_broken_models_are_caught(builder, message: str) -> None:
    with pytest.raises(AssertionError, match=rf"model 'broken_model'.*{message}"):
        check_model(_model_spec(builder))


class _Idle(Pruner):
    def prune(self, model, example_inputs, settings, calibration=None):
        return model


class _IdleUnstructured(_Idle):
    structured = False


class _Frozen(MagnitudePruner):
    """Prunes, but hands back a model whose weights can no longer train."""

    def prune(self, model, example_inputs, settings, calibration=None):
        pruned = super().prune(model, example_inputs, settings, calibration)
        for parameter in pruned.parameters():
            parameter.requires_grad_(False)
        return pruned


class _Unseeded(MagnitudePruner):
    """Ties broken by Python's global RNG: another model each time."""

    def importance(self):
        base = super().importance()

        def scores(group):
            values = base(group)
            return values + torch.tensor([random.random() for _ in range(len(values))])

        return scores


@pytest.mark.parametrize(
    ("builder", "structured", "message"),
    [
        (_Idle, True, "structured pruning kept every parameter"),
        (_IdleUnstructured, False, "sparsity 0.000 falls short of the ratio 0.5"),
        (_IdleUnstructured, True, "spec.structured=True but the pruner's class says structured=False"),
        (_Unseeded, True, "pruning the same model twice gave different results"),
        (_Frozen, True, "the pruned model must train one step"),
        (lambda: object(), True, "the builder must return a kdbench.pruning.Pruner"),
    ],
)
def test_broken_pruners_are_caught(builder, structured: bool, message: str) -> None:
    spec = PrunerSpec(name="broken_pruner", builder=builder, description="x", citation="test", structured=structured)
    with pytest.raises(AssertionError, match=rf"pruner 'broken_pruner'.*{message}"):
        check_pruner(spec)


def _dataset(loader, **fields) -> DatasetSpec:
    spec = synthetic_dataset_spec(num_classes=5, train=20, test=10)
    return dataclasses.replace(spec, name="broken_data", loader=loader, **fields)


def _shifted_labels(root: Path, download: bool) -> ImageData:
    data = synthetic_image_data(num_classes=5, train=20, test=10)
    return dataclasses.replace(data, test_labels=data.test_labels + 1)


def _file_reader(root: Path, download: bool) -> ImageData:
    return torch.load(root / "data.pt")


def _vague_error(root: Path, download: bool) -> ImageData:
    raise KdbenchError("data missing")


@pytest.mark.parametrize(
    ("loader", "fields", "message"),
    [
        (_shifted_labels, {}, "test labels span 1..5, outside 0..4"),
        (_file_reader, {}, "must raise a kdbench.KdbenchError naming the missing path, not FileNotFoundError"),
        (_vague_error, {}, "must name where the data was expected"),
        (synthetic_dataset_spec(num_classes=5).loader, {"image_size": (3, 28, 28)}, "image_size says"),
        (synthetic_dataset_spec(num_classes=5).loader, {"mean": (0.5,)}, "one value per channel"),
    ],
)
def test_broken_datasets_are_caught(loader, fields: dict, message: str) -> None:
    with pytest.raises(AssertionError, match=rf"dataset 'broken_data'.*{message}"):
        check_dataset(_dataset(loader, **fields))


# ---------------------------------------------------------------------------------------------------------------------
# One plugin implementing every hook, end to end on the kit's parts


class _KitUser:
    """Registers the kit's parts, a teacher checkpoint and a suite; records the lifecycle hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, RunInfo, object]] = []

    @hookimpl
    def kdbench_register_models(self) -> list[ModelSpec]:
        return tiny_model_specs()

    @hookimpl
    def kdbench_register_datasets(self) -> list[DatasetSpec]:
        return [synthetic_dataset_spec(num_classes=4, train=48, test=16)]

    @hookimpl
    def kdbench_register_distillers(self) -> list[DistillerSpec]:
        return [_spec(_KD, name="kit_kd", family="logit")]

    @hookimpl
    def kdbench_register_pruners(self) -> list[PrunerSpec]:
        return [PrunerSpec(name="kit_l1", builder=MagnitudePruner, description="L1", citation="Li et al. 2017")]

    @hookimpl
    def kdbench_register_teachers(self) -> list[TeacherSpec]:
        return [TeacherSpec(name="kit_teacher", model="tiny_teacher", dataset="synthetic", path="kit/teacher.pt")]

    @hookimpl
    def kdbench_register_suites(self) -> list[SuiteSpec]:
        recipe = Recipe(epochs=2, batch_size=16, lr=0.05, lr_milestones=(1,), eval_batch_size=64)
        return [
            SuiteSpec(
                name="kit_suite",
                description="the kit end to end",
                dataset="synthetic",
                pairs=(PairSpec("tiny_teacher", "tiny_student"),),
                distillers=("vanilla", "kit_kd"),
                seeds=(0,),
                recipe=recipe,
                teachers={"tiny_teacher": "kit_teacher"},
            )
        ]

    @hookimpl
    def kdbench_run_start(self, run: RunInfo) -> None:
        self.calls.append(("start", run, None))

    @hookimpl
    def kdbench_epoch_end(self, run: RunInfo, epoch: EpochRecord) -> None:
        self.calls.append(("epoch", run, epoch))

    @hookimpl
    def kdbench_run_end(self, run: RunInfo, result: RunResult) -> None:
        self.calls.append(("end", run, result))


def test_every_hook_reaches_a_plugin_end_to_end(tmp_path: Path) -> None:
    plugin = _KitUser()
    host = kdbench.create_plugin_host(strict=True, plugins=[("kit_user", plugin)])
    check_model("tiny_teacher", host=host)
    check_dataset("synthetic", host=host)
    check_pruner("kit_l1", host=host)
    check_distiller("kit_kd", host=host)
    teacher_file = tmp_path / "teachers" / "kit" / "teacher.pt"
    teacher_file.parent.mkdir(parents=True)
    torch.save({"model": tiny_model("tiny_teacher", num_classes=4).state_dict()}, teacher_file)
    options = RunnerOptions(work_root=tmp_path / "runs", teacher_root=tmp_path / "teachers", latency_batch_sizes=(1,))
    with ResultsStore(tmp_path / "results.sqlite") as store:
        report = run_suite(host.suites.get("kit_suite"), host, store, options)
        records = {r["run_id"]: r for r in store.records()}
    assert not report.failed and len(report.finished) == 3
    by_run: dict[str, list[tuple[str, object]]] = {}
    for hook, run, payload in plugin.calls:
        assert run.work_dir == options.work_root / run.run_id and run.device
        by_run.setdefault(run.run_id, []).append((hook, payload))
    assert set(by_run) == set(records)
    for run_id, calls in by_run.items():
        record, (hook, result) = records[run_id], calls[-1]
        assert hook == "end" and isinstance(result, RunResult) and result.status == "finished"
        assert result.best_top1 == record["best_top1"]
        if record["config"].get("evaluate_checkpoint") == "kit_teacher":  # a checkpoint is evaluated, not trained
            assert len(calls) == 1
            continue
        epochs = [payload for hook, payload in calls[1:-1]]
        assert [hook for hook, _ in calls] == ["start", "epoch", "epoch", "end"]
        assert [(e.phase, e.epoch) for e in epochs] == [("main", 0), ("main", 1)]
        assert tuple(epochs) == result.curve and [e.test_top1 for e in epochs] == [
            e["test_top1"] for e in record["curve"]
        ]
        assert [e.lr for e in epochs] == pytest.approx([0.05, 0.005])
    kd_run = next(r for r in records.values() if r["config"]["distiller"] == "kit_kd")
    assert kd_run["config"]["teacher"] == {"arch": "tiny_teacher", "checkpoint": "kit_teacher"}
    assert set(kd_run["curve"][0]["losses"]) == {"ce", "kd"}
