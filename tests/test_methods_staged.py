"""AB, FT, FSP and OFD: their losses against independent derivations, their stages and their extra parts."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from kdbench_plugins.distillers import ab, fsp, ft, ofd
from torch import nn

import kdbench
from kdbench import Batch, DistillContext, FeatureTaps, KdbenchError, Progress, Signals

PROGRESS = Progress(epoch=0, epochs=30, step=0, steps_per_epoch=1, phase="init")


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _shapes(stages: list[tuple[int, int, int]], classes: int = 10) -> Signals:
    feats = [_meta(2, *s) for s in stages]
    return Signals(logits=_meta(2, classes), feats=feats, preact=list(feats), embedding=_meta(2, stages[-1][0]))


def _context(student: Signals, teacher: Signals, names: tuple[str, str] = ("student_net", "teacher_net")):
    return DistillContext(
        num_classes=10,
        input_size=(3, 32, 32),
        num_train=8,
        student_name=names[0],
        teacher_name=names[1],
        student_shapes=student,
        teacher_shapes=teacher,
    )


def _random(shape: tuple[int, ...], seed: int, scale: float = 1.5, grad: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    return tensor.requires_grad_(grad)


def _signals(shapes: Signals, seed: int, grad: bool = False) -> Signals:
    feats = [_random(tuple(t.shape), seed + k, grad=grad) for k, t in enumerate(shapes.preact)]
    return Signals(logits=_random(tuple(shapes.logits.shape), seed + 99, grad=grad), feats=feats, preact=feats)


def _batch(n: int = 2) -> Batch:
    return Batch(images=torch.zeros(n, 1), targets=torch.arange(n) % 10, indices=torch.arange(n))


def _model_context(student: str, teacher: str) -> tuple[nn.Module, nn.Module, DistillContext]:
    from kdbench.engine import probe_signals as _probe

    s_model, t_model = kdbench.create_model(student), kdbench.create_model(teacher).eval().requires_grad_(False)
    cpu = torch.device("cpu")
    context = _context(_probe(s_model, (3, 32, 32), cpu), _probe(t_model, (3, 32, 32), cpu), (student, teacher))
    return s_model, t_model, context


# ---------------------------------------------------------------- AB


def _ab_loop(source: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """Heo et al. eq. 6 element by element: push below −m where the teacher is off, above +m where it is on."""
    total = 0.0
    for s, t in zip(source.flatten().tolist(), target.flatten().tolist()):
        if t > 0:
            total += (s - margin) ** 2 if s <= margin else 0.0
        else:
            total += (s + margin) ** 2 if s > -margin else 0.0
    return total / source.shape[0]


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_loss_matches_elementwise_definition(margin: float) -> None:
    source, target = _random((3, 4, 5, 5), 0), _random((3, 4, 5, 5), 1)
    target[0, 0, 0, :2] = 0.0  # the teacher's "off" includes exactly zero
    source[1, 0, 0, 0], source[1, 0, 0, 1] = margin, -margin  # boundaries of both hinges
    assert ab.ab_loss(source, target, margin).item() == pytest.approx(_ab_loop(source, target, margin), rel=1e-9)


def test_ab_stage_weights_double_towards_the_last_stage() -> None:
    assert ab.ab_stage_weights(3) == [0.25, 0.5, 1.0]
    assert ab.ab_stage_weights(4) == [0.125, 0.25, 0.5, 1.0]


def test_ab_connectors_follow_the_reference_rule() -> None:
    assert isinstance(ab.build_connector((2, 16, 8, 8), (2, 16, 8, 8)), nn.Identity)
    same_size = ab.build_connector((2, 16, 8, 8), (2, 32, 8, 8))
    assert same_size[0].kernel_size == (1, 1) and isinstance(same_size[1], nn.BatchNorm2d)
    cases = [((2, 6, 8, 8), (2, 10, 4, 4)), ((2, 6, 4, 4), (2, 10, 8, 8)), ((2, 6, 8, 8), (2, 10, 6, 6))]
    for s_shape, t_shape in cases:
        assert ab.build_connector(s_shape, t_shape)(torch.randn(s_shape)).shape == t_shape
    with pytest.raises(KdbenchError, match="no connector"):
        ab.build_connector((2, 6, 3, 3), (2, 6, 12, 12))


def _ab_pair() -> tuple[Signals, Signals]:
    student = _shapes([(3, 8, 8), (4, 8, 8), (6, 4, 4), (6, 4, 4)])
    teacher = _shapes([(5, 8, 8), (4, 8, 8), (8, 4, 4), (6, 2, 2)])
    return student, teacher


def test_ab_init_stage_loss_weights_and_gradients() -> None:
    s_shapes, t_shapes = _ab_pair()
    distiller = ab.AB(None, None, _context(s_shapes, t_shapes)).double()
    assert [type(c) for c in distiller.connectors] == [nn.Identity, nn.Sequential, nn.Sequential]
    student, teacher = _signals(s_shapes, 0, grad=True), _signals(t_shapes, 10, grad=True)
    (phase,) = distiller.phases()
    assert (phase.name, phase.epochs, phase.lr, phase.student_mode) == ("init", 30, None, "train")
    terms = distiller.phase_terms(phase, student, teacher, _batch(), PROGRESS)
    assert set(terms) == {"ab"}
    expected = sum(
        w * _ab_loop(c(s).detach(), t.detach(), 1.0)
        for w, c, s, t in zip([0.25, 0.5, 1.0], distiller.connectors, student.preact[1:], teacher.preact[1:])
    )
    assert terms["ab"].item() == pytest.approx(3e-3 * expected, rel=1e-9)
    terms["ab"].backward()
    assert all(t.grad is None for t in teacher.preact), "gradients must never reach the teacher's features"
    assert all(s.grad is not None for s in student.preact[1:]) and student.preact[0].grad is None
    assert all(p.grad is not None for p in distiller.connectors.parameters())


def test_ab_main_stage_is_cross_entropy_only_and_trains_no_connector() -> None:
    s_shapes, t_shapes = _ab_pair()
    distiller = ab.AB(None, None, _context(s_shapes, t_shapes), ce_weight=2.0)
    student, teacher = _signals(s_shapes, 0), _signals(t_shapes, 10)
    terms = distiller.loss_terms(student, teacher, _batch(), PROGRESS)
    assert set(terms) == {"ce"}
    ce = -torch.log_softmax(student.logits, 1)[torch.arange(2), torch.arange(2)].mean()
    assert terms["ce"].item() == pytest.approx(2.0 * ce.item(), rel=1e-9)
    assert list(distiller.main_parameters()) == []


def test_ab_init_trains_connectors_and_student_features_not_the_classifier() -> None:
    s_model, _, context = _model_context("resnet8", "resnet14")
    distiller = ab.AB(s_model, None, context)
    (phase,) = distiller.phases()
    trained = {id(p) for p in distiller.phase_parameters(phase, s_model)}
    assert all(id(p) in trained for p in distiller.connectors.parameters())
    assert id(s_model.conv1.weight) in trained and id(s_model.fc.weight) not in trained
    assert distiller.extra_parameter_count() == 0  # same stage shapes: identity connectors, as RepDistiller


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_ab_and_fsp_init_steps_move_the_students_batchnorm_statistics_as_repdistiller(method: str) -> None:
    """RepDistiller's init stage runs the student's feature layers in train mode (helper/pretrain.py:12-14)."""
    import functools

    import kdbench
    from kdbench.engine import EngineOptions, RunState, TrainedModel
    from kdbench.testing import synthetic_dataset_spec, tiny_model

    dataset = synthetic_dataset_spec(10, train=32, test=8)
    data = dataset.loader(None, False)
    torch.manual_seed(0)
    teacher = TrainedModel("tiny_student", tiny_model("tiny_student").eval().requires_grad_(False))
    student = tiny_model("tiny_student")
    spec = kdbench.get_distiller(method)
    factory = functools.partial(spec.builder, **{**spec.defaults, "init_epochs": 1})
    recipe = kdbench.Recipe(epochs=1, batch_size=8, lr_milestones=())
    state = RunState(student, factory, teacher, recipe, 0, dataset, data, EngineOptions())
    (phase,) = state.distiller.phases()
    assert phase.student_mode == "train"
    before = {k: v.clone() for k, v in student.state_dict().items() if k.endswith("running_mean")}
    state.train_epoch(0)  # the init phase
    moved = [k for k, v in before.items() if not torch.equal(v, student.state_dict()[k])]
    assert moved == sorted(before), f"statistics that did not move: {sorted(set(before) - set(moved))}"


# ---------------------------------------------------------------- FSP


def _block_mean(x: list, factor: int) -> list:
    """Average non-overlapping factor×factor blocks of a nested [C][H][W] list."""
    size = len(x[0]) // factor
    return [
        [
            [
                sum(c[i * factor + a][j * factor + b] for a in range(factor) for b in range(factor)) / factor**2
                for j in range(size)
            ]
            for i in range(size)
        ]
        for c in x
    ]


def _fsp_loop(bottom: torch.Tensor, top: torch.Tensor) -> list:
    """G[n][i][j] = (1/HW) Σ_{h,w} bottom[n,i,h,w] · top[n,j,h,w] after pooling the larger map (Yim et al. eq. 1)."""
    result = []
    for b_n, t_n in zip(bottom.tolist(), top.tolist()):
        if len(b_n[0]) > len(t_n[0]):
            b_n = _block_mean(b_n, len(b_n[0]) // len(t_n[0]))
        elif len(t_n[0]) > len(b_n[0]):
            t_n = _block_mean(t_n, len(t_n[0]) // len(b_n[0]))
        size = len(b_n[0])
        result.append(
            [[sum(bi[h][w] * tj[h][w] for h in range(size) for w in range(size)) / size**2 for tj in t_n] for bi in b_n]
        )
    return result


@pytest.mark.parametrize(("bottom_size", "top_size"), [(4, 4), (8, 4), (2, 4)])
def test_fsp_matrix_matches_loop(bottom_size: int, top_size: int) -> None:
    bottom, top = _random((2, 3, bottom_size, bottom_size), 0), _random((2, 5, top_size, top_size), 1)
    matrix = fsp.fsp_matrix(bottom, top)
    assert matrix.shape == (2, 3, 5)
    torch.testing.assert_close(matrix, torch.tensor(_fsp_loop(bottom, top), dtype=torch.float64), rtol=1e-9, atol=0)


def test_fsp_loss_sums_mean_squared_differences_over_consecutive_pairs() -> None:
    sizes = [(3, 8, 8), (4, 8, 8), (5, 4, 4)]
    student = [_random((2, *s), k) for k, s in enumerate(sizes)]
    teacher = [_random((2, *s), 10 + k) for k, s in enumerate(sizes)]
    expected = 0.0
    for k in range(2):
        gs, gt = _fsp_loop(student[k], student[k + 1]), _fsp_loop(teacher[k], teacher[k + 1])
        flat = [(a - b) ** 2 for ms, mt in zip(gs, gt) for rs, rt in zip(ms, mt) for a, b in zip(rs, rt)]
        expected += sum(flat) / len(flat)
    assert fsp.fsp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-9)


def test_fsp_refuses_pairs_whose_channels_differ_like_the_reference() -> None:
    wrn_40_1 = _shapes([(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)])
    wrn_40_2 = _shapes([(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)])
    with pytest.raises(KdbenchError, match="wrn_40_1.*wrn_40_2"):
        fsp.FSP(None, None, _context(wrn_40_1, wrn_40_2, ("wrn_40_1", "wrn_40_2")))
    fsp.FSP(None, None, _context(wrn_40_2, _shapes([(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)])))


def test_fsp_stages_init_then_cross_entropy_only() -> None:
    shapes = _shapes([(3, 8, 8), (4, 8, 8), (5, 4, 4)])
    distiller = fsp.FSP(None, None, _context(shapes, shapes))
    (phase,) = distiller.phases()
    assert (phase.name, phase.epochs, phase.lr, phase.student_mode) == ("init", 30, None, "train")
    student, teacher = _signals(shapes, 0, grad=True), _signals(shapes, 10, grad=True)
    terms = distiller.phase_terms(phase, student, teacher, _batch(), PROGRESS)
    assert terms["fsp"].item() == pytest.approx(fsp.fsp_loss(student.feats, teacher.feats).item(), rel=1e-12)
    terms["fsp"].backward()
    assert all(t.grad is None for t in teacher.feats) and all(s.grad is not None for s in student.feats)
    assert set(distiller.loss_terms(student, teacher, _batch(), PROGRESS)) == {"ce"}
    assert distiller.extra_parameter_count() == 0


# ---------------------------------------------------------------- FT


def _normalised(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def _factor_loop(factor: torch.Tensor, form: str) -> list[list[float]]:
    out = []
    for sample in factor.tolist():
        if form == "flatten":
            values = [v for channel in sample for row in channel for v in row]
        else:
            channels = len(sample)
            size_h, size_w = len(sample[0]), len(sample[0][0])
            values = [sum(c[h][w] ** 2 for c in sample) / channels for h in range(size_h) for w in range(size_w)]
        out.append(_normalised(values))
    return out


@pytest.mark.parametrize("form", ["channel_mean_square", "flatten"])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_factor_transfer_loss_matches_loop(form: str, p: float) -> None:
    student, teacher = _random((3, 4, 4, 4), 0), _random((3, 4, 4, 4), 1)
    vs, vt = _factor_loop(student, form), _factor_loop(teacher, form)
    diffs = [abs(a - b) ** p for rs, rt in zip(vs, vt) for a, b in zip(rs, rt)]
    assert ft.factor_transfer_loss(student, teacher, p, form).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-9)


def test_factor_transfer_pools_the_larger_map_and_is_scale_invariant() -> None:
    student, teacher = _random((2, 4, 8, 8), 0), _random((2, 4, 4, 4), 1)
    pooled = torch.tensor([_block_mean(s, 2) for s in student.tolist()], dtype=torch.float64)
    expected = ft.factor_transfer_loss(pooled, teacher)
    assert ft.factor_transfer_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-9)
    assert ft.factor_transfer_loss(teacher, teacher * 3.0).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(KdbenchError, match="factor form"):
        ft.factor_vector(teacher, "gram")


def test_paraphraser_and_translator_shapes_and_sizes() -> None:
    paraphraser, translator = ft.Paraphraser(8, 0.5), ft.Translator(6, 8, 0.5)
    factor, reconstruction = paraphraser(torch.randn(2, 8, 4, 4))
    assert factor.shape == (2, 4, 4, 4) and reconstruction.shape == (2, 8, 4, 4)
    assert translator(torch.randn(2, 6, 4, 4)).shape == (2, 4, 4, 4)

    def conv(c_in: int, c_out: int) -> int:
        return c_in * c_out * 9 + c_out

    # resnet32x4 → resnet8x4: C_t = C_s = 256, k = 0.5 (RepDistiller's Paraphraser without BN, Translator with BN).
    para = conv(256, 256) + conv(256, 128) + conv(128, 128) + conv(128, 128) + conv(128, 256) + conv(256, 256)
    trans = conv(256, 256) + conv(256, 128) + conv(128, 128) + 2 * (256 + 128 + 128)
    assert sum(p.numel() for p in ft.Paraphraser(256).parameters()) == para
    assert sum(p.numel() for p in ft.Translator(256, 256).parameters()) == trans


def _ft_pair() -> tuple[Signals, Signals]:
    return _shapes([(3, 8, 8), (6, 4, 4)]), _shapes([(3, 8, 8), (8, 4, 4)])


def test_ft_init_stage_trains_the_paraphraser_alone_on_reconstruction() -> None:
    s_shapes, t_shapes = _ft_pair()
    distiller = ft.FT(None, None, _context(s_shapes, t_shapes)).double()
    (phase,) = distiller.phases()
    assert (phase.name, phase.epochs, phase.lr, phase.student_mode) == ("init", 30, 0.01, "eval")
    trained = {id(p) for p in distiller.phase_parameters(phase, None)}
    assert trained == {id(p) for p in distiller.paraphraser.parameters()}
    student, teacher = _signals(s_shapes, 0, grad=True), _signals(t_shapes, 10, grad=True)
    terms = distiller.phase_terms(phase, student, teacher, _batch(), PROGRESS)
    _, rebuilt = distiller.paraphraser(teacher.feats[-1].detach())
    expected = ((rebuilt - teacher.feats[-1].detach()) ** 2).mean()
    assert terms["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-12)
    terms["reconstruction"].backward()
    assert teacher.feats[-1].grad is None and student.feats[-1].grad is None


def test_ft_main_stage_trains_translator_not_paraphraser() -> None:
    s_shapes, t_shapes = _ft_pair()
    distiller = ft.FT(None, None, _context(s_shapes, t_shapes)).double()
    assert {id(p) for p in distiller.main_parameters()} == {id(p) for p in distiller.translator.parameters()}
    student, teacher = _signals(s_shapes, 0, grad=True), _signals(t_shapes, 10, grad=True)
    terms = distiller.loss_terms(student, teacher, _batch(), PROGRESS)
    assert set(terms) == {"ce", "ft"}
    factor_s = distiller.translator(student.feats[-1])
    factor_t = distiller.paraphraser.encoder(teacher.feats[-1])
    vs, vt = (
        _factor_loop(factor_s.detach(), "channel_mean_square"),
        _factor_loop(factor_t.detach(), "channel_mean_square"),
    )
    diffs = [abs(a - b) for rs, rt in zip(vs, vt) for a, b in zip(rs, rt)]
    assert terms["ft"].item() == pytest.approx(200.0 * sum(diffs) / len(diffs), rel=1e-9)
    distiller.zero_grad()
    (terms["ce"] + terms["ft"]).backward()
    assert all(p.grad is None for p in distiller.paraphraser.parameters())
    assert all(p.grad is not None for p in distiller.translator.parameters())
    assert teacher.feats[-1].grad is None and student.feats[-1].grad is not None


# ---------------------------------------------------------------- OFD


def _margin_closed_form(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(β, γ²) with statistics.NormalDist, or −3|γ| when P(x < 0) ≤ 0.001."""
    s = abs(gamma)
    unit = statistics.NormalDist()
    mass = unit.cdf(-beta / s)
    return beta - s * unit.pdf(beta / s) / mass if mass > 1e-3 else -3 * s


def _margin_by_quadrature(gamma: float, beta: float, points: int = 200_001) -> float:
    """∫_{−∞}^0 x p(x) dx / ∫_{−∞}^0 p(x) dx on a fine grid (midpoint rule)."""
    s = abs(gamma)
    x = torch.linspace(beta - 12 * s, 0.0, points, dtype=torch.float64)
    x = (x[1:] + x[:-1]) / 2
    density = torch.exp(-0.5 * ((x - beta) / s) ** 2)
    return float((x * density).sum() / density.sum())


def test_ofd_margin_is_the_expected_negative_response() -> None:
    gammas = torch.tensor([1.0, 0.5, -2.0, 1.0, 0.3, 1.0], dtype=torch.float64)
    betas = torch.tensor([0.0, 0.2, -1.0, 2.0, 1.5, 4.0], dtype=torch.float64)
    margins = ofd.bn_margin(gammas, betas)
    for k, (g, b) in enumerate(zip(gammas.tolist(), betas.tolist())):
        assert margins[k].item() == pytest.approx(_margin_closed_form(g, b), rel=1e-9)
        if statistics.NormalDist().cdf(-b / abs(g)) > 1e-3:
            assert margins[k].item() == pytest.approx(_margin_by_quadrature(g, b), rel=1e-5)
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-12)  # half-normal mean
    assert margins[-1].item() == pytest.approx(-3.0)  # P(x < 0) ≈ 3e-5: the −3|γ| fallback
    assert (margins < 0).all()


def _ofd_loop(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> float:
    """MDistiller's three cases per element: (s−m)² if s>m≥t; (s−t)² if s>t>m, t≤0; (s−t)² if t>0."""
    total = 0.0
    for idx in itertools.product(*(range(n) for n in source.shape)):
        s, t, m = source[idx].item(), target[idx].item(), margin[idx[1]].item()
        if t > 0:
            total += (s - t) ** 2
        elif t > m:
            total += (s - t) ** 2 if s > t else 0.0
        else:
            total += (s - m) ** 2 if s > m else 0.0
    return total / source.shape[0]


def test_ofd_partial_l2_matches_case_by_case_definition() -> None:
    source, target = _random((2, 3, 4, 4), 0), _random((2, 3, 4, 4), 1)
    margin = torch.tensor([-0.8, -0.3, -1.5], dtype=torch.float64)
    target[0, 1, 0, :2] = torch.tensor([-0.3, 0.0])  # target exactly at the margin, and at zero
    assert ofd.ofd_loss(source, target, margin).item() == pytest.approx(_ofd_loop(source, target, margin), rel=1e-9)
    below = torch.full((1, 3, 2, 2), -5.0, dtype=torch.float64)
    assert ofd.ofd_loss(below, below + 1.0, margin).item() == 0.0  # student under a negative target: no loss


def test_ofd_stage_weights_halve_towards_the_input() -> None:
    assert ofd.ofd_stage_weights(3) == [0.25, 0.5, 1.0]


def test_ofd_connectors_margins_and_size_on_resnet32x4_to_resnet8x4() -> None:
    s_model, t_model, context = _model_context("resnet8x4", "resnet32x4")
    with torch.no_grad():
        for name in t_model.feature_taps.bn_before_relu:
            bn = t_model.get_submodule(name)
            bn.weight.uniform_(0.2, 1.5)
            bn.bias.uniform_(-1.0, 1.0)
    distiller = ofd.OFD(s_model, t_model, context)
    assert distiller.extra_parameter_count() == 86_912  # methods.md
    assert {f"margin{k}" for k in range(3)} <= set(distiller.state_dict())
    for margin, name in zip(distiller.margins(), t_model.feature_taps.bn_before_relu[1:]):
        bn = t_model.get_submodule(name)
        expected = [_margin_closed_form(g, b) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())]
        torch.testing.assert_close(margin, torch.tensor(expected, dtype=torch.float32))
    assert not t_model.training and not any(p.requires_grad for p in t_model.parameters())


class _TapsOnly(nn.Module):
    """A stand-in teacher: only the BNs before each stage's ReLU, with random affine parameters."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
        for bn in self.bns:
            bn.weight.data = torch.rand(len(bn.weight), generator=generator) + 0.2
            bn.bias.data = torch.rand(len(bn.bias), generator=generator) * 2 - 1
        self.fc = nn.Linear(1, 1)
        names = tuple(f"bns.{k}" for k in range(len(channels)))
        self.feature_taps = FeatureTaps(stages=names, classifier="fc", bn_before_relu=names)


def test_ofd_loss_terms_pool_the_teacher_and_never_reach_it() -> None:
    s_shapes = _shapes([(3, 8, 8), (4, 8, 8), (6, 4, 4)])
    t_shapes = _shapes([(5, 16, 16), (8, 16, 16), (6, 4, 4)])
    distiller = ofd.OFD(None, _TapsOnly([5, 8, 6]), _context(s_shapes, t_shapes), ofd_weight=0.5).double()
    student, teacher = _signals(s_shapes, 0, grad=True), _signals(t_shapes, 10, grad=True)
    terms = distiller.loss_terms(student, teacher, _batch(), PROGRESS)
    expected = 0.0
    for w, c, s, t, m in zip(
        [0.5, 1.0], distiller.connectors, student.preact[1:], teacher.preact[1:], distiller.margins()
    ):
        source = c(s).detach()
        pooled = torch.tensor(
            [_block_mean(x, t.shape[-1] // source.shape[-1]) for x in t.detach().tolist()], dtype=torch.float64
        )
        expected += w * _ofd_loop(source, pooled, m.double())
    assert terms["ofd"].item() == pytest.approx(0.5 * expected, rel=1e-9)
    (terms["ce"] + terms["ofd"]).backward()
    assert all(t.grad is None for t in teacher.preact)
    assert all(p.grad is not None for p in distiller.connectors.parameters())


def test_ofd_refuses_a_teacher_without_bn_before_relu() -> None:
    s_model, t_model, context = _model_context("resnet8", "ShuffleV2")
    with pytest.raises(KdbenchError, match="ShuffleV2"):
        ofd.OFD(s_model, t_model, context)


def test_specs_name_their_defaults_and_family() -> None:
    specs = {spec.name: spec for module in (ab, ft, fsp, ofd) for spec in module.kdbench_register_distillers()}
    assert dict(specs["ab"].defaults) == {"margin": 1.0, "ab_weight": 3e-3, "init_epochs": 30, "ce_weight": 1.0}
    assert dict(specs["fsp"].defaults) == {"fsp_weight": 1.0, "init_epochs": 30, "ce_weight": 1.0}
    assert specs["ft"].defaults["ft_weight"] == 200.0 and specs["ft"].defaults["init_lr"] == 0.01
    assert dict(specs["ofd"].defaults) == {"ofd_weight": 1e-3, "ce_weight": 1.0}
    assert all(spec.family == "feature" for spec in specs.values())
