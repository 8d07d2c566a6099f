"""Loss functions of the first-party distillers against independent derivations."""

from __future__ import annotations

import math

import pytest
import torch

import kdbench
from kdbench import Batch, Progress, Signals
from kdbench.losses import kd_loss


def _kd_reference(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T² · mean_n Σ_c p_t log(p_t / p_s), written with plain Python floats."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.0, 10.0])
def test_kd_loss_matches_loop_derivation(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    expected = _kd_reference(student.tolist(), teacher.tolist(), temperature)
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(logits, logits.flip(1), 4.0).item() > 0


def test_kd_loss_two_class_closed_form() -> None:
    # Teacher logits (0, 0) → p_t = (½, ½); student (ln 3 · T, 0) → p_s = (¾, ¼) at temperature T.
    temperature = 2.0
    student = torch.tensor([[math.log(3.0) * temperature, 0.0]])
    teacher = torch.zeros(1, 2)
    expected = temperature**2 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_kd_gradient_matches_softmax_difference() -> None:
    # d(T²·KL)/ds = T · (softmax(s/T) − softmax(t/T)) / N (Hinton et al. 2015, eq. 2).
    temperature, n = 4.0, 3
    student = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(n, 6, dtype=torch.float64)
    kd_loss(student, teacher, temperature).backward()
    expected = temperature * (torch.softmax(student / temperature, 1) - torch.softmax(teacher / temperature, 1)) / n
    torch.testing.assert_close(student.grad, expected.detach(), rtol=1e-6, atol=1e-9)


def _batch(targets: torch.Tensor) -> Batch:
    return Batch(images=torch.zeros(len(targets), 1), targets=targets, indices=torch.arange(len(targets)))


def test_kd_distiller_weights_terms_with_paper_defaults(host: kdbench.PluginHost) -> None:
    spec = host.distillers.get("kd")
    assert dict(spec.defaults) == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    distiller = spec.builder(None, None, None, **spec.defaults)
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    targets = torch.tensor([1, 2, 3, 4])
    terms = distiller.loss_terms(Signals(student), Signals(teacher), _batch(targets), Progress(0, 1, 0, 1))
    assert set(terms) == {"ce", "kd"}
    ce = -torch.log_softmax(student, 1)[torch.arange(4), targets].mean()
    assert terms["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.9 * _kd_reference(student.tolist(), teacher.tolist(), 4.0), rel=1e-5)
    assert distiller.extra_parameter_count() == 0


def test_vanilla_is_plain_cross_entropy_and_needs_no_teacher(host: kdbench.PluginHost) -> None:
    spec = host.distillers.get("vanilla")
    assert spec.needs_teacher is False and spec.family == "baseline"
    distiller = spec.builder(None, None, None, **spec.defaults)
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    terms = distiller.loss_terms(Signals(logits), None, _batch(targets), Progress(0, 1, 0, 1))
    expected = -sum(math.log(torch.softmax(logits[i], 0)[targets[i]].item()) for i in range(5)) / 5
    assert set(terms) == {"ce"}
    assert terms["ce"].item() == pytest.approx(expected, rel=1e-6)
