"""The seed methods ASKD, SKD and CLKD against independent float64 derivations and the authors' own numbers.

Each pure loss, and its gradient with respect to the student's inputs (and ASKD's conv), is compared in
float64 with a derivation written here in plain loops over scalars (gradients by autograd through those
loops, or in closed form), so a different formulation, not the implementation, is the reference. ASKD's
distance is pinned to the authors' a² + b² − 2ab formula with its 1e-12 floor, as the method note advises.
The quirks the authors' code has and a faithful copy must keep are tested directly: ASKD's r clamp on a 2×2
map, SKD's "masks" that reduce to scalar fractions, CLKD's C − 1 divisor. Last, one fixed input per method
gives the numbers the authors' code gives (``Crishawy/ASKD@7101921``, ``HyunJunSik/StreamLined@e4ab795``),
run outside this repository in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench_plugins.distillers import askd, clkd, skd
from torch import nn

import kdbench
from kdbench import Batch, DistillContext, FeatureCapture, KdbenchError, Progress, Signals
from kdbench.losses import kd_loss

D = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}
PROGRESS = Progress(0, 240, 0, 10)


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def _fixed(shape: tuple[int, ...], phase: float, scale: float) -> torch.Tensor:
    """Deterministic values independent of any RNG: the fixed inputs the authors' code was run on."""
    i = torch.arange(math.prod(shape), dtype=D)
    return (scale * torch.sin(0.731 * i + 0.0177 * i * i + phase)).reshape(shape)


def _spec(module: object) -> kdbench.DistillerSpec:
    (spec,) = module.kdbench_register_distillers()
    return spec


def _huber(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * x if abs(x.item()) < 1 else x.abs() - 0.5


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values)


def _batch(n: int, classes: int = 10) -> Batch:
    return Batch(images=torch.zeros(n, 1), targets=torch.arange(n) % classes, indices=torch.arange(n))


# --- specs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "family", "defaults"),
    [
        (askd, "askd", "feature", {"ce_weight": 1.0, "rs_weight": 5.0, "cs_weight": 14.0, "r": 2}),
        (skd, "skd", "logit", {"temperature": 4.0, "tikhonov": 0.1, "ce_weight": 0.5, "kd_weight": 0.5}),
        (clkd, "clkd", "logit", {"ce_weight": 0.1, "kd_weight": 0.5, "class_coefficient": 2.0, "cc_weight": 0.4}),
    ],
)
def test_spec_defaults_are_the_authors_code_defaults(module: object, name: str, family: str, defaults: dict) -> None:
    spec = _spec(module)
    assert (spec.name, spec.family, dict(spec.defaults)) == (name, family, defaults)
    assert spec.description and spec.citation
    assert name in kdbench.list_distillers()


def test_clkd_citation_says_it_is_streamlined_kds_reimplementation() -> None:
    citation = _spec(clkd).citation
    assert "no official code" in citation and "HyunJunSik/StreamLined" in citation


# --- ASKD: an independent derivation ---------------------------------------------------------------------------


def _distances_reference(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """All M² entries of ASKD's pd(): sqrt(max(a² + b² − 2ab, 1e-12)) off the diagonal, 0 on it."""
    out = []
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            if i == j:
                out.append(a * 0)
                continue
            squared = a * a + b * b - 2 * a * b
            out.append(squared.sqrt() if squared.item() > 1e-12 else torch.tensor(1e-6, dtype=D))
    return out


def _normalised_reference(groups: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Every distance of every group, divided by the mean of the positive ones over all groups."""
    entries = [d for group in groups for d in _distances_reference(group)]
    mean = _mean([d for d in entries if d.item() > 0])
    return [d / mean for d in entries]


def _smooth_l1_reference(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    return _mean([_huber(s - t.detach()) for s, t in zip(student, teacher)])


def _class_similarity_reference(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    rows_s = [[z_s[n, k] for k in range(z_s.shape[1])] for n in range(z_s.shape[0])]
    rows_t = [[z_t[n, k] for k in range(z_t.shape[1])] for n in range(z_t.shape[0])]
    return _smooth_l1_reference(_normalised_reference(rows_s), _normalised_reference(rows_t))


def _conv_reference(feature: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> list:
    """[n][o][y][x] = bias[o] + Σ_c weight[o, c]·feature[n, c, y, x], as nested lists of scalars."""
    n_, c_, h_, w_ = feature.shape
    return [
        [
            [
                [bias[o] + sum(weight[o, c] * feature[n, c, y, x] for c in range(c_)) for x in range(w_)]
                for y in range(h_)
            ]
            for o in range(weight.shape[0])
        ]
        for n in range(n_)
    ]


def _region_means_reference(maps: list, kernel: int) -> list[list[list[torch.Tensor]]]:
    """[n][c] = the means of the kernel×kernel blocks of each (nested-list) H×H map, row-major."""
    out = []
    for per_sample in maps:
        channels = []
        for grid in per_sample:
            size = len(grid) // kernel
            channels.append(
                [
                    _mean([grid[by * kernel + y][bx * kernel + x] for y in range(kernel) for x in range(kernel)])
                    for by in range(size)
                    for bx in range(size)
                ]
            )
        out.append(channels)
    return out


def _as_lists(feature: torch.Tensor) -> list:
    return [
        [
            [[feature[n, c, y, x] for x in range(feature.shape[3])] for y in range(feature.shape[2])]
            for c in range(feature.shape[1])
        ]
        for n in range(feature.shape[0])
    ]


def _regional_similarity_reference(
    f_s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, f_t: torch.Tensor, s_kernel: int, t_kernel: int
) -> torch.Tensor:
    regions_s = _region_means_reference(_conv_reference(f_s, weight, bias), s_kernel)
    regions_t = _region_means_reference(_as_lists(f_t), t_kernel)
    groups_s = [channel for sample in regions_s for channel in sample]
    groups_t = [channel for sample in regions_t for channel in sample]
    return _smooth_l1_reference(_normalised_reference(groups_s), _normalised_reference(groups_t))


def _conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1).to(D)
    with torch.no_grad():
        conv.weight.copy_(weight.view(*weight.shape, 1, 1))
        conv.bias.copy_(bias)
    return conv


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_askd_class_similarity_and_its_gradient_match_the_derivation(scale: float) -> None:
    z_s, z_t = _rand(3, 6, seed=1, scale=scale), _rand(3, 6, seed=2, scale=scale)
    z_s[1, 4] = z_s[1, 2]  # two equal logits: the 1e-12 floor (distance 1e-6, no gradient)
    z_s.requires_grad_()
    loss = askd.class_similarity_loss(z_s, z_t)
    reference = _class_similarity_reference(z_s, z_t)
    torch.testing.assert_close(loss, reference, **TOL)
    (grad,) = torch.autograd.grad(loss, z_s)
    (grad_reference,) = torch.autograd.grad(reference, z_s)
    torch.testing.assert_close(grad, grad_reference, **TOL)


@pytest.mark.parametrize(
    ("s_size", "t_size", "r", "s_kernel", "t_kernel"),
    [
        (4, 4, 2, 2, 2),  # same-family pair, r = 2
        (4, 8, 2, 2, 4),  # different map sizes: one r, two kernels
        (2, 4, 4, 1, 2),  # MobileNetV2's 2×2 map: r = 4 clamped to 2, the student pooled with kernel 1
    ],
)
def test_askd_regional_similarity_and_its_gradients_match_the_derivation(
    s_size: int, t_size: int, r: int, s_kernel: int, t_kernel: int
) -> None:
    f_s = _rand(2, 3, s_size, s_size, seed=3).relu().requires_grad_()
    f_t = _rand(2, 4, t_size, t_size, seed=4).relu()
    weight, bias = _rand(4, 3, seed=5, scale=0.5).requires_grad_(), _rand(4, seed=6).requires_grad_()
    conv = _conv(weight.detach(), bias.detach())
    loss = askd.regional_similarity_loss(conv(f_s), f_t, r)
    reference = _regional_similarity_reference(f_s, weight, bias, f_t, s_kernel, t_kernel)
    torch.testing.assert_close(loss, reference, **TOL)
    grads = torch.autograd.grad(loss, (f_s, conv.weight, conv.bias))
    grads_reference = torch.autograd.grad(reference, (f_s, weight, bias))
    torch.testing.assert_close(grads[0], grads_reference[0], **TOL)
    torch.testing.assert_close(grads[1].view(4, 3), grads_reference[1], **TOL)
    torch.testing.assert_close(grads[2], grads_reference[2], **TOL)
    # A bias shifts every region of its channel alike, so the distances (and L_RS) do not see it: the conv's
    # bias, trained in the authors' code too, gets no gradient from the loss (weight decay alone moves it).
    assert grads[2].abs().max() < 1e-12


def test_askd_distance_is_the_floored_a2_b2_2ab_formula() -> None:
    d = askd.scalar_distances(torch.tensor([[2.0, 2.0, 5.0]], dtype=D))
    assert d[0, 0, 1].item() == pytest.approx(1e-6, rel=1e-12)  # equal values: sqrt(1e-12), not 0
    assert d[0, 0, 2].item() == pytest.approx(3.0, rel=1e-15) and d[0, 2, 2].item() == 0.0
    # In float32 the formula cancels near |e| ≈ 10: kept, so the rounding is the authors', not |a − b|'s.
    e = torch.tensor([[10.0, 10.001]])
    assert askd.scalar_distances(e)[0, 0, 1].item() != pytest.approx(0.001, rel=1e-3)


def test_askd_normalising_means_are_global_and_the_students_carries_gradient() -> None:
    values = _rand(2, 3, 5, seed=7)
    normalised = askd.normalised_scalar_distances(values)
    d = askd.scalar_distances(values)
    torch.testing.assert_close(normalised, d / d[d > 0].mean(), rtol=1e-14, atol=0.0)
    # A per-sample mean would make each sample's positive distances average 1; the global one does not.
    assert normalised[0][normalised[0] > 0].mean().item() != pytest.approx(1.0, abs=1e-3)
    z_s = _rand(3, 6, seed=8).requires_grad_()
    z_t = _rand(3, 6, seed=9)
    (grad,) = torch.autograd.grad(askd.class_similarity_loss(z_s, z_t), z_s)
    scale = askd.scalar_distances(z_s.detach()).sum() / (3 * 6 * 5)
    detached = torch.nn.functional.smooth_l1_loss(
        askd.scalar_distances(z_s) / scale, askd.normalised_scalar_distances(z_t)
    )
    (grad_detached,) = torch.autograd.grad(detached, z_s)
    assert (grad - grad_detached).abs().max() > 1e-6


def _shapes(feats: list[tuple[int, ...]], classes: int = 100) -> Signals:
    return Signals(logits=torch.empty(2, classes, device="meta"), feats=[torch.empty(s, device="meta") for s in feats])


def _context(student: Signals, teacher: Signals) -> DistillContext:
    return DistillContext(100, (3, 32, 32), 50_000, "s", "t", student_shapes=student, teacher_shapes=teacher)


def _probe(name: str) -> Signals:
    model = kdbench.create_model(name, num_classes=100).eval()
    with torch.no_grad(), FeatureCapture(model, {"feats"}) as capture:
        signals = capture(torch.zeros(2, 3, 32, 32))
    return _shapes([tuple(f.shape) for f in signals.feats])


@pytest.mark.parametrize(
    ("student", "teacher", "r", "effective_r", "params"),
    [
        ("resnet8x4", "resnet32x4", 2, 2, 65_792),  # 256→256 conv with bias
        ("MobileNetV2", "vgg13", 4, 2, 82_432),  # 160→512; the 2×2 map clamps r = 4 to 2
    ],
)
def test_askd_conv_and_r_clamp_on_the_reference_pairs(
    student: str, teacher: str, r: int, effective_r: int, params: int
) -> None:
    method = _spec(askd).builder(None, None, _context(_probe(student), _probe(teacher)), r=r)
    assert method.r == effective_r
    assert method.extra_parameter_count() == params
    assert method.conv.bias is not None and method.conv.kernel_size == (1, 1)


def test_askd_r_clamp_in_the_loss_pools_the_2x2_map_with_kernel_1() -> None:
    f_s, f_t = _rand(2, 4, 2, 2, seed=10), _rand(2, 4, 4, 4, seed=11)
    clamped = askd.regional_similarity_loss(f_s, f_t, 4)
    assert clamped.item() == askd.regional_similarity_loss(f_s, f_t, 2).item()
    pooled_t = f_t.reshape(2, 4, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(2)  # kernel 4 // 2 = 2
    expected = torch.nn.functional.smooth_l1_loss(
        askd.normalised_scalar_distances(f_s.flatten(2)), askd.normalised_scalar_distances(pooled_t)
    )
    torch.testing.assert_close(clamped, expected, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize(
    ("s_feat", "t_feat", "r", "match"),
    [
        ((2, 8, 4, 2), (2, 8, 4, 4), 2, "square"),
        ((2, 8, 1, 1), (2, 8, 4, 4), 2, "2×2 regions"),
        ((2, 8, 6, 6), (2, 8, 4, 4), 4, "r dividing both"),
    ],
)
def test_askd_refuses_maps_the_authors_code_cannot_handle(s_feat: tuple, t_feat: tuple, r: int, match: str) -> None:
    with pytest.raises(KdbenchError, match=match):
        askd.ASKD(None, None, _context(_shapes([s_feat]), _shapes([t_feat])), r=r)


def test_askd_terms_are_the_weighted_losses() -> None:
    context = _context(_shapes([(2, 3, 4, 4)], 6), _shapes([(2, 4, 8, 8)], 6))
    method = askd.ASKD(None, None, context).to(D)
    f_s, f_t = _rand(3, 3, 4, 4, seed=12), _rand(3, 4, 8, 8, seed=13)
    z_s, z_t = _rand(3, 6, seed=14), _rand(3, 6, seed=15)
    batch = _batch(3, 6)
    terms = method.loss_terms(Signals(z_s, feats=[f_s]), Signals(z_t, feats=[f_t]), batch, PROGRESS)
    assert set(terms) == {"ce", "askd_region", "askd_class"}
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(z_s, batch.targets))
    region = askd.regional_similarity_loss(method.conv(f_s), f_t, 2)
    torch.testing.assert_close(terms["askd_region"], 5 * region, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(terms["askd_class"], 14 * askd.class_similarity_loss(z_s, z_t), rtol=1e-14, atol=0.0)


# --- SKD: an independent derivation ----------------------------------------------------------------------------


def _direction_reference(z_s: torch.Tensor, z_t: torch.Tensor, tikhonov: float) -> torch.Tensor:
    """mean_b sqrt(D_b Σ⁻¹ D_bᵀ) from loops: Gram/C of unit rows, the covariance by its definition, LU inverse."""
    n, c = z_s.shape

    def gram(z: torch.Tensor) -> list[list[torch.Tensor]]:
        norms = [sum(z[i, k] ** 2 for k in range(c)).sqrt() for i in range(n)]
        return [
            [sum(z[i, k] * z[j, k] for k in range(c)) / (norms[i] * norms[j] * c) for j in range(n)] for i in range(n)
        ]

    g_s, g_t = gram(z_s), gram(z_t.detach())
    diff = [[g_s[i][j] - g_t[i][j] for j in range(n)] for i in range(n)]
    means = [sum(diff[b][j] for b in range(n)) / n for j in range(n)]
    covariance = torch.stack(
        [
            torch.stack(
                [
                    sum((diff[b][i] - means[i]) * (diff[b][j] - means[j]) for b in range(n)) / (n - 1)
                    + (tikhonov if i == j else 0.0)
                    for j in range(n)
                ]
            )
            for i in range(n)
        ]
    )
    precision = torch.linalg.inv(covariance)
    norms = [
        sum(diff[b][i] * precision[i, j] * diff[b][j] for i in range(n) for j in range(n)).sqrt() for b in range(n)
    ]
    return _mean(norms)


@pytest.mark.parametrize("tikhonov", [0.1, 1e-4])
def test_skd_direction_loss_and_its_gradient_match_the_derivation(tikhonov: float) -> None:
    z_s, z_t = _rand(6, 5, seed=20, scale=3).requires_grad_(), _rand(6, 5, seed=21, scale=3)
    loss = skd.direction_loss(z_s, z_t, tikhonov)
    reference = _direction_reference(z_s, z_t, tikhonov)
    torch.testing.assert_close(loss, reference, **TOL)
    (grad,) = torch.autograd.grad(loss, z_s)
    (grad_reference,) = torch.autograd.grad(reference, z_s)
    torch.testing.assert_close(grad, grad_reference, **TOL)


def test_skd_direction_gradient_flows_through_the_covariance() -> None:
    z_s, z_t = _rand(6, 5, seed=22, scale=3).requires_grad_(), _rand(6, 5, seed=23, scale=3)
    (grad,) = torch.autograd.grad(skd.direction_loss(z_s, z_t, 1e-4), z_s)
    u_s, u_t = torch.nn.functional.normalize(z_s, dim=1), torch.nn.functional.normalize(z_t, dim=1)
    diff = (u_s @ u_s.t() - u_t @ u_t.t()) / 5
    precision = torch.linalg.inv(torch.cov(diff.t()).detach() + 1e-4 * torch.eye(6, dtype=D))
    detached = torch.einsum("bi,ij,bj->b", diff, precision, diff).sqrt().mean()
    (grad_detached,) = torch.autograd.grad(detached, z_s)
    assert (grad - grad_detached).abs().max() > 1e-6


def test_skd_non_finite_logits_give_a_non_finite_loss_not_an_exception() -> None:
    # cholesky_ex: no error check waiting for the device; the engine then reports the run as diverged.
    z_s, z_t = _rand(6, 5, seed=26), _rand(6, 5, seed=27)
    z_s[2, 3] = float("nan")
    assert not torch.isfinite(skd.direction_loss(z_s, z_t, 0.1))


def test_skd_instance_term_is_t2_kl_with_the_closed_form_gradient() -> None:
    z_s, z_t, temperature = _rand(5, 7, seed=24, scale=3).requires_grad_(), _rand(5, 7, seed=25, scale=3), 4.0
    expected = 0.0
    for row_s, row_t in zip(z_s.tolist(), z_t.tolist()):
        p_s = [math.exp(v / temperature) for v in row_s]
        p_t = [math.exp(v / temperature) for v in row_t]
        p_s, p_t = [v / sum(p_s) for v in p_s], [v / sum(p_t) for v in p_t]
        expected += temperature**2 * sum(t * math.log(t / s) for s, t in zip(p_s, p_t)) / 5
    loss = kd_loss(z_s, z_t, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, z_s)
    # d/dz_s of T²·mean KL = T·(softmax(z_s/T) − softmax(z_t/T)) / N
    closed = temperature * (torch.softmax(z_s / temperature, 1) - torch.softmax(z_t / temperature, 1)) / 5
    torch.testing.assert_close(grad, closed.detach(), **TOL)


def _numpy_fraction(values: torch.Tensor) -> float:
    """The authors' mask.mean(): entries ≤ np.percentile(·, 50), as a fraction in the dtype of ``values``."""
    array = values.numpy()
    return float(np.asarray((array <= np.percentile(array, 50)).mean(), dtype=array.dtype))


@pytest.mark.parametrize("n", [64, 37, 2])
def test_skd_mask_fractions_are_numpys_median_fractions(n: int) -> None:
    for seed in range(20):
        z_t = _rand(n, 100, seed=seed, scale=1 + seed).float()
        if seed % 2:
            z_t[: n // 2 + 1, seed % 100] += 500.0  # confidences tied at exactly 1.0
        p = torch.softmax(z_t, dim=1)
        rho_n, rho_c = skd.mask_fractions(z_t)
        assert (rho_n.item(), rho_c.item()) == (_numpy_fraction(p.amax(1)), _numpy_fraction(p.sum(0)))


def test_skd_masks_reduce_to_half_for_even_counts_and_more_with_ties() -> None:
    z_t = _rand(64, 100, seed=30, scale=2).float()
    assert [v.item() for v in skd.mask_fractions(z_t)] == [0.5, 0.5]
    z_t[:40, 0] += 500.0  # 40 of 64 teacher confidences are exactly 1.0 in float32: the median is 1.0
    rho_n, rho_c = skd.mask_fractions(z_t)
    assert torch.softmax(z_t, 1).amax(1)[:40].eq(1.0).all()
    assert (rho_n.item(), rho_c.item()) == (1.0, 0.5)
    assert skd.fraction_at_or_below_median(torch.tensor([0.1, 0.2, 0.3, 0.3, 0.3, 0.9])).item() == pytest.approx(5 / 6)
    assert skd.fraction_at_or_below_median(torch.arange(37.0)).item() == pytest.approx(19 / 37)


def test_skd_terms_scale_each_loss_by_its_fraction() -> None:
    method = skd.SKD(None, None, None)
    z_s, z_t = _rand(7, 10, seed=31, scale=3), _rand(7, 10, seed=32, scale=3)
    batch = _batch(7)
    terms = method.loss_terms(Signals(z_s), Signals(z_t), batch, PROGRESS)
    assert set(terms) == {"ce", "skd_instance", "skd_direction"}
    rho_n = _numpy_fraction(torch.softmax(z_t, 1).amax(1))
    assert rho_n == 4 / 7
    torch.testing.assert_close(terms["ce"], 0.5 * torch.nn.functional.cross_entropy(z_s, batch.targets))
    torch.testing.assert_close(terms["skd_instance"], 0.5 * rho_n * kd_loss(z_s, z_t, 4.0), rtol=1e-14, atol=0.0)
    direction = 0.5 * 0.5 * _direction_reference(z_s, z_t, 0.1)
    torch.testing.assert_close(terms["skd_direction"], direction, **TOL)


# --- CLKD: an independent derivation ---------------------------------------------------------------------------


def _clkd_reference(z_s: torch.Tensor, z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c = z_s.shape

    def unit_rows(rows: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        return [[v / sum(w * w for w in row).sqrt() for v in row] for row in rows]

    def mse(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> torch.Tensor:
        return _mean([(x - y) ** 2 for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)])

    s = [[z_s[i, k] for k in range(c)] for i in range(n)]
    t = [[z_t[i, k] for k in range(c)] for i in range(n)]
    instance = mse(unit_rows(s), unit_rows(t))
    per_class = mse(unit_rows([list(col) for col in zip(*s)]), unit_rows([list(col) for col in zip(*t)]))

    def correlation(rows: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        means = [sum(rows[i][k] for i in range(n)) / n for k in range(c)]
        return [
            [sum((rows[i][a] - means[a]) * (rows[i][b] - means[b]) for i in range(n)) / (c - 1) for b in range(c)]
            for a in range(c)
        ]

    b_s, b_t = correlation(s), correlation(t)
    frobenius = sum((b_s[a][b] - b_t[a][b]) ** 2 for a in range(c) for b in range(c)).sqrt()
    return instance, per_class, frobenius / c**2


def test_clkd_losses_and_their_gradients_match_the_derivation() -> None:
    z_s, z_t = _rand(5, 4, seed=40, scale=3).requires_grad_(), _rand(5, 4, seed=41, scale=3)
    parts, reference = clkd.clkd_losses(z_s, z_t), _clkd_reference(z_s, z_t)
    for part, expected in zip(parts, reference):
        torch.testing.assert_close(part, expected, **TOL)
        (grad,) = torch.autograd.grad(part, z_s, retain_graph=True)
        (grad_reference,) = torch.autograd.grad(expected, z_s, retain_graph=True)
        torch.testing.assert_close(grad, grad_reference, **TOL)


def test_clkd_class_correlation_divides_by_classes_minus_one() -> None:
    z = _rand(3, 5, seed=42)  # N = 3 samples, C = 5 classes: the covariance divisor would be N − 1 = 2
    sample_covariance = torch.from_numpy(np.cov(z.numpy(), rowvar=False))
    torch.testing.assert_close(clkd.class_correlation(z), sample_covariance * (3 - 1) / (5 - 1), rtol=1e-14, atol=0.0)


def test_clkd_terms_are_the_weighted_losses() -> None:
    method = clkd.CLKD(None, None, None)
    z_s, z_t = _rand(6, 10, seed=43, scale=3), _rand(6, 10, seed=44, scale=3)
    batch = _batch(6)
    terms = method.loss_terms(Signals(z_s), Signals(z_t), batch, PROGRESS)
    instance, per_class, correlation = _clkd_reference(z_s, z_t)
    torch.testing.assert_close(terms["ce"], 0.1 * torch.nn.functional.cross_entropy(z_s, batch.targets))
    torch.testing.assert_close(terms["clkd_instance"], 0.5 * instance, **TOL)
    torch.testing.assert_close(terms["clkd_class"], 0.5 * 2.0 * per_class, **TOL)
    torch.testing.assert_close(terms["clkd_correlation"], 0.4 * correlation, **TOL)


# --- float32 under bf16 autocast -------------------------------------------------------------------------------


def test_pure_losses_compute_in_float32_under_bf16_autocast() -> None:
    z_s, z_t = _rand(8, 10, seed=50, scale=3).bfloat16(), _rand(8, 10, seed=51, scale=3).bfloat16()
    f_s, f_t = _rand(8, 4, 4, 4, seed=52).bfloat16(), _rand(8, 4, 8, 8, seed=53).bfloat16()
    losses = {
        "askd_class": lambda s, t, fs, ft: askd.class_similarity_loss(s, t),
        "askd_region": lambda s, t, fs, ft: askd.regional_similarity_loss(fs, ft, 2),
        "skd_direction": lambda s, t, fs, ft: skd.direction_loss(s, t, 0.1),
        "clkd": lambda s, t, fs, ft: torch.stack(clkd.clkd_losses(s, t)),
    }
    for name, loss in losses.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = loss(z_s, z_t, f_s, f_t)
        plain = loss(z_s.float(), z_t.float(), f_s.float(), f_t.float())
        assert under_autocast.dtype == torch.float32, name
        torch.testing.assert_close(under_autocast, plain, rtol=1e-6, atol=1e-7, msg=name)


# --- the authors' numbers --------------------------------------------------------------------------------------
# Obtained by running the authors' own loss code, unmodified except for a stand-in Distiller base class and
# students/teachers that return the `_fixed` inputs of the tests below, outside this repository in float64
# (torch.set_default_dtype(torch.float64), so that their torch.eye and nn.Conv2d are float64 too), torch 2.14:
# ASKD: ClassSimilarityLoss()(z_s, z_t) and RegionalSimilarityLoss(2)([conv(f_s)], [f_t]) of
#   distiller_zoo/ASKD.py @ 7101921, then (5·L_RS + 14·L_CS).backward();
# SKD: SKD(student, teacher).forward_train(...) of Distiller/SKD.py @ e4ab795 (defaults T 4, λ 0.1, ce 0.5,
#   kd 0.5), then sum(losses_dict.values()).backward();
# CLKD: CLKD_loss(z_s, z_t) and CLKD(student, teacher).forward_train(...) of Distiller/CLKD.py @ e4ab795.
# Gradients are given as their sum of squares.

ASKD_AUTHORS = {
    "cs": 0.3479949376508036,
    "rs": 0.3285874343459305,
    "grad_z": 0.05006080808594973,
    "grad_f": 0.3419404605008672,
    "grad_w": 2.0307839248406836,
}
SKD_AUTHORS = {
    "loss_ce": 1.6554556212716116,
    "loss_kd": 1.331646066973213,
    "loss_bc": 0.025399449263809964,
    "grad_z": 0.07583904344375911,
}
CLKD_AUTHORS = {
    "ins": 0.2646198959232686,
    "cla": 0.38286840739062156,
    "cc": 0.1673524974379903,
    "loss_ce": 0.2767686340922754,
    "loss_kd": 0.582119354327452,
    "grad_z": 0.0025411366031270915,
}
AUTHORS_TARGETS = torch.tensor([0, 3, 6, 9, 2, 5, 8])


def _close(value: torch.Tensor | float, expected: float) -> None:
    assert float(value.detach() if isinstance(value, torch.Tensor) else value) == pytest.approx(
        expected, rel=1e-12, abs=1e-15
    )


def test_askd_matches_the_authors_code_on_a_fixed_input() -> None:
    z_s, z_t = _fixed((4, 10), 0.1, 5.0).requires_grad_(), _fixed((4, 10), 2.1, 5.0)
    f_s, f_t = _fixed((4, 6, 4, 4), 0.3, 1.0).relu().requires_grad_(), _fixed((4, 8, 8, 8), 0.4, 1.0).relu()
    context = _context(_shapes([(2, 6, 4, 4)], 10), _shapes([(2, 8, 8, 8)], 10))
    method = askd.ASKD(None, None, context).to(D)
    with torch.no_grad():
        method.conv.weight.copy_(_fixed((8, 6), 0.5, 0.3).view(8, 6, 1, 1))
        method.conv.bias.copy_(_fixed((8,), 0.6, 0.1))
    terms = method.loss_terms(Signals(z_s, feats=[f_s]), Signals(z_t, feats=[f_t]), _batch(4), PROGRESS)
    _close(terms["askd_class"] / 14, ASKD_AUTHORS["cs"])
    _close(terms["askd_region"] / 5, ASKD_AUTHORS["rs"])
    (terms["askd_region"] + terms["askd_class"]).backward()
    _close(z_s.grad.pow(2).sum(), ASKD_AUTHORS["grad_z"])
    _close(f_s.grad.pow(2).sum(), ASKD_AUTHORS["grad_f"])
    _close(method.conv.weight.grad.pow(2).sum(), ASKD_AUTHORS["grad_w"])


def test_skd_matches_the_authors_code_on_a_fixed_input() -> None:
    z_s, z_t = _fixed((7, 10), 0.7, 3.0).requires_grad_(), _fixed((7, 10), 2.5, 3.0)
    batch = Batch(images=torch.zeros(7, 1), targets=AUTHORS_TARGETS, indices=torch.arange(7))
    terms = skd.SKD(None, None, None).loss_terms(Signals(z_s), Signals(z_t), batch, PROGRESS)
    _close(terms["ce"], SKD_AUTHORS["loss_ce"])
    _close(terms["skd_instance"], SKD_AUTHORS["loss_kd"])  # includes ρ_N = 4/7 (7 samples)
    _close(terms["skd_direction"], SKD_AUTHORS["loss_bc"])
    sum(terms.values()).backward()
    _close(z_s.grad.pow(2).sum(), SKD_AUTHORS["grad_z"])


def test_clkd_matches_the_authors_code_on_a_fixed_input() -> None:
    z_s, z_t = _fixed((7, 10), 0.9, 3.0).requires_grad_(), _fixed((7, 10), 2.9, 3.0)
    for part, key in zip(clkd.clkd_losses(z_s, z_t), ("ins", "cla", "cc")):
        _close(part, CLKD_AUTHORS[key])
    batch = Batch(images=torch.zeros(7, 1), targets=AUTHORS_TARGETS, indices=torch.arange(7))
    terms = clkd.CLKD(None, None, None).loss_terms(Signals(z_s), Signals(z_t), batch, PROGRESS)
    _close(terms["ce"], CLKD_AUTHORS["loss_ce"])
    _close(terms["clkd_instance"] + terms["clkd_class"] + terms["clkd_correlation"], CLKD_AUTHORS["loss_kd"])
    sum(terms.values()).backward()
    _close(z_s.grad.pow(2).sum(), CLKD_AUTHORS["grad_z"])
