"""The distiller contract, checked for every registered distiller (timm-style: a new method is tested on arrival).

``run_contract(host, name)`` is importable so that a method can be checked
before it is an installed entry point. It uses the real engine state on a tiny
CIFAR-shaped problem: teacher resnet8x4 (frozen, eval) → student resnet8 (different
widths); a method that refuses that pair with a :class:`KdbenchError` (FSP needs
equal channels) is checked on resnet14 → resnet8 (equal widths) instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import kdbench
from kdbench import AugmentSpec, DatasetSpec, ImageData, KdbenchError
from kdbench.augment import normalize
from kdbench.distiller import Batch, Progress
from kdbench.engine import EngineOptions, TrainedModel, _atomic_save, _Run
from kdbench.features import SIGNALS, FeatureCapture
from kdbench.runner import _config
from kdbench.specs import Recipe, SuiteSpec

PAIRS = (("resnet8x4", "resnet8"), ("resnet14", "resnet8"))
NUM_TRAIN, NUM_TEST, BATCH = 24, 8, 8


def _tiny_cifar() -> tuple[DatasetSpec, ImageData]:
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)

    data = ImageData(
        images(NUM_TRAIN),
        torch.arange(NUM_TRAIN) % 5,
        images(NUM_TEST),
        torch.arange(NUM_TEST) % 5,
    )
    spec = DatasetSpec(
        name="tiny_cifar",
        loader=lambda root, download: data,
        description="random CIFAR-shaped images for the contract test",
        num_classes=100,
        image_size=(3, 32, 32),
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        augment=AugmentSpec(pad=4, flip=True),
    )
    return spec, data


def _state(host: kdbench.PluginHost, name: str, pair: tuple[str, str]) -> _Run:
    teacher_name, student_name = pair
    spec, data = _tiny_cifar()
    suite = SuiteSpec(name="contract", description="", dataset=spec.name, pairs=())
    recipe = Recipe(epochs=3, batch_size=BATCH, lr=0.05, lr_milestones=())
    config = _config(suite, student_name, name, dict(host.distillers.get(name).defaults), 0, recipe)
    torch.manual_seed(123)
    teacher = kdbench.create_model(teacher_name, host=host).eval().requires_grad_(False)
    return _Run(config, host, spec, data, TrainedModel(teacher_name, teacher), EngineOptions())


def _pair_for(host: kdbench.PluginHost, name: str) -> tuple[str, str]:
    refusals = []
    for pair in PAIRS:
        try:
            _state(host, name, pair)
        except KdbenchError as exc:
            refusals.append(f"{pair}: {exc}")
            continue
        return pair
    raise AssertionError(f"{name} runs on none of the contract pairs: {refusals}")


def _fixed_batch(state: _Run) -> Batch:
    raw = state.train_images[:BATCH]
    images = normalize(raw, state.dataset.mean, state.dataset.std)
    return Batch(images, state.train_labels[:BATCH], torch.arange(BATCH), raw=raw, generator=None)


def _forward_terms(state: _Run, batch: Batch, generator_seed: int) -> dict[str, torch.Tensor]:
    batch = Batch(batch.images, batch.targets, batch.indices, batch.raw, torch.Generator().manual_seed(generator_seed))
    batch = state.distiller.prepare_batch(batch)
    assert state.teacher is not None
    with FeatureCapture(state.teacher.module, state.distiller.teacher_signals or {"logits"}) as capture:
        with torch.no_grad():
            teacher = capture(batch.images)
    with FeatureCapture(state.student, state.distiller.student_signals) as capture:
        student = capture(batch.images)
    progress = Progress(epoch=0, epochs=3, step=0, steps_per_epoch=3)
    return state.distiller.loss_terms(student, teacher, batch, progress)


def _check_spec(spec: kdbench.DistillerSpec) -> None:
    assert spec.description and spec.citation, "a distiller names what it is and where it comes from"
    assert spec.family in ("baseline", "logit", "feature")
    json.dumps(dict(spec.defaults))  # run ids hash the parameters: they must be JSON data


def _check_loss_decreases_and_gradients(state: _Run) -> None:
    batch = _fixed_batch(state)
    state.student.train()
    optimizer = state._use_optimizer(state.segments[-1])
    losses = []
    # Enough steps for methods with memory banks (CRD), whose loss first rises while the banks fill.
    for _ in range(16):
        terms = _forward_terms(state, batch, generator_seed=7)
        assert terms and all(t.dim() == 0 for t in terms.values()), "loss terms are named scalars"
        total = float(sum(t.detach().float() for t in terms.values()))
        assert math.isfinite(total), terms
        losses.append(total)
        state.distiller.step(terms, optimizer)
    assert losses[-1] < losses[0], f"loss did not decrease on a fixed batch: {losses}"
    assert state.teacher is not None
    assert all(p.grad is None and not p.requires_grad for p in state.teacher.module.parameters())
    first_conv = next(p for p in state.student.parameters() if p.dim() == 4)
    assert first_conv.grad is not None and torch.isfinite(first_conv.grad).all()
    for name, parameter in state.distiller.named_parameters():
        if parameter.requires_grad and any(parameter is p for p in state.distiller.main_parameters()):
            assert parameter.grad is not None, f"the method's own parameter {name} receives no gradient"


def _check_parts_are_its_own(state: _Run) -> None:
    assert state.teacher is not None
    models = {id(p) for p in (*state.student.parameters(), *state.teacher.module.parameters())}
    own = list(state.distiller.parameters())
    assert not any(id(p) in models for p in own), "never register the student or teacher as submodules"
    assert state.distiller.extra_parameter_count() == sum(p.numel() for p in own if p.requires_grad)
    assert state.distiller.student_signals <= SIGNALS and state.distiller.teacher_signals <= SIGNALS


def _check_phases(state: _Run) -> None:
    phases = tuple(state.distiller.phases())
    if not phases:
        return
    phase = phases[0]
    trained = list(state.distiller.phase_parameters(phase, state.student))
    assert trained, f"phase {phase.name!r} trains nothing"
    before = [p.detach().clone() for p in trained]
    running = {k: v.clone() for k, v in state.student.state_dict().items() if "running_mean" in k}
    sums = state.train_epoch(0)
    assert all(math.isfinite(float(v)) for v in sums.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, trained)), f"phase {phase.name!r} changed nothing"
    if phase.student_mode == "eval":
        for key, value in running.items():
            assert torch.equal(value, state.student.state_dict()[key]), f"BN statistics moved in eval phase: {key}"


def _check_resume_is_exact(host: kdbench.PluginHost, name: str, pair: tuple[str, str], tmp_path: Path) -> None:
    first = _state(host, name, pair)
    main_start = first.segments[-1].start
    resume_at = main_start if main_start else 1
    first.train_epoch(0)
    checkpoint = tmp_path / f"{name}.pt"
    _atomic_save(first.state(resume_at - 1), checkpoint)
    expected = first.train_epoch(resume_at)
    second = _state(host, name, pair)
    second.resume(checkpoint)
    assert second.start_epoch == resume_at
    got = second.train_epoch(resume_at)
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in expected.items()}
    for (key, a), b in zip(first.student.state_dict().items(), second.student.state_dict().values()):
        assert torch.equal(a, b), key
    for (key, a), b in zip(first.distiller.state_dict().items(), second.distiller.state_dict().values()):
        assert torch.equal(a, b), key


def run_contract(host: kdbench.PluginHost, name: str, tmp_path: Path | None = None) -> None:
    """Check distiller ``name`` against the whole contract; raises AssertionError on the first breach."""
    import tempfile

    _check_spec(host.distillers.get(name))
    pair = _pair_for(host, name)
    state = _state(host, name, pair)
    _check_parts_are_its_own(state)
    clone = _state(host, name, pair)
    clone.distiller.load_state_dict(state.distiller.state_dict(), strict=True)
    _check_phases(_state(host, name, pair))
    _check_loss_decreases_and_gradients(state)
    with tempfile.TemporaryDirectory() as scratch:
        _check_resume_is_exact(host, name, pair, tmp_path or Path(scratch))


DISTILLERS = kdbench.list_distillers()


@pytest.mark.parametrize("name", DISTILLERS)
def test_distiller_contract(host: kdbench.PluginHost, name: str, tmp_path: Path) -> None:
    run_contract(host, name, tmp_path)


def test_every_distiller_is_checked() -> None:
    assert {"vanilla", "kd"} <= set(DISTILLERS)
