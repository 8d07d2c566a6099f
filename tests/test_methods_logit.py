"""The logit-based methods (DKD, DOT, MLKD, SDD, LSKD) against independent derivations.

Each pure loss is checked in float64 against a different formula written here
(plain-Python loops, renormalised probabilities, numpy); the behaviours a
real bug would break (ramps, optimiser buffers, the strong augmentation, the
region weights, the normalisation) are checked directly.
"""

from __future__ import annotations

import math
import statistics
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch
from kdbench_plugins.distillers import dkd, dot, lskd, mlkd, sdd
from torch import nn

import kdbench
from kdbench import Batch, DistillContext, OptimizerSettings, Progress, Signals
from kdbench.engine import probe_signals
from kdbench.losses import dkd_parts, kd_loss, linear_ramp


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _kd_row(student: list[float], teacher: list[float], temperature: float) -> float:
    return temperature**2 * _kl(_softmax(teacher, temperature), _softmax(student, temperature))


def _dkd_row(student: list[float], teacher: list[float], gt: int, temperature: float) -> tuple[float, float]:
    """(TCKD, NCKD) of one sample from renormalised probabilities (DKD paper, eq. 1–4), T²-scaled."""
    p_s, p_t = _softmax(student, temperature), _softmax(teacher, temperature)
    b_s, b_t = [p_s[gt], 1 - p_s[gt]], [p_t[gt], 1 - p_t[gt]]
    q_s = [p / (1 - p_s[gt]) for j, p in enumerate(p_s) if j != gt]
    q_t = [p / (1 - p_t[gt]) for j, p in enumerate(p_t) if j != gt]
    return temperature**2 * _kl(b_t, b_s), temperature**2 * _kl(q_t, q_s)


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _batch(targets: torch.Tensor, **kwargs) -> Batch:
    return Batch(images=torch.zeros(len(targets), 1), targets=targets, indices=torch.arange(len(targets)), **kwargs)


def _progress(epoch: int) -> Progress:
    return Progress(epoch=epoch, epochs=240, step=0, steps_per_epoch=10)


# ------------------------------------------------------------------------------------------------ DKD


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_parts_match_renormalised_probabilities(temperature: float) -> None:
    student, teacher = _logits(6, 7, seed=1), _logits(6, 7, seed=2)
    target = torch.tensor([0, 3, 6, 2, 2, 5])
    tckd, nckd = dkd_parts(student, teacher, target, temperature)
    for i in range(6):
        expected = _dkd_row(student[i].tolist(), teacher[i].tolist(), int(target[i]), temperature)
        assert (tckd[i].item(), nckd[i].item()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    loss = dkd.dkd_loss(student, teacher, target, 1.0, 8.0, temperature)
    assert loss.item() == pytest.approx((tckd + 8 * nckd).mean().item(), rel=1e-12)


def test_dkd_decomposes_kd() -> None:
    # KD = TCKD + (1 − p_t,gt)·NCKD per sample (DKD paper, eq. 7).
    student, teacher, target, temperature = _logits(5, 9, seed=3), _logits(5, 9, seed=4), torch.arange(5), 4.0
    tckd, nckd = dkd_parts(student, teacher, target, temperature)
    p_t = torch.softmax(teacher / temperature, 1)[torch.arange(5), target]
    for i in range(5):
        kd = _kd_row(student[i].tolist(), teacher[i].tolist(), temperature)
        assert (tckd[i] + (1 - p_t[i]) * nckd[i]).item() == pytest.approx(kd, rel=1e-9)


def _dkd_row_decimal(student: list[float], teacher: list[float], gt: int) -> tuple[float, float]:
    """(TCKD, NCKD) at T = 1 in 60-digit decimals, with 1 − p_gt summed from the other classes."""
    with localcontext() as context:
        context.prec = 60

        def parts(row: list[float]) -> tuple[list[Decimal], Decimal]:
            exps = [Decimal(v).exp() for v in row]
            return exps, sum(exps, Decimal(0))

        (e_s, z_s), (e_t, z_t) = parts(student), parts(teacher)
        rest_s, rest_t = z_s - e_s[gt], z_t - e_t[gt]
        b_s, b_t = [e_s[gt] / z_s, rest_s / z_s], [e_t[gt] / z_t, rest_t / z_t]
        tckd = sum((t * (t / s).ln() for t, s in zip(b_t, b_s)), Decimal(0))
        q = [(e_t[j] / rest_t, e_s[j] / rest_s) for j in range(len(student)) if j != gt]
        nckd = sum((t * (t / s).ln() for t, s in q), Decimal(0))
        return float(tckd), float(nckd)


def test_dkd_is_exact_for_confident_float32_logits() -> None:
    # p_s(other) = e^-120 underflows float32 (MDistiller's log of the summed probabilities gives −inf).
    student, teacher = torch.tensor([[120.0, 0.0, -30.0]]), torch.tensor([[0.0, 80.0, 10.0]])
    tckd, nckd = dkd_parts(student, teacher, torch.tensor([0]), 1.0)
    expected = _dkd_row_decimal(student[0].tolist(), teacher[0].tolist(), 0)
    assert (tckd.item(), nckd.item()) == pytest.approx(expected, rel=1e-5)


def test_dkd_ramp_uses_one_based_epochs() -> None:
    spec = dkd.kdbench_register_distillers()[0]
    assert dict(spec.defaults) == {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "ce_weight": 1.0,
        "warmup_epochs": 20,
        "logit_clamp": None,
        "warmup_first_epoch": None,
    }
    distiller = spec.builder(None, None, None, **spec.defaults)
    assert [linear_ramp(_progress(e), 20) for e in (0, 19, 20)] == [0.05, 1.0, 1.0]
    student, teacher, target = _logits(4, 5, seed=5).float(), _logits(4, 5, seed=6).float(), torch.tensor([1, 0, 4, 2])
    full = dkd.dkd_loss(student, teacher, target, 1.0, 8.0, 4.0)
    for epoch, ramp in ((0, 0.05), (9, 0.5), (19, 1.0), (200, 1.0)):
        terms = distiller.loss_terms(Signals(student), Signals(teacher), _batch(target), _progress(epoch))
        assert terms["dkd"].item() == pytest.approx(ramp * full.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(student, target).item())


def test_dkd_as_streamlined_kd_runs_it_clamps_the_dkd_logits_and_ramps_from_epoch_zero() -> None:
    """Streamlined KD's ``Distiller/DKD.py``: logits clamped to ±10 for the DKD term only, ``min(epoch / 20, 1)``."""
    distiller = dkd.DKD(None, None, None, alpha=3.0, beta=6.0, ce_weight=2.0, logit_clamp=10.0, warmup_first_epoch=0)
    student, teacher = _logits(4, 6, seed=11, scale=8.0), _logits(4, 6, seed=12, scale=8.0)
    target = torch.tensor([1, 0, 5, 2])
    assert student.abs().max() > 10 and teacher.abs().max() > 10  # the clamp matters for this batch

    def clamp(row: list[float]) -> list[float]:
        return [min(max(v, -10.0), 10.0) for v in row]

    parts = [_dkd_row(clamp(student[n].tolist()), clamp(teacher[n].tolist()), int(target[n]), 4.0) for n in range(4)]
    expected = sum(3.0 * tckd + 6.0 * nckd for tckd, nckd in parts) / 4
    unclamped = dkd.dkd_loss(student, teacher, target, 3.0, 6.0, 4.0).item()
    assert abs(unclamped - expected) > 1e-3 * expected
    for epoch, ramp in ((0, 0.0), (1, 0.05), (19, 0.95), (20, 1.0)):
        terms = distiller.loss_terms(Signals(student), Signals(teacher), _batch(target), _progress(epoch))
        assert terms["dkd"].item() == pytest.approx(ramp * expected, rel=1e-10, abs=0.0)
    ce = 2.0 * torch.nn.functional.cross_entropy(student, target).item()  # CE reads the raw logits
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-12)


# ------------------------------------------------------------------------------------------------ DOT


def test_dot_optimizer_matches_hand_written_update_on_toy_problem() -> None:
    """Three steps of DOT on w (both losses), u (CE only) and v (KD only), against plain-float bookkeeping."""
    lr, momentum, delta, wd = 0.1, 0.9, 0.075, 0.01
    mu_ce, mu_kd, mid = momentum - delta, momentum + delta, momentum
    w, u, v = (nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in (1.0, -2.0, 0.5))
    distiller = dot.DOT(None, None, None)
    optimizer = distiller.make_optimizer([w, u, v], OptimizerSettings(lr, momentum, wd, nesterov=False))
    assert isinstance(optimizer, dot.DistillationOrientedTrainer)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.825)
    assert optimizer.param_groups[0]["momentum_kd"] == pytest.approx(0.975)
    # CE = (2w − 1)² + u², KD = 3(w − 2)² + v⁴ — gradients written out by hand below.
    ws, us, vs = 1.0, -2.0, 0.5
    b_ce_w = b_ce_u = b_kd_w = b_kd_v = None
    for _ in range(3):
        terms = {"ce": (2 * w - 1) ** 2 + u**2, "kd": 3 * (w - 2) ** 2 + v**4}
        distiller.step(terms, optimizer)
        g_ce_w, g_ce_u, g_kd_w, g_kd_v = 4 * (2 * ws - 1), 2 * us, 6 * (ws - 2), 4 * vs**3
        # w: task buffer with weight decay (μ−Δ), then distillation buffer without (μ+Δ).
        d = g_ce_w + wd * ws
        b_ce_w = d if b_ce_w is None else mu_ce * b_ce_w + d
        ws -= lr * b_ce_w
        b_kd_w = g_kd_w if b_kd_w is None else mu_kd * b_kd_w + g_kd_w
        ws -= lr * b_kd_w
        # u: task gradient only → mean momentum; v: distillation only → mean momentum, decay after the first step.
        d = g_ce_u + wd * us
        b_ce_u = d if b_ce_u is None else mid * b_ce_u + d
        us -= lr * b_ce_u
        b_kd_v = g_kd_v if b_kd_v is None else mid * b_kd_v + g_kd_v + wd * vs
        vs -= lr * b_kd_v
        assert (w.item(), u.item(), v.item()) == pytest.approx((ws, us, vs), rel=1e-12)
    state = optimizer.state_dict()["state"]
    assert set(state[0]) == {"momentum_buffer", "momentum_kd_buffer"}
    assert set(state[1]) == {"momentum_buffer"} and set(state[2]) == {"momentum_kd_buffer"}


def test_dot_uses_kd_loss_and_refuses_nesterov() -> None:
    spec = dot.kdbench_register_distillers()[0]
    assert dict(spec.defaults) == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "delta": 0.075}
    distiller = spec.builder(None, None, None, **spec.defaults)
    student, teacher, target = _logits(3, 4, seed=7), _logits(3, 4, seed=8), torch.tensor([0, 1, 3])
    terms = distiller.loss_terms(Signals(student), Signals(teacher), _batch(target), _progress(0))
    kd = sum(_kd_row(student[i].tolist(), teacher[i].tolist(), 4.0) for i in range(3)) / 3
    assert terms["kd"].item() == pytest.approx(0.9 * kd, rel=1e-9)
    with pytest.raises(ValueError, match="Nesterov"):
        distiller.make_optimizer([nn.Parameter(torch.zeros(1))], OptimizerSettings(0.1, 0.9, 0.0, nesterov=True))


# ------------------------------------------------------------------------------------------------ MLKD


def test_gram_losses_match_loops() -> None:
    student, teacher, temperature = _logits(4, 3, seed=9), _logits(4, 3, seed=10), 3.0
    p_s = [_softmax(r, temperature) for r in student.tolist()]
    p_t = [_softmax(r, temperature) for r in teacher.tolist()]
    classes = sum(
        (sum(p_t[n][i] * p_t[n][j] for n in range(4)) - sum(p_s[n][i] * p_s[n][j] for n in range(4))) ** 2
        for i in range(3)
        for j in range(3)
    )
    batch = sum(
        (sum(p_t[a][k] * p_t[b][k] for k in range(3)) - sum(p_s[a][k] * p_s[b][k] for k in range(3))) ** 2
        for a in range(4)
        for b in range(4)
    )
    assert mlkd.class_consistency_loss(student, teacher, temperature).item() == pytest.approx(classes / 3, rel=1e-9)
    assert mlkd.batch_consistency_loss(student, teacher, temperature).item() == pytest.approx(batch / 4, rel=1e-9)


def test_confidence_masks_use_the_numpy_median() -> None:
    teacher = _logits(7, 5, seed=11)
    samples, classes = mlkd.confidence_masks(teacher)
    probs = torch.softmax(teacher, 1).numpy()
    confidence, per_class = probs.max(1), probs.sum(0)
    assert samples.tolist() == list(confidence <= np.percentile(confidence, 50))
    assert classes.tolist() == list(per_class <= np.percentile(per_class, 50))
    assert samples.sum().item() == 4  # odd batch: the median sample itself is kept


def test_mlkd_loss_composes_levels_as_released() -> None:
    s_w, t_w, s_s, t_s = (_logits(6, 4, seed=s) for s in (12, 13, 14, 15))
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    got = mlkd.mlkd_loss(s_w, t_w, s_s, t_s, temps, [2.0, 6.0])
    samples, classes = mlkd.confidence_masks(t_w)
    m, c = samples.double().mean().item(), classes.double().mean().item()

    def kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
        return sum(_kd_row(s[i].tolist(), t[i].tolist(), temperature) for i in range(6)) / 6

    strong = [kd(s_w, t_w, t) if t in (2.0, 6.0) else kd(s_s, t_s, t) for t in temps]
    assert got["kd"].item() == pytest.approx(m * sum(kd(s_w, t_w, t) for t in temps) + sum(strong), rel=1e-9)
    cc = sum(mlkd.class_consistency_loss(s_w, t_w, t).item() for t in temps)
    bc = sum(mlkd.batch_consistency_loss(s_w, t_w, t).item() for t in temps)
    assert (got["cc"].item(), got["bc"].item()) == pytest.approx((c * cc, m * bc), rel=1e-9)
    paper = mlkd.mlkd_loss(s_w, t_w, s_s, t_s, temps, [])
    assert paper["kd"].item() == pytest.approx(
        m * sum(kd(s_w, t_w, t) for t in temps) + sum(kd(s_s, t_s, t) for t in temps), rel=1e-9
    )


def _mlkd(channels: int = 3, size: int = 32) -> mlkd.MLKD:
    context = DistillContext(
        num_classes=10,
        input_size=(channels, size, size),
        num_train=100,
        student_name="s",
        teacher_name="t",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        augment=kdbench.AugmentSpec(pad=4, flip=True),
    )
    spec = mlkd.kdbench_register_distillers()[0]
    return spec.builder(None, None, context, **spec.defaults)


def test_mlkd_prepare_batch_appends_a_reproducible_strong_view() -> None:
    distiller = _mlkd()
    raw = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    weak = kdbench.augment.normalize(raw, distiller.mean, distiller.std)

    def prepared(seed: int) -> Batch:
        batch = Batch(weak, torch.arange(5), torch.arange(5), raw=raw, generator=torch.Generator().manual_seed(seed))
        return distiller.prepare_batch(batch)

    rng_before = torch.get_rng_state()
    first, again, other = prepared(3), prepared(3), prepared(4)
    assert torch.equal(torch.get_rng_state(), rng_before), "randomness must come from batch.generator only"
    assert first.images.shape == (10, 3, 32, 32) and first.extras["weak_size"] == 5
    assert torch.equal(first.images[:5], weak) and torch.equal(first.targets, torch.arange(5))
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    strong = first.images[5:]
    assert not torch.equal(strong, first.images[:5])
    # The strong view is a normalised uint8 image: back on the 1/255 grid.
    pixels = strong * 0.25 + 0.5
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)


def test_mlkd_loss_terms_split_the_views() -> None:
    distiller = _mlkd()
    logits_s, logits_t, target = _logits(8, 10, seed=20).float(), _logits(8, 10, seed=21).float(), torch.arange(4)
    batch = _batch(target, extras={"weak_size": 4})
    terms = distiller.loss_terms(Signals(logits_s), Signals(logits_t), batch, _progress(0))
    assert set(terms) == {"ce", "kd", "cc", "bc"}
    ce = torch.nn.functional.cross_entropy
    assert terms["ce"].item() == pytest.approx(0.1 * (ce(logits_s[:4], target) + ce(logits_s[4:], target)).item())
    levels = mlkd.mlkd_loss(logits_s[:4], logits_t[:4], logits_s[4:], logits_t[4:])
    assert terms["kd"].item() == pytest.approx(0.9 * levels["kd"].item(), rel=1e-6)


def test_mlkd_runs_on_grey_images() -> None:
    distiller = _mlkd(channels=1, size=8)
    raw = torch.randint(0, 256, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    weak = kdbench.augment.normalize(raw, distiller.mean, distiller.std)
    batch = Batch(weak, torch.arange(4), torch.arange(4), raw=raw, generator=torch.Generator().manual_seed(0))
    assert distiller.prepare_batch(batch).images.shape == (8, 1, 8, 8)


# ------------------------------------------------------------------------------------------------ SDD


def test_multi_scale_logits_pool_cells_row_major() -> None:
    feature_map = _logits(2, 3, 4, 4, seed=30)
    classifier = nn.Linear(3, 5).double()
    got = sdd.multi_scale_logits(feature_map, classifier, [1, 2, 4])
    assert got.shape == (2, 21, 5)
    region = 0
    for m in (1, 2, 4):
        cell = 4 // m
        for row in range(m):
            for col in range(m):
                patch = feature_map[:, :, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
                expected = classifier(patch.mean(dim=(2, 3)))
                torch.testing.assert_close(got[:, region], expected, rtol=1e-12, atol=1e-12)
                region += 1


def _region_weights_reference(teacher: torch.Tensor, target: torch.Tensor) -> list[list[float]]:
    """The reference's four masks: global true/false × local true/false; mixed ones weigh 2."""
    weights = []
    for n in range(teacher.shape[0]):
        global_true = int(teacher[n, 0].argmax()) == int(target[n])
        row = []
        for r in range(teacher.shape[1]):
            local_true = int(teacher[n, r].argmax()) == int(target[n])
            row.append(2.0 if r > 0 and local_true != global_true else 1.0)
        weights.append(row)
    return weights


def test_sdd_losses_match_region_loops() -> None:
    student, teacher = _logits(4, 5, 6, seed=31), _logits(4, 5, 6, seed=32)
    target = teacher[:, 0].argmax(1)
    target[1] = (target[1] + 1) % 6  # a sample whose teacher is globally wrong
    weights = _region_weights_reference(teacher, target)
    assert sdd.region_weights(teacher, target).tolist() == weights
    assert any(2.0 in row for row in weights)
    kd = sum(
        weights[n][r] * _kd_row(student[n, r].tolist(), teacher[n, r].tolist(), 4.0) for n in range(4) for r in range(5)
    )
    assert sdd.sdd_kd_loss(student, teacher, target, 4.0).item() == pytest.approx(kd / 20, rel=1e-9)
    total = 0.0
    for n in range(4):
        for r in range(5):
            tckd, nckd = _dkd_row(student[n, r].tolist(), teacher[n, r].tolist(), int(target[n]), 4.0)
            total += weights[n][r] * (1.0 * tckd + 8.0 * nckd)
    assert sdd.sdd_dkd_loss(student, teacher, target, 1.0, 8.0, 4.0).item() == pytest.approx(total / 20, rel=1e-9)


def _streamlined_weights(teacher: torch.Tensor, target: torch.Tensor) -> list[list[float]]:
    """Streamlined KD's ``multi_dkd`` masks, re-typed as loops: region 0 plays the global region's part.

    Its pyramid lists the 4×4 cells first, so rows ``0:B`` (the top-left cell) are what it calls the
    global prediction; the four masks then weigh a region 2 exactly when its correctness differs.
    """
    weights = []
    for n in range(teacher.shape[0]):
        first_true = int(teacher[n, 0].argmax()) == int(target[n])
        row = []
        for r in range(teacher.shape[1]):
            local_true = int(teacher[n, r].argmax()) == int(target[n])
            gt_lw = first_true and not local_true and r > 0
            gw_lt = not first_true and local_true and r > 0
            row.append(2.0 if gt_lw or gw_lt else 1.0)
        weights.append(row)
    return weights


def test_sdd_scales_may_start_with_a_cell_as_streamlined_kd_lists_them() -> None:
    feature_map, classifier = _logits(3, 4, 8, 8, seed=33), nn.Linear(4, 6).double()
    with torch.no_grad():
        s_regions = sdd.multi_scale_logits(feature_map, classifier, [4, 2, 1])
        t_regions = sdd.multi_scale_logits(_logits(3, 4, 8, 8, seed=34), classifier, [4, 2, 1])
    assert s_regions.shape == (3, 21, 6)
    cell = feature_map[:, :, 0:2, 0:2].mean(dim=(2, 3))
    torch.testing.assert_close(s_regions[:, 0], classifier(cell), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_regions[:, 20], classifier(feature_map.mean(dim=(2, 3))), rtol=1e-12, atol=1e-12)
    target = t_regions[:, 0].argmax(1)
    target[1] = (target[1] + 1) % 6
    weights = _streamlined_weights(t_regions, target)
    assert sdd.region_weights(t_regions, target).tolist() == weights
    total = 0.0
    for n in range(3):
        for r in range(21):
            tckd, nckd = _dkd_row(s_regions[n, r].tolist(), t_regions[n, r].tolist(), int(target[n]), 4.0)
            total += weights[n][r] * (3.0 * tckd + 6.0 * nckd)
    got = sdd.sdd_dkd_loss(s_regions, t_regions, target, 3.0, 6.0, 4.0).item()
    assert got == pytest.approx(total / 63, rel=1e-10)


def _context(student: Signals, teacher: Signals) -> DistillContext:
    return DistillContext(100, (3, 32, 32), 10, "student", "teacher", student_shapes=student, teacher_shapes=teacher)


def _shapes(model: nn.Module) -> Signals:
    return probe_signals(model, (3, 32, 32), torch.device("cpu"))


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18"])
def test_sdd_global_region_is_the_model_logits_and_only_the_student_learns(host: kdbench.PluginHost, arch: str) -> None:
    """Region 0 at scale 1 is the logits only if SDD pools the map the classifier pools (WRN: after its last BN)."""
    torch.manual_seed(0)
    student = kdbench.create_model(arch, host=host)
    teacher = kdbench.create_model(arch, host=host).requires_grad_(False)
    distiller = sdd.SDDKD(student, teacher, _context(_shapes(student), _shapes(teacher)), scales=[1, 2])
    assert distiller.extra_parameter_count() == 0 and not list(distiller.parameters())
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with kdbench.FeatureCapture(student.train(), distiller.student_signals) as capture:
        s = capture(images)
    with torch.no_grad(), kdbench.FeatureCapture(teacher.eval(), distiller.teacher_signals) as capture:
        t = capture(images)
    s_regions, t_regions = distiller.regions(s, t)
    assert s_regions.shape == (3, 5, 100)
    torch.testing.assert_close(s_regions[:, 0], s.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t_regions[:, 0], t.logits, rtol=1e-4, atol=1e-4)
    terms = distiller.loss_terms(s, t, _batch(torch.tensor([1, 2, 3])), _progress(0))
    sum(terms.values()).backward()
    classifier = student.get_submodule(student.feature_taps.classifier)
    assert all(p.grad is not None for p in classifier.parameters())
    teacher_classifier = teacher.get_submodule(teacher.feature_taps.classifier)
    assert all(p.grad is None for p in teacher_classifier.parameters())


def test_sdd_refuses_a_pooled_map_unlike_the_embedding_and_bad_scales() -> None:
    resnet = Signals(torch.empty(2, 100), embedding=torch.empty(2, 64), pooled_map=torch.empty(2, 64, 8, 8))
    wrong = Signals(torch.empty(2, 100), embedding=torch.empty(2, 1280), pooled_map=torch.empty(2, 160, 2, 2))
    with pytest.raises(kdbench.KdbenchError, match="pooled map .* does not match its embedding"):
        sdd.SDDKD(nn.Module(), None, _context(wrong, resnet))
    for scales in ([], [0, 2], [1, 2.5]):
        with pytest.raises(kdbench.KdbenchError, match="positive grid sizes"):
            sdd.SDDKD(nn.Module(), None, _context(resnet, resnet), scales=scales)


def test_sdd_dkd_is_ramped() -> None:
    spec = next(s for s in sdd.kdbench_register_distillers() if s.name == "sdd_dkd")
    assert spec.defaults["beta"] == 8.0 and spec.defaults["warmup_epochs"] == 20
    distiller = spec.builder(nn.Module(), None, None, **spec.defaults)
    distiller._classifiers = (nn.Identity(), nn.Identity())  # regions = pooled features as logits
    s = Signals(_logits(2, 6, seed=40).float(), pooled_map=_logits(2, 6, 4, 4, seed=41).float())
    t = Signals(_logits(2, 6, seed=42).float(), pooled_map=_logits(2, 6, 4, 4, seed=43).float())
    batch = _batch(torch.tensor([0, 5]))
    early, late = (distiller.loss_terms(s, t, batch, _progress(e))["sdd"].item() for e in (0, 20))
    assert early == pytest.approx(late / 20, rel=1e-6)


# ------------------------------------------------------------------------------------------------ LSKD


def test_standardize_logits_uses_unbiased_std() -> None:
    logits = _logits(3, 6, seed=50)
    got = lskd.standardize_logits(logits)
    for i, row in enumerate(logits.tolist()):
        mean, std = statistics.fmean(row), statistics.stdev(row)
        assert got[i].tolist() == pytest.approx([(v - mean) / (1e-7 + std) for v in row], rel=1e-9)


def test_lskd_loss_is_kd_of_z_scores_and_invariant_to_affine_logit_changes() -> None:
    student, teacher, temperature = _logits(4, 5, seed=51), _logits(4, 5, seed=52), 2.0

    def z_scores(rows: torch.Tensor) -> list[list[float]]:
        return [[(v - statistics.fmean(r)) / statistics.stdev(r) for v in r] for r in rows.tolist()]

    expected = sum(_kd_row(a, b, temperature) for a, b in zip(z_scores(student), z_scores(teacher))) / 4
    assert lskd.lskd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    moved = lskd.lskd_loss(7.0 * student - 3.0, 0.5 * teacher + 1.0, temperature)
    assert moved.item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(7.0 * student, teacher, temperature).item() != pytest.approx(expected, rel=1e-3)


def test_lskd_defaults_are_the_authors() -> None:
    spec = lskd.kdbench_register_distillers()[0]
    assert dict(spec.defaults) == {"temperature": 2.0, "ce_weight": 1.0, "kd_weight": 9.0}
    distiller = spec.builder(None, None, None, **spec.defaults)
    student, teacher, target = _logits(3, 4, seed=53).float(), _logits(3, 4, seed=54).float(), torch.tensor([0, 1, 2])
    terms = distiller.loss_terms(Signals(student), Signals(teacher), _batch(target), _progress(0))
    assert terms["kd"].item() == pytest.approx(9.0 * lskd.lskd_loss(student, teacher, 2.0).item(), rel=1e-6)
