"""DIST's loss against an independent numpy derivation, and kdbench's contract checks."""

from __future__ import annotations

import kdbench
import numpy as np
import pytest
import torch
from kdbench.testing import check_distiller

from kdbench_dist import DIST, dist_relations, kdbench_register_distillers, kdbench_register_suites


def _softmax(logits: np.ndarray, tau: float) -> np.ndarray:
    z = logits / tau
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numpy_dist(student: np.ndarray, teacher: np.ndarray, tau: float) -> tuple[float, float]:
    """The paper's definitions, written with numpy's own Pearson coefficient (np.corrcoef)."""
    p_s, p_t = _softmax(student, tau), _softmax(teacher, tau)
    inter = np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(len(p_s))])
    intra = np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1] for c in range(p_s.shape[1])])
    return tau**2 * (1 - inter), tau**2 * (1 - intra)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_relations_match_numpy(tau: float) -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    inter, intra = dist_relations(torch.from_numpy(student), torch.from_numpy(teacher), tau)
    expected_inter, expected_intra = _numpy_dist(student, teacher, tau)
    assert inter.item() == pytest.approx(expected_inter, rel=1e-6)
    assert intra.item() == pytest.approx(expected_intra, rel=1e-6)
    assert abs(inter.item() - intra.item()) > 1e-3  # per sample vs per class: different numbers


def test_terms_are_weighted_by_beta_gamma_and_ce_weight() -> None:
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    targets = np.array([0, 2, 1, 1])
    distiller = DIST(torch.nn.Identity(), torch.nn.Identity(), None, beta=0.5, gamma=3.0, tau=2.0, ce_weight=0.25)
    batch = kdbench.Batch(torch.zeros(4, 1), torch.from_numpy(targets), torch.arange(4))
    terms = distiller.loss_terms(
        kdbench.Signals(torch.from_numpy(student)),
        kdbench.Signals(torch.from_numpy(teacher)),
        batch,
        kdbench.Progress(epoch=0, epochs=1, step=0, steps_per_epoch=1),
    )
    inter, intra = _numpy_dist(student, teacher, 2.0)
    log_p = np.log(_softmax(student, 1.0))
    ce = -log_p[np.arange(4), targets].mean()
    assert set(terms) == {"ce", "inter", "intra"}
    assert terms["ce"].item() == pytest.approx(0.25 * ce, rel=1e-6)
    assert terms["inter"].item() == pytest.approx(0.5 * inter, rel=1e-6)
    assert terms["intra"].item() == pytest.approx(3.0 * intra, rel=1e-6)


def test_identical_predictions_cost_nothing_and_shift_invariance_holds() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    inter, intra = dist_relations(logits, logits + 5.0, 4.0)  # softmax ignores a constant shift
    # Not exactly 0: the ε in the correlation's denominator leaves τ²·ε/(‖a‖·‖b‖) ≈ 1e-5 here.
    assert inter.item() == pytest.approx(0.0, abs=1e-3)
    assert intra.item() == pytest.approx(0.0, abs=1e-3)
    unrelated, _ = dist_relations(logits, logits.flip(1), 4.0)
    assert unrelated.item() > 1.0


def test_defaults_are_the_papers_cifar100_setting() -> None:
    (spec,) = kdbench_register_distillers()
    assert spec.name == "dist"
    assert dict(spec.defaults) == {"beta": 2.0, "gamma": 2.0, "tau": 4.0, "ce_weight": 1.0}
    assert "2205.10536" in spec.citation


def test_distiller_keeps_the_contract() -> None:
    (spec,) = kdbench_register_distillers()
    check_distiller(spec)


def test_installed_plugin_registers_distiller_and_suite() -> None:
    assert "dist" in kdbench.list_distillers()
    check_distiller("dist")
    (suite,) = kdbench_register_suites()
    assert suite.name == "dist-smoke"
    assert kdbench.get_suite("dist-smoke").distillers == ("vanilla", "kd", "dist")


def test_dist_smoke_shares_the_smoke_suites_runs() -> None:
    # Same data, recipe, seeds and pair, no overrides: teacher, vanilla and KD runs hash to the smoke suite's.
    ours, smoke = kdbench.get_suite("dist-smoke"), kdbench.get_suite("smoke")
    assert (ours.dataset, ours.recipe, ours.teacher_recipe, ours.seeds, ours.teacher_seed) == (
        smoke.dataset,
        smoke.recipe,
        smoke.teacher_recipe,
        smoke.seeds,
        smoke.teacher_seed,
    )
    assert all(pair in smoke.pairs for pair in ours.pairs)
    assert not ours.distiller_params and not smoke.distiller_params
