"""Single-stage feature / relation distillers: each loss against an independent derivation, plus their wiring."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from kdbench_plugins.distillers.at import at_loss, attention_map
from kdbench_plugins.distillers.cc import cc_loss
from kdbench_plugins.distillers.fitnet import HintRegressor, hint_loss
from kdbench_plugins.distillers.kdsvd import channel_singular_vectors, kdsvd_loss
from kdbench_plugins.distillers.nst import nst_loss, polynomial_mmd2
from kdbench_plugins.distillers.pkt import pkt_loss
from kdbench_plugins.distillers.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from kdbench_plugins.distillers.sp import sp_loss
from kdbench_plugins.distillers.vid import vid_loss

import kdbench
from kdbench import Batch, DistillContext, FeatureCapture, KdbenchError, Progress, Signals

D = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-9}

DEFAULTS = {
    "fitnet": {"hint_layer": 2, "ce_weight": 1.0, "hint_weight": 100.0},
    "at": {"p": 2.0, "ce_weight": 1.0, "at_weight": 1000.0},
    "sp": {"ce_weight": 1.0, "sp_weight": 3000.0},
    "cc": {"feat_dim": 128, "ce_weight": 1.0, "cc_weight": 0.02},
    "vid": {"init_variance": 5.0, "eps": 1e-5, "ce_weight": 1.0, "vid_weight": 1.0},
    "rkd": {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0, "eps": 1e-12},
    "pkt": {"ce_weight": 1.0, "pkt_weight": 30000.0, "eps": 1e-7},
    "nst": {"ce_weight": 1.0, "nst_weight": 50.0},
    "kdsvd": {"k": 1, "ce_weight": 1.0, "kdsvd_weight": 1.0},
}
# The single method term of each distiller (RKD has two, checked on its own).
METHOD_TERM = {name: name for name in ("at", "sp", "cc", "vid", "pkt", "nst", "kdsvd")} | {"fitnet": "hint"}


def _rand(*shape: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return tensor.abs() if positive else tensor


def _spec(name: str) -> kdbench.DistillerSpec:
    module = importlib.import_module(f"kdbench_plugins.distillers.{name}")
    (spec,) = module.kdbench_register_distillers()
    return spec


def _meta_signals(feats: list[tuple[int, ...]], embedding: int) -> Signals:
    return Signals(
        logits=torch.empty(2, 10, device="meta"),
        feats=[torch.empty(shape, device="meta") for shape in feats],
        embedding=torch.empty(2, embedding, device="meta"),
    )


def _context(student: Signals, teacher: Signals, names: tuple[str, str] = ("s", "t")) -> DistillContext:
    return DistillContext(10, (3, 32, 32), 100, names[0], names[1], student_shapes=student, teacher_shapes=teacher)


def _probe(name: str) -> Signals:
    model = kdbench.create_model(name, num_classes=100).eval()
    with torch.no_grad(), FeatureCapture(model, {"feats", "embedding"}) as capture:
        signals = capture(torch.zeros(2, 3, 32, 32))
    return Signals(
        logits=torch.empty(signals.logits.shape, device="meta"),
        feats=[torch.empty(f.shape, device="meta") for f in signals.feats],
        embedding=torch.empty(signals.embedding.shape, device="meta"),
    )


def _batch(n: int) -> Batch:
    return Batch(images=torch.zeros(n, 1), targets=torch.arange(n) % 10, indices=torch.arange(n))


PROGRESS = Progress(0, 240, 0, 10)


def _block_mean(feature: torch.Tensor, factor: int) -> torch.Tensor:
    """Average non-overlapping factor×factor blocks (what adaptive pooling does for exact divisors)."""
    n, c, h, w = feature.shape
    return feature.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# --- specs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_spec_defaults_are_the_reference_cifar_defaults(name: str) -> None:
    spec = _spec(name)
    assert spec.name == name and spec.family == "feature"
    assert dict(spec.defaults) == DEFAULTS[name]
    assert spec.description and spec.citation


def test_extra_parameters_match_methods_md_for_resnet32x4_to_resnet8x4() -> None:
    context = _context(_probe("resnet8x4"), _probe("resnet32x4"), ("resnet8x4", "resnet32x4"))
    counts = {
        name: _spec(name).builder(None, None, context, **DEFAULTS[name]).extra_parameter_count() for name in DEFAULTS
    }
    assert counts["fitnet"] == 16_768  # conv 128→128 (1×1, bias) + BN 128
    assert counts["vid"] == 258_048 + (64 + 128 + 256)  # three regressors + trained per-channel α
    assert counts["cc"] == 2 * (256 * 128 + 128)
    assert all(counts[name] == 0 for name in ("at", "sp", "rkd", "pkt", "nst", "kdsvd"))


# --- FitNet ----------------------------------------------------------------------------------------------------


def test_hint_loss_is_the_elementwise_mean_square() -> None:
    s, t = _rand(2, 3, 2, 2, seed=1), _rand(2, 3, 2, 2, seed=2)
    values = [(a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())]
    assert hint_loss(s, t).item() == pytest.approx(sum(values) / len(values), rel=1e-12)


@pytest.mark.parametrize(
    ("student", "teacher", "conv"),
    [
        ((2, 4, 16, 16), (2, 6, 8, 8), "Conv2d"),
        ((2, 4, 8, 8), (2, 6, 16, 16), "ConvTranspose2d"),
        ((2, 4, 10, 10), (2, 6, 8, 8), "Conv2d"),
        ((2, 4, 8, 8), (2, 6, 8, 8), "Conv2d"),
    ],
)
def test_hint_regressor_maps_student_hint_to_teacher_shape(student: tuple, teacher: tuple, conv: str) -> None:
    regressor = HintRegressor(torch.Size(student), torch.Size(teacher))
    assert type(regressor.conv).__name__ == conv
    out = regressor(torch.randn(student))
    assert out.shape == teacher and (out >= 0).all()  # conv → BN → ReLU


def test_hint_regressor_refuses_sizes_it_cannot_match() -> None:
    with pytest.raises(KdbenchError, match="hint_layer"):
        HintRegressor(torch.Size((2, 4, 4, 4)), torch.Size((2, 4, 16, 16)))


def test_fitnet_uses_the_hint_layer_and_trains_its_regressor() -> None:
    shapes = [(2, 4, 8, 8), (2, 4, 8, 8), (2, 6, 4, 4), (2, 8, 2, 2)]
    context = _context(_meta_signals(shapes, 8), _meta_signals([(2, 2 * s[1], *s[2:]) for s in shapes], 16))
    distiller = _spec("fitnet").builder(None, None, context, **DEFAULTS["fitnet"]).double()
    s_feats = [_rand(*s, seed=i).requires_grad_() for i, s in enumerate(shapes)]
    t_feats = [_rand(2, 2 * s[1], *s[2:], seed=10 + i) for i, s in enumerate(shapes)]
    logits = _rand(2, 10, seed=20)
    terms = distiller.loss_terms(Signals(logits, s_feats), Signals(logits, t_feats), _batch(2), PROGRESS)
    expected = 100.0 * hint_loss(distiller.regressor(s_feats[2]), t_feats[2])
    torch.testing.assert_close(terms["hint"], expected, **TOL)
    terms["hint"].backward()
    assert s_feats[2].grad is not None and all(s_feats[i].grad is None for i in (0, 1, 3))
    assert all(p.grad is not None for p in distiller.regressor.parameters())


# --- AT --------------------------------------------------------------------------------------------------------


def _attention_loop(feature: torch.Tensor, p: float) -> list[list[float]]:
    n, c, h, w = feature.shape
    maps = []
    for i in range(n):
        raw = [sum(feature[i, k, y, x].item() ** p for k in range(c)) / c for y in range(h) for x in range(w)]
        norm = math.sqrt(sum(v * v for v in raw))
        maps.append([v / norm for v in raw])
    return maps


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_map_is_normalised_channel_mean_of_powers(p: float) -> None:
    feature = _rand(2, 3, 2, 3, seed=3, positive=True)
    torch.testing.assert_close(attention_map(feature, p), torch.tensor(_attention_loop(feature, p), dtype=D), **TOL)


def test_at_loss_sums_stage_means_and_pools_the_larger_map() -> None:
    s1, t1 = _rand(2, 3, 4, 4, seed=4), _rand(2, 5, 4, 4, seed=5)
    s2, t2 = _rand(2, 3, 4, 4, seed=6), _rand(2, 5, 2, 2, seed=7)  # student pooled 4×4 → 2×2
    expected = 0.0
    for s, t in ((s1, t1), (_block_mean(s2, 2), t2)):
        a_s, a_t = _attention_loop(s, 2.0), _attention_loop(t, 2.0)
        diffs = [(x - y) ** 2 for row_s, row_t in zip(a_s, a_t) for x, y in zip(row_s, row_t)]
        expected += sum(diffs) / len(diffs)
    assert at_loss([s1, s2], [t1, t2], 2.0).item() == pytest.approx(expected, rel=1e-9)


def test_at_distiller_skips_the_stem_and_weights_by_1000() -> None:
    shapes = [(2, 4, 8, 8), (2, 4, 8, 8), (2, 6, 4, 4)]
    distiller = _spec("at").builder(None, None, _context(_meta_signals(shapes, 6), _meta_signals(shapes, 6)))
    stages = [_rand(*s, seed=i) for i, s in enumerate(shapes)]
    teacher = [_rand(*shapes[0], seed=99), *stages[1:]]  # only the stem differs
    logits = _rand(2, 10, seed=8)
    terms = distiller.loss_terms(Signals(logits, stages), Signals(logits, teacher), _batch(2), PROGRESS)
    assert set(terms) == {"ce", "at"} and terms["at"].item() == pytest.approx(0.0, abs=1e-12)
    teacher[2] = _rand(*shapes[2], seed=50)
    terms = distiller.loss_terms(Signals(logits, stages), Signals(logits, teacher), _batch(2), PROGRESS)
    assert terms["at"].item() == pytest.approx(1000.0 * at_loss(stages[2:], teacher[2:], 2.0).item(), rel=1e-9)


# --- SP --------------------------------------------------------------------------------------------------------


def _gram_rows_normalised(feature: torch.Tensor) -> list[list[float]]:
    rows = [feature[i].flatten().tolist() for i in range(feature.shape[0])]
    gram = [[sum(a * b for a, b in zip(r, q)) for q in rows] for r in rows]
    return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in gram]


def test_sp_loss_matches_loop_derivation() -> None:
    s, t = _rand(5, 3, 2, 2, seed=9), _rand(5, 7, 2, 2, seed=10)
    g_s, g_t = _gram_rows_normalised(s), _gram_rows_normalised(t)
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(5) for j in range(5)) / 25
    assert sp_loss(s, t).item() == pytest.approx(expected, rel=1e-9)


def test_sp_distiller_uses_the_last_stage_only() -> None:
    shapes = [(3, 4, 8, 8), (3, 4, 8, 8), (3, 6, 4, 4)]
    distiller = _spec("sp").builder(None, None, _context(_meta_signals(shapes, 6), _meta_signals(shapes, 6)))
    student = [_rand(*s, seed=i) for i, s in enumerate(shapes)]
    teacher = [_rand(*s, seed=20 + i) for i, s in enumerate(shapes)]
    logits = _rand(3, 10, seed=11)
    terms = distiller.loss_terms(Signals(logits, student), Signals(logits, teacher), _batch(3), PROGRESS)
    assert terms["sp"].item() == pytest.approx(3000.0 * sp_loss(student[-1], teacher[-1]).item(), rel=1e-9)
    terms = distiller.loss_terms(
        Signals(logits, student), Signals(logits, [*teacher[:2], student[2]]), _batch(3), PROGRESS
    )
    assert terms["sp"].item() == pytest.approx(0.0, abs=1e-12)


# --- CC --------------------------------------------------------------------------------------------------------


def test_cc_loss_matches_loop_derivation() -> None:
    s, t = _rand(6, 4, seed=12), _rand(6, 4, seed=13)
    delta = [[abs(a - b) for a, b in zip(rs, rt)] for rs, rt in zip(s.tolist(), t.tolist())]
    pairs = [sum(x * y for x, y in zip(delta[i], delta[i + 1])) for i in range(5)]
    assert cc_loss(s, t).item() == pytest.approx(sum(pairs) / 5, rel=1e-12)


def test_cc_trains_both_linear_embeddings() -> None:
    context = _context(_meta_signals([(2, 4, 8, 8)], 8), _meta_signals([(2, 4, 8, 8)], 16))
    distiller = _spec("cc").builder(None, None, context, **DEFAULTS["cc"]).double()
    assert distiller.embed_student.in_features == 8 and distiller.embed_teacher.in_features == 16
    logits = _rand(4, 10, seed=14)
    student, teacher = Signals(logits, embedding=_rand(4, 8, seed=15)), Signals(logits, embedding=_rand(4, 16, seed=16))
    terms = distiller.loss_terms(student, teacher, _batch(4), PROGRESS)
    z_s = distiller.embed_student(student.embedding)
    z_t = distiller.embed_teacher(teacher.embedding)
    torch.testing.assert_close(terms["cc"], 0.02 * cc_loss(z_s, z_t), **TOL)
    terms["cc"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.parameters())


# --- VID -------------------------------------------------------------------------------------------------------


def test_vid_loss_matches_loop_derivation() -> None:
    mean, target, alpha = _rand(2, 3, 2, 2, seed=17), _rand(2, 3, 2, 2, seed=18), _rand(3, seed=19)
    eps, total, count = 1e-5, 0.0, 0
    for n, c, y, x in itertools.product(range(2), range(3), range(2), range(2)):
        variance = math.log(1 + math.exp(alpha[c].item())) + eps
        total += 0.5 * ((target[n, c, y, x].item() - mean[n, c, y, x].item()) ** 2 / variance + math.log(variance))
        count += 1
    assert vid_loss(mean, target, alpha, eps).item() == pytest.approx(total / count, rel=1e-9)


def test_vid_variance_starts_at_five_and_is_trained() -> None:
    s_shapes = [(2, 4, 8, 8), (2, 4, 8, 8), (2, 6, 4, 4)]
    t_shapes = [(2, 5, 8, 8), (2, 5, 8, 8), (2, 7, 2, 2)]
    context = _context(_meta_signals(s_shapes, 6), _meta_signals(t_shapes, 7))
    distiller = _spec("vid").builder(None, None, context, **DEFAULTS["vid"]).double()
    assert len(distiller.stages) == 2  # stages after the stem
    for stage, channels in zip(distiller.stages, (5, 7)):
        variance = torch.nn.functional.softplus(stage.log_scale) + 1e-5
        torch.testing.assert_close(variance, torch.full((channels,), 5.0, dtype=D), **TOL)
        convs = [m for m in stage.regressor if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 3 and all(c.kernel_size == (1, 1) and c.bias is None for c in convs)
    log_scales = [stage.log_scale for stage in distiller.stages]
    assert all(any(p is a for p in distiller.parameters()) for a in log_scales), "α must be a registered parameter"
    logits = _rand(2, 10, seed=21)
    s_feats = [_rand(*s, seed=i) for i, s in enumerate(s_shapes)]
    t_feats = [_rand(*s, seed=30 + i) for i, s in enumerate(t_shapes)]
    terms = distiller.loss_terms(Signals(logits, s_feats), Signals(logits, t_feats), _batch(2), PROGRESS)
    pooled = _block_mean(s_feats[2], 2)  # 4×4 student pooled to the teacher's 2×2
    expected = vid_loss(distiller.stages[0](s_feats[1]), t_feats[1], log_scales[0], 1e-5) + vid_loss(
        distiller.stages[1](pooled), t_feats[2], log_scales[1], 1e-5
    )
    torch.testing.assert_close(terms["vid"], expected, **TOL)
    before = [a.detach().clone() for a in log_scales]
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1)
    terms["vid"].backward()
    optimizer.step()
    assert all(not torch.equal(b, a) for b, a in zip(before, log_scales)), "the variances must train"


# --- RKD -------------------------------------------------------------------------------------------------------


def test_pairwise_distances_match_math_dist() -> None:
    e = _rand(5, 3, seed=22)
    rows = e.tolist()
    expected = torch.tensor([[math.dist(a, b) for b in rows] for a in rows], dtype=D)
    torch.testing.assert_close(pairwise_distances(e), expected, rtol=1e-6, atol=1e-6)


def _rkd_distance_loop(s: torch.Tensor, t: torch.Tensor) -> float:
    def normalised(rows: list[list[float]]) -> list[float]:
        d = [math.dist(a, b) if i != j else 0.0 for i, a in enumerate(rows) for j, b in enumerate(rows)]
        positive = [v for v in d if v > 0]
        return [v / (sum(positive) / len(positive)) for v in d]

    d_s, d_t = normalised(s.tolist()), normalised(t.tolist())
    return sum(_huber(a - b) for a, b in zip(d_s, d_t)) / len(d_s)


def _rkd_angle_loop(s: torch.Tensor, t: torch.Tensor) -> float:
    def cosines(rows: list[list[float]]) -> list[float]:
        out = []
        for j, i, k in itertools.product(range(len(rows)), repeat=3):
            if i == j or k == j:
                out.append(0.0)
                continue
            u = [a - b for a, b in zip(rows[i], rows[j])]
            v = [a - b for a, b in zip(rows[k], rows[j])]
            out.append(sum(a * b for a, b in zip(u, v)) / (math.hypot(*u) * math.hypot(*v)))
        return out

    c_s, c_t = cosines(s.tolist()), cosines(t.tolist())
    return sum(_huber(a - b) for a, b in zip(c_s, c_t)) / len(c_s)


def test_rkd_distance_and_angle_match_loop_derivations() -> None:
    s, t = _rand(5, 3, seed=23) * 3, _rand(5, 4, seed=24)
    assert rkd_distance_loss(s, t).item() == pytest.approx(_rkd_distance_loop(s, t), rel=1e-6)
    assert rkd_angle_loss(s, t).item() == pytest.approx(_rkd_angle_loop(s, t), rel=1e-6)


def test_rkd_is_invariant_to_scaling_and_shifting_the_student() -> None:
    s, t = _rand(6, 4, seed=25), _rand(6, 5, seed=26)
    moved = 7.5 * s + _rand(1, 4, seed=27)
    assert rkd_distance_loss(moved, t).item() == pytest.approx(rkd_distance_loss(s, t).item(), rel=1e-6)
    assert rkd_angle_loss(moved, t).item() == pytest.approx(rkd_angle_loss(s, t).item(), rel=1e-6)


def test_rkd_distiller_weights_distance_25_angle_50() -> None:
    distiller = _spec("rkd").builder(None, None, None, **DEFAULTS["rkd"])
    logits = _rand(4, 10, seed=28)
    s, t = _rand(4, 6, seed=29), _rand(4, 8, seed=30)
    terms = distiller.loss_terms(Signals(logits, embedding=s), Signals(logits, embedding=t), _batch(4), PROGRESS)
    assert set(terms) == {"ce", "rkd_distance", "rkd_angle"}
    assert terms["rkd_distance"].item() == pytest.approx(25 * _rkd_distance_loop(s, t), rel=1e-6)
    assert terms["rkd_angle"].item() == pytest.approx(50 * _rkd_angle_loop(s, t), rel=1e-6)


# --- PKT -------------------------------------------------------------------------------------------------------


def _pkt_loop(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> float:
    def probabilities(rows: list[list[float]]) -> list[list[float]]:
        units = [[v / (math.sqrt(sum(x * x for x in r)) + eps) for v in r] for r in rows]
        kernel = [[(1 + sum(a * b for a, b in zip(u, w))) / 2 for w in units] for u in units]
        return [[v / sum(row) for v in row] for row in kernel]

    p_s, p_t = probabilities(s.tolist()), probabilities(t.tolist())
    n = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


def test_pkt_loss_matches_loop_derivation_and_vanishes_for_equal_geometry() -> None:
    s, t = _rand(5, 3, seed=31), _rand(5, 6, seed=32)
    assert pkt_loss(s, t).item() == pytest.approx(_pkt_loop(s, t), rel=1e-6)
    assert pkt_loss(4.0 * t, t).item() == pytest.approx(0.0, abs=1e-9)  # cosine kernels ignore the scale


# --- NST -------------------------------------------------------------------------------------------------------


def _mmd2_loop(s: torch.Tensor, t: torch.Tensor) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        a = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in s[n].flatten(1).tolist()]
        b = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in t[n].flatten(1).tolist()]

        def k(u: list[float], w: list[float]) -> float:
            return sum(x * y for x, y in zip(u, w)) ** 2

        tt = sum(k(u, w) for u in b for w in b) / len(b) ** 2
        ss = sum(k(u, w) for u in a for w in a) / len(a) ** 2
        st = sum(k(u, w) for u in a for w in b) / (len(a) * len(b))
        total += tt + ss - 2 * st
    return total / s.shape[0]


def test_nst_polynomial_mmd_matches_loop_with_different_channel_counts() -> None:
    s, t = _rand(2, 3, 2, 2, seed=33, positive=True), _rand(2, 5, 2, 2, seed=34, positive=True)
    assert polynomial_mmd2(s, t).item() == pytest.approx(_mmd2_loop(s, t), rel=1e-9)
    assert polynomial_mmd2(t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_nst_loss_sums_stages_and_pools_the_larger_map() -> None:
    s1, t1 = _rand(2, 3, 2, 2, seed=35), _rand(2, 4, 2, 2, seed=36)
    s2, t2 = _rand(2, 3, 2, 2, seed=37), _rand(2, 4, 4, 4, seed=38)  # teacher pooled 4×4 → 2×2
    expected = _mmd2_loop(s1, t1) + _mmd2_loop(s2, _block_mean(t2, 2))
    assert nst_loss([s1, s2], [t1, t2]).item() == pytest.approx(expected, rel=1e-9)


# --- KD-SVD ----------------------------------------------------------------------------------------------------


def test_kdsvd_decomposes_over_channels_not_width() -> None:
    # A rank-1 feature F[c, y, x] = a[c]·b[y, x]: its only channel singular vector is a/‖a‖ (length C = 3, not W = 5).
    a = torch.tensor([1.0, 2.0, 2.0], dtype=D)
    b = _rand(4, 5, seed=39, positive=True)
    feature = (a[:, None, None] * b[None]).unsqueeze(0)
    values, vectors = channel_singular_vectors(feature, 1)
    assert vectors.shape == (1, 3, 1)
    torch.testing.assert_close(vectors[0, :, 0], a / 3.0, **TOL)
    torch.testing.assert_close(values, torch.ones(1, 1, dtype=D), **TOL)


def _top_channel_vectors(feature: torch.Tensor, count: int) -> list[list[list[float]]]:
    """Per sample, the top eigenvectors of XᵀX (X = H·W × C), signed so their entries sum to ≥ 0."""
    out = []
    for sample in feature:
        x = sample.flatten(1).t()
        _, eigenvectors = torch.linalg.eigh(x.t() @ x)
        columns = [eigenvectors[:, -1 - j].tolist() for j in range(count)]
        out.append([col if sum(col) >= 0 else [-v for v in col] for col in columns])
    return out


def _kdsvd_loop(student: list[torch.Tensor], teacher: list[torch.Tensor], k: int) -> float:
    total, previous = 0.0, None
    for f_s, f_t in zip(student, teacher):
        t_vecs, s_vecs = _top_channel_vectors(f_t, k), _top_channel_vectors(f_s, k + 3)
        stage = []
        for s_cands, t_cols in zip(s_vecs, t_vecs):
            aligned = []
            for t_col in t_cols:
                cosines = [sum(x * y for x, y in zip(cand, t_col)) for cand in s_cands]
                best = max(range(len(cosines)), key=lambda i: abs(cosines[i]))
                sign = math.copysign(1.0, cosines[best])
                aligned.append([sign * v for v in s_cands[best]])
            stage.append((aligned, t_cols))  # k = 1: the normalised teacher singular value is 1
        if previous is not None:
            for (s_now, t_now), (s_prev, t_prev) in zip(stage, previous):
                for j in range(k):
                    for c, c2 in itertools.product(range(len(s_now[j])), range(len(s_prev[j]))):
                        r_s = math.exp(-((s_now[j][c] - s_prev[j][c2]) ** 2) / 8)
                        r_t = math.exp(-((t_now[j][c] - t_prev[j][c2]) ** 2) / 8)
                        total += (r_s - r_t) ** 2 / f_s.shape[0]
        previous = stage
    return total


def test_kdsvd_loss_matches_eigen_decomposition_loop() -> None:
    student = [_rand(2, 4, 3, 3, seed=40, positive=True), _rand(2, 5, 2, 2, seed=41, positive=True)]
    teacher = [_rand(2, 4, 3, 3, seed=42, positive=True), _rand(2, 5, 2, 2, seed=43, positive=True)]
    student.append(_rand(2, 6, 2, 2, seed=44))
    teacher.append(_rand(2, 6, 2, 2, seed=45))
    expected = _kdsvd_loop(student, teacher, 1)
    assert expected > 0
    assert kdsvd_loss(student, teacher, 1).item() == pytest.approx(expected, rel=1e-6)


def test_kdsvd_gradient_reaches_the_student_and_is_finite() -> None:
    student = [_rand(2, 4, 3, 3, seed=46, positive=True), _rand(2, 5, 2, 2, seed=47, positive=True)]
    student = [f.requires_grad_() for f in student]
    teacher = [_rand(2, 4, 3, 3, seed=48, positive=True), _rand(2, 5, 2, 2, seed=49, positive=True)]
    kdsvd_loss(student, teacher, 1).backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in student)


def test_kdsvd_refuses_pairs_with_different_channel_counts() -> None:
    shapes = [(2, 4, 8, 8), (2, 4, 8, 8), (2, 6, 4, 4)]
    wider = [(2, 4, 8, 8), (2, 8, 8, 8), (2, 6, 4, 4)]
    spec = _spec("kdsvd")
    spec.builder(None, None, _context(_meta_signals(shapes, 6), _meta_signals(shapes, 6)))
    with pytest.raises(KdbenchError, match="equal channel counts"):
        spec.builder(None, None, _context(_meta_signals(shapes, 6), _meta_signals(wider, 6)))


# --- every method ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHOD_TERM))
def test_terms_are_weighted_ce_plus_the_method_term(name: str) -> None:
    shapes = [(4, 4, 8, 8), (4, 4, 8, 8), (4, 6, 4, 4), (4, 8, 2, 2)]
    context = _context(_meta_signals(shapes, 8), _meta_signals(shapes, 8))
    distiller = _spec(name).builder(None, None, context, **{**DEFAULTS[name], "ce_weight": 0.5}).double()
    logits = _rand(4, 10, seed=50)
    student = Signals(logits, [_rand(*s, seed=i, positive=True) for i, s in enumerate(shapes)], [], _rand(4, 8))
    teacher = Signals(logits, [_rand(*s, seed=9 + i, positive=True) for i, s in enumerate(shapes)], [], _rand(4, 8))
    terms = distiller.loss_terms(student, teacher, _batch(4), PROGRESS)
    assert set(terms) == {"ce", METHOD_TERM[name]}
    targets = _batch(4).targets
    ce = -torch.log_softmax(logits, 1)[torch.arange(4), targets].mean()
    assert terms["ce"].item() == pytest.approx(0.5 * ce.item(), rel=1e-9)
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
