"""Engine capabilities behind the distiller contract: phases, extra views, custom optimisers, randomness."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdbench
from kdbench import Batch, Distiller, DistillerSpec, Phase, hookimpl
from kdbench.errors import PluginError
from kdbench.plan import TrainRun, plan_suite
from kdbench.results import ResultsStore
from kdbench.runner import RunnerOptions, run_suite
from kdbench.suites import load_suite_file


class Phased(Distiller):
    """A connector trained alone for two epochs (student frozen, BN in eval), then CE + a noisy hint."""

    student_signals = frozenset({"logits", "embedding"})
    teacher_signals = frozenset({"logits", "embedding"})

    def __init__(self, student, teacher, context, init_epochs: int = 2):
        super().__init__()
        dims = context.student_shapes.embedding.shape[1], context.teacher_shapes.embedding.shape[1]
        self.connector = nn.Linear(*dims)
        self.init_epochs = init_epochs

    def phases(self):
        return (Phase("init", epochs=self.init_epochs, lr=0.01),)

    def phase_terms(self, phase, student, teacher, batch, progress):
        return {"hint": F.mse_loss(self.connector(student.embedding), teacher.embedding)}

    def loss_terms(self, student, teacher, batch, progress):
        # Randomness from the engine's generator: a resumed run must draw the same numbers.
        noise = torch.rand((), generator=batch.generator, device=batch.images.device)
        hint = F.mse_loss(self.connector(student.embedding), teacher.embedding)
        return {"ce": F.cross_entropy(student.logits, batch.targets), "hint": 0.1 * noise * hint}


class TwoViews(Distiller):
    """Sees every image twice (the second view flipped), made on the device in prepare_batch."""

    def __init__(self, student, teacher, context):
        super().__init__()
        self.seen: list[int] = []

    def prepare_batch(self, batch: Batch) -> Batch:
        images = torch.cat([batch.images, batch.images.flip(3)])
        return replace(batch, images=images, extras={"n": batch.images.shape[0]})

    def loss_terms(self, student, teacher, batch, progress):
        n = batch.extras["n"]
        self.seen.append(student.logits.shape[0] // n)
        both = torch.cat([batch.targets, batch.targets])
        return {"ce": F.cross_entropy(student.logits, both), "kd": F.mse_loss(student.logits, teacher.logits)}


class CountingSteps(Distiller):
    """Uses its own optimiser (plain SGD without momentum at half the LR) and its own step."""

    def __init__(self, student, teacher, context):
        super().__init__()
        self.steps = 0

    def make_optimizer(self, parameters, settings):
        return torch.optim.SGD(parameters, lr=settings.lr / 2)

    def step(self, terms, optimizer):
        self.steps += 1
        super().step(terms, optimizer)

    def loss_terms(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student.logits, batch.targets)}


class _Methods:
    @hookimpl
    def kdbench_register_distillers(self):
        spec = DistillerSpec
        return [
            spec(name="phased", builder=Phased, description="test", family="feature", defaults={"init_epochs": 2}),
            spec(name="two_views", builder=TwoViews, description="test"),
            spec(name="counting", builder=CountingSteps, description="test", needs_teacher=False),
        ]


class _StopAt:
    """An observer that raises after a given epoch of a given phase: an in-process stand-in for a kill."""

    def __init__(self, phase: str, epoch: int):
        self.phase, self.epoch = phase, epoch

    @hookimpl
    def kdbench_epoch_end(self, epoch):
        if (epoch.phase, epoch.epoch) == (self.phase, self.epoch):
            raise RuntimeError("stop here")


def _host(*extra):
    return kdbench.create_plugin_host(strict=True, plugins=[("methods", _Methods()), *extra])


def _suite(tiny_suite_file: Path, *distillers: str):
    return replace(load_suite_file(tiny_suite_file), distillers=distillers)


def _run(host, suite, tmp_path: Path, name: str) -> dict:
    with ResultsStore(tmp_path / f"{name}.sqlite") as store:
        run_suite(suite, host, store, RunnerOptions(work_root=tmp_path / name, latency_batch_sizes=(1,)))
        return {r["config"]["distiller"]: r for r in store.records()}


def test_phases_run_first_and_only_the_main_training_scores(tiny_suite_file: Path, tmp_path: Path) -> None:
    records = _run(_host(), _suite(tiny_suite_file, "phased"), tmp_path, "a")
    curve = records["phased"]["curve"]
    assert [(e["phase"], e["epoch"]) for e in curve] == [("init", 0), ("init", 1), ("main", 0), ("main", 1)]
    assert [e["lr"] for e in curve] == pytest.approx([0.01, 0.01, 0.05, 0.005])
    assert set(curve[0]["losses"]) == {"hint"} and set(curve[2]["losses"]) == {"ce", "hint"}
    # The student is not trained in the init phase: its accuracy stays that of its initialisation.
    assert curve[0]["test_top1"] == curve[1]["test_top1"]
    assert records["phased"]["best_top1"] == max(curve[2]["test_top1"], curve[3]["test_top1"])
    assert records["phased"]["profile"]["extra_params"] == 32 * 64 + 64  # Linear(32 → 64): student → teacher embedding


def test_resume_inside_and_across_phases_is_exact(tiny_suite_file: Path, tmp_path: Path) -> None:
    suite = _suite(tiny_suite_file, "phased")
    reference = _run(_host(), suite, tmp_path, "ref")["phased"]
    for phase, epoch in (("init", 0), ("init", 1), ("main", 0)):
        name = f"{phase}{epoch}"
        stopped = _run(_host(("stop", _StopAt(phase, epoch))), suite, tmp_path, name)["phased"]
        assert stopped["status"] == "failed" and "plugin 'stop' raised in kdbench_epoch_end" in stopped["error"]
        resumed = _run(_host(), suite, tmp_path, name)["phased"]
        assert resumed["curve"] == [
            {**e, "seconds": r["seconds"]} for e, r in zip(reference["curve"], resumed["curve"])
        ], name
        assert resumed["best_top1"] == reference["best_top1"]


def test_prepare_batch_views_reach_both_models(tiny_suite_file: Path, tmp_path: Path) -> None:
    host = _host()
    suite = _suite(tiny_suite_file, "two_views")
    records = _run(host, suite, tmp_path, "v")
    assert records["two_views"]["status"] == "finished"
    assert set(records["two_views"]["curve"][0]["losses"]) == {"ce", "kd"}


def test_a_method_may_bring_its_own_optimiser_and_step(tiny_suite_file: Path, tmp_path: Path) -> None:
    from kdbench.engine import EngineOptions, RunState

    host = _host()
    suite = _suite(tiny_suite_file, "counting")
    run = next(r for r in plan_suite(suite, host) if isinstance(r, TrainRun) and r.method == "counting")
    dataset = host.datasets.get("digits")
    student = kdbench.create_model(run.model, dataset.num_classes, host=host)
    builder = host.distillers.get("counting").builder
    factory = functools.partial(builder, **run.params)
    data = dataset.loader(tmp_path, False)
    state = RunState(student, factory, None, run.recipe, run.seed, dataset, data, EngineOptions())
    state.train_epoch(0)
    assert state.distiller.steps == 12  # 1,438 samples in batches of 128
    group = state.optimizer.param_groups[0]
    assert (group["momentum"], group["lr"]) == (0, 0.05)  # the engine sets the schedule's LR each epoch


def test_a_raising_observer_fails_the_run_by_name(tiny_suite_file: Path, tmp_path: Path) -> None:
    host = _host(("stop", _StopAt("main", 0)))
    records = _run(host, _suite(tiny_suite_file, "counting"), tmp_path, "s")
    assert records["counting"]["status"] == "failed"
    assert records["counting"]["error"].startswith("plugin 'stop' raised in kdbench_epoch_end")
    assert isinstance(PluginError("x"), kdbench.KdbenchError)


def test_chunks_forward_each_view_separately() -> None:
    from kdbench.engine import forward_signals
    from kdbench.features import FeatureCapture

    model = kdbench.create_model("digits_cnn_s").train()
    images = torch.randn(6, 1, 8, 8)
    with FeatureCapture(model, {"logits", "feats", "embedding"}) as capture:
        joint = forward_signals(capture, Batch(images, torch.zeros(6), torch.arange(6)))
        split = forward_signals(capture, Batch(images, torch.zeros(6), torch.arange(6), chunks=(3, 3)))
        first = capture(images[:3])
    # In train mode BatchNorm uses the statistics of what it sees: per view differs from joint.
    assert not torch.allclose(joint.logits, split.logits)
    torch.testing.assert_close(split.logits[:3], first.logits)
    assert split.embedding.shape == (6, 32) and [f.shape[0] for f in split.feats] == [6] * len(split.feats)


class _Recorder(Distiller):
    """Cross-entropy that records, per step, the samples' indices and which images are all black."""

    teacher_signals = frozenset()

    def __init__(self, student, teacher, context) -> None:
        super().__init__()
        self.indices: list[torch.Tensor] = []
        self.black: list[torch.Tensor] = []
        self.black_value = ((0 - torch.tensor(context.mean)) / torch.tensor(context.std)).view(1, -1, 1, 1)

    def loss_terms(self, student, teacher, batch, progress):
        self.indices.append(batch.indices.clone())
        self.black.append((batch.images - self.black_value).abs().amax(dim=(1, 2, 3)) < 1e-6)
        return {"ce": F.cross_entropy(student.logits, batch.targets)}


def test_a_strong_copy_trains_every_image_twice_per_epoch_once_with_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kdbench import augment
    from kdbench.engine import EngineOptions, RunState
    from kdbench.testing import synthetic_dataset_spec, tiny_model

    blackout = augment.RandAugmentPolicy("blackout", (("Brightness", 0.0, 0.0),), num_ops=1, cutout_max=0.0)
    monkeypatch.setitem(augment.POLICIES, "blackout", blackout)
    dataset = synthetic_dataset_spec(10, train=40, test=8)
    data = dataset.loader(None, False)
    recipe = kdbench.Recipe(epochs=1, batch_size=16, lr_milestones=(), strong_copy="blackout")
    torch.manual_seed(0)
    state = RunState(tiny_model("tiny_student"), _Recorder, None, recipe, 0, dataset, data, EngineOptions())
    state.train_epoch(0)
    assert len(state.distiller.indices) == 5  # 80 samples in batches of 16
    indices, black = torch.cat(state.distiller.indices), torch.cat(state.distiller.black)
    assert torch.bincount(indices, minlength=40).tolist() == [2] * 40  # every image twice
    assert torch.bincount(indices[black], minlength=40).tolist() == [1] * 40  # once through the policy
    assert not (data.train_images == 0).all(dim=(1, 2, 3)).any()  # no image is black by itself
    weak = RunState(tiny_model("tiny_student"), _Recorder, None, kdbench.Recipe(epochs=1, batch_size=16,
                    lr_milestones=()), 0, dataset, data, EngineOptions())  # fmt: skip
    weak.train_epoch(0)
    assert len(weak.distiller.indices) == 3 and not torch.cat(weak.distiller.black).any()
    with pytest.raises(kdbench.KdbenchError, match="strong_copy 'nope' is not an augmentation policy; known: "):
        RunState(tiny_model("tiny_student"), _Recorder, None, replace(recipe, strong_copy="nope"), 0, dataset,
                 data, EngineOptions()).train_epoch(0)  # fmt: skip
