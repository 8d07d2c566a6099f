"""CRD, ReviewKD and SSKD: pure losses against independent derivations, plus the behaviour that catches real bugs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kdbench_plugins.distillers import crd, reviewkd, sskd

import kdbench
from kdbench import AugmentSpec, Batch, DistillContext, KdbenchError, Progress, Signals
from kdbench.engine import probe_signals as _probe

F64 = torch.float64


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _context(
    student: Signals | None = None,
    teacher: Signals | None = None,
    labels: torch.Tensor | None = None,
    input_size: tuple[int, int, int] = (3, 32, 32),
    augment: AugmentSpec | None = None,
) -> DistillContext:
    return DistillContext(
        num_classes=10,
        input_size=input_size,
        num_train=0 if labels is None else len(labels),
        student_name="s",
        teacher_name="t",
        student_shapes=student,
        teacher_shapes=teacher,
        train_labels=labels,
        mean=(0.5,) * input_size[0],
        std=(0.25,) * input_size[0],
        augment=augment,
    )


def _pair_context(teacher: str, student: str) -> tuple[torch.nn.Module, torch.nn.Module, DistillContext]:
    s_model, t_model = kdbench.create_model(student, 100), kdbench.create_model(teacher, 100)
    cpu = torch.device("cpu")
    context = _context(_probe(s_model, (3, 32, 32), cpu), _probe(t_model, (3, 32, 32), cpu), torch.arange(50) % 10)
    return s_model, t_model, context


# --------------------------------------------------------------------------------------------- CRD


def _contrast_reference(scores: list[list[float]], num_data: int) -> float:
    """RepDistiller's ContrastLoss written as a loop: −Σ log h(positive) − Σ log(1 − h(negative)), over B."""
    total = 0.0
    for row in scores:
        c = (len(row) - 1) / num_data
        total += math.log(row[0] / (row[0] + c + 1e-7))
        total += sum(math.log(c / (p + c + 1e-7)) for p in row[1:])
    return -total / len(scores)


def test_contrast_loss_matches_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 8, generator=generator, dtype=F64) * 3 + 1e-3
    expected = _contrast_reference(scores.tolist(), num_data=40)
    assert crd.contrast_loss(scores, 40).item() == pytest.approx(expected, rel=1e-9)


def test_contrast_loss_pulls_positive_up_and_negatives_down() -> None:
    scores = torch.full((2, 5), 0.3, dtype=F64, requires_grad=True)
    crd.contrast_loss(scores, 10).backward()
    assert (scores.grad[:, 0] < 0).all() and (scores.grad[:, 1:] > 0).all()


def test_momentum_update_closed_form() -> None:
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    new = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    got = crd.momentum_update(rows, new, 0.5)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(got, torch.tensor([[s, s], [0.0, 1.0]], dtype=F64))
    got = crd.momentum_update(rows, new, 0.9)
    torch.testing.assert_close(got[0], torch.tensor([0.9, 0.1], dtype=F64) / math.hypot(0.9, 0.1))


def test_negatives_are_distinct_other_class_samples_and_seeded() -> None:
    labels = torch.arange(28) % 4
    targets = torch.tensor([0, 1, 3, 3])
    draw = crd.draw_negatives(labels, targets, 12, torch.Generator().manual_seed(3))
    assert draw.shape == (4, 12)
    for row, target in zip(draw.tolist(), targets.tolist()):
        assert len(set(row)) == 12 and all(labels[i] != target for i in row)
    torch.testing.assert_close(draw, crd.draw_negatives(labels, targets, 12, torch.Generator().manual_seed(3)))
    assert not torch.equal(draw, crd.draw_negatives(labels, targets, 12, torch.Generator().manual_seed(4)))
    # Drawing as many as there are: every other-class sample exactly once.
    full = crd.draw_negatives(labels, targets, 21, torch.Generator().manual_seed(0))
    for row, target in zip(full.tolist(), targets.tolist()):
        assert sorted(row) == [i for i in range(28) if i % 4 != target]


def test_negatives_are_uniform_over_other_classes() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    draw = crd.draw_negatives(labels, torch.zeros(4000, dtype=torch.int64), 3, torch.Generator().manual_seed(1))
    counts = torch.bincount(draw.flatten(), minlength=10).double() / draw.numel()
    torch.testing.assert_close(counts[2:], torch.full((8,), 1 / 8, dtype=F64), atol=0.01, rtol=0)
    assert counts[:2].sum() == 0


def _crd(nce_k: int = 100, kd_weight: float = 0.0) -> crd.CRD:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    shapes_s, shapes_t = Signals(_meta(2, 5), embedding=_meta(2, 6)), Signals(_meta(2, 5), embedding=_meta(2, 10))
    torch.manual_seed(0)
    return crd.CRD(None, None, _context(shapes_s, shapes_t, labels), feat_dim=4, nce_k=nce_k, kd_weight=kd_weight)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_crd_caps_negatives_and_keeps_banks_in_state_dict() -> None:
    assert _crd(nce_k=100).nce_k == 8  # 12 samples, largest class 4
    assert _crd(nce_k=5).nce_k == 5
    distiller = _crd()
    assert set(distiller.state_dict()) >= {"memory_student", "memory_teacher", "normalizer"}
    assert "labels" not in distiller.state_dict()
    assert distiller.memory_student.shape == (12, 4)
    bound = 1 / math.sqrt(4 / 3)
    assert distiller.memory_student.abs().max() <= bound
    # Banks come from a fixed generator, not the global RNG.
    torch.manual_seed(99)
    torch.testing.assert_close(distiller.memory_teacher, _crd().memory_teacher)


def test_crd_term_matches_reference_computation_and_updates_memory() -> None:
    distiller = _crd().double()
    generator = torch.Generator().manual_seed(5)
    s_emb = torch.randn(3, 6, generator=generator, dtype=F64, requires_grad=True)
    t_emb = torch.randn(3, 10, generator=generator, dtype=F64)
    indices = torch.tensor([4, 0, 9])
    memory_s, memory_t = distiller.memory_student.clone(), distiller.memory_teacher.clone()
    student, teacher = (
        Signals(torch.randn(3, 5, dtype=F64), embedding=s_emb),
        Signals(torch.randn(3, 5), embedding=t_emb),
    )
    batch = Batch(torch.zeros(3, 1), distiller.labels[indices], indices, generator=torch.Generator().manual_seed(7))
    rng = torch.get_rng_state()
    loss = distiller.crd_loss(student, teacher, batch)
    assert torch.equal(rng, torch.get_rng_state()), "CRD must not touch the global RNG"

    # Independent path: gather B×(K+1) bank rows (as RepDistiller) instead of matmul + gather.
    lin_s, lin_t = distiller.embed_student.linear, distiller.embed_teacher.linear
    f_s = _unit(s_emb.detach() @ lin_s.weight.detach().T + lin_s.bias.detach())
    f_t = _unit(t_emb @ lin_t.weight.detach().T + lin_t.bias.detach())
    negatives = crd.draw_negatives(distiller.labels, distiller.labels[indices], 8, torch.Generator().manual_seed(7))
    contrast = torch.cat([indices[:, None], negatives], 1)
    out_s = torch.exp(torch.einsum("bkd,bd->bk", memory_t[contrast], f_s) / 0.07)
    out_t = torch.exp(torch.einsum("bkd,bd->bk", memory_s[contrast], f_t) / 0.07)
    z_s, z_t = out_s.mean().item() * 12, out_t.mean().item() * 12
    expected = _contrast_reference((out_s / z_s).tolist(), 12) + _contrast_reference((out_t / z_t).tolist(), 12)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(distiller.normalizer, torch.tensor([z_s, z_t], dtype=F64), rtol=1e-9, atol=0)

    # Memory: the batch's rows move halfway to the embeddings and are re-normalised; the others stay.
    torch.testing.assert_close(distiller.memory_student[indices], _unit(memory_s[indices] + f_s))
    torch.testing.assert_close(distiller.memory_teacher[indices], _unit(memory_t[indices] + f_t))
    others = torch.tensor([i for i in range(12) if i not in (0, 4, 9)])
    assert torch.equal(distiller.memory_student[others], memory_s[others])

    loss.backward()
    assert s_emb.grad is not None and lin_s.weight.grad is not None and lin_t.weight.grad is not None

    # Z is estimated once, on the first batch.
    z = distiller.normalizer.clone()
    distiller.crd_loss(student, teacher, batch)
    assert torch.equal(z, distiller.normalizer)


def test_crd_terms_and_crd_kd_defaults() -> None:
    host = kdbench.create_plugin_host(strict=True)
    spec, spec_kd = host.distillers.get("crd"), host.distillers.get("crd_kd")
    common = {"ce_weight": 1.0, "crd_weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5}
    assert dict(spec.defaults) == {**common, "kd_weight": 0.0, "temperature": 4.0}
    assert dict(spec_kd.defaults) == {**common, "kd_weight": 1.0, "temperature": 4.0}
    assert spec.family == spec_kd.family == "feature"
    student = Signals(torch.randn(3, 5, dtype=F64), embedding=torch.randn(3, 6))
    teacher = Signals(torch.randn(3, 5, dtype=F64), embedding=torch.randn(3, 10))
    batch = Batch(torch.zeros(3, 1), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), generator=torch.Generator())
    progress = Progress(0, 1, 0, 1)
    assert set(_crd().loss_terms(student, teacher, batch, progress)) == {"ce", "crd"}
    terms = _crd(kd_weight=1.0).loss_terms(student, teacher, batch, progress)
    p_t, log_p_s = torch.softmax(teacher.logits / 4, 1), torch.log_softmax(student.logits / 4, 1)
    kd = 16 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-9)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student.logits, batch.targets).item(), rel=1e-6)


def test_crd_extra_parameters_resnet32x4_to_resnet8x4() -> None:
    student, teacher, context = _pair_context("resnet32x4", "resnet8x4")
    distiller = crd.CRD(student, teacher, context)
    assert distiller.extra_parameter_count() == 2 * (256 * 128 + 128) == 65_792


# ---------------------------------------------------------------------------------------- ReviewKD


def _block_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def _hcl_reference(fs: torch.Tensor, ft: torch.Tensor) -> float:
    """Closed form per level: weights 1, ½, ¼, ⅛ on the full map and the pools that are smaller than the map."""
    height = fs.shape[2]
    sizes = [s for s in (4, 2, 1) if s < height]
    terms = [((fs - ft) ** 2).mean().item()]
    terms += [((_block_mean(fs, s) - _block_mean(ft, s)) ** 2).mean().item() for s in sizes]
    weights = [0.5**i for i in range(len(terms))]
    return sum(w * t for w, t in zip(weights, terms)) / sum(weights)


def test_hcl_loss_matches_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1)]
    fs = [torch.randn(*s, generator=generator, dtype=F64) for s in shapes]
    ft = [torch.randn(*s, generator=generator, dtype=F64) for s in shapes]
    expected = sum(_hcl_reference(a, b) for a, b in zip(fs, ft))
    assert reviewkd.hcl_loss(fs, ft).item() == pytest.approx(expected, rel=1e-9)
    # 8×8 level by hand: (mse + ½·m4 + ¼·m2 + ⅛·m1) / 1.875
    assert _hcl_reference(fs[0], ft[0]) == pytest.approx(reviewkd.hcl_loss(fs[:1], ft[:1]).item(), rel=1e-9)


def test_abf_fuses_with_attention_then_resizes() -> None:
    abf = reviewkd.ABF(3, 4, 5, fuse=True).double().eval()
    torch.nn.init.zeros_(abf.att_conv[0].weight)
    torch.nn.init.zeros_(abf.att_conv[0].bias)  # sigmoid(0) = ½ for both maps
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    residual = torch.randn(2, 4, 2, 2, dtype=F64)
    out, fused = abf(x, residual, (8, 8))
    bn = abf.conv1[1]
    mapped = torch.einsum("oc,nchw->nohw", abf.conv1[0].weight[:, :, 0, 0], x) / math.sqrt(1 + bn.eps)
    upsampled = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    # The fused map is resized to the teacher's 8×8 and passed on at that size (as the reference's ABF).
    expected = (0.5 * mapped + 0.5 * upsampled).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(fused, expected)
    assert out.shape == (2, 5, 8, 8)
    torch.testing.assert_close(out, abf.conv2(expected))


def test_reviewkd_parameters_match_reference_and_respect_max_mid_channel() -> None:
    student, teacher, context = _pair_context("resnet32x4", "resnet8x4")
    assert reviewkd.ReviewKD(student, teacher, context).extra_parameter_count() == 1_808_774
    limited = reviewkd.ReviewKD(student, teacher, context, max_mid_channel=64)
    assert [abf.conv1[0].out_channels for abf in limited.abfs] == [64, 64, 64, 64]
    channels = [(64, 64), (128, 128), (256, 256), (256, 256)]
    expected = sum(
        i * 64 + 2 * 64 + 64 * o * 9 + 2 * o + (2 * 64 * 2 + 2) * (k < 3) for k, (i, o) in enumerate(channels)
    )
    assert limited.extra_parameter_count() == expected


def _review_setup(**params: object) -> tuple[reviewkd.ReviewKD, Signals, Signals]:
    s_feats, t_feats = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2)], [(4, 8, 8), (5, 8, 8), (7, 4, 4), (9, 2, 2)]
    shapes_s = Signals(_meta(2, 3), feats=[_meta(2, *s) for s in s_feats], embedding=_meta(2, 8))
    shapes_t = Signals(_meta(2, 3), preact=[_meta(2, *s) for s in t_feats], embedding=_meta(2, 9))
    torch.manual_seed(0)
    distiller = reviewkd.ReviewKD(None, None, _context(shapes_s, shapes_t), **params)
    student = Signals(
        torch.randn(2, 3, requires_grad=True),
        feats=[torch.randn(2, *s, requires_grad=True) for s in s_feats],
        embedding=torch.randn(2, 8, requires_grad=True),
    )
    teacher = Signals(
        torch.randn(2, 3),
        preact=[torch.randn(2, *s, requires_grad=True) for s in t_feats],
        embedding=torch.randn(2, 9, requires_grad=True),
    )
    return distiller, student, teacher


def test_reviewkd_terms_ramp_and_gradients_stay_off_the_teacher() -> None:
    distiller, student, teacher = _review_setup()
    outputs = distiller.review(student.feats, student.embedding)
    assert [tuple(o.shape[1:]) for o in outputs] == [(5, 8, 8), (7, 4, 4), (9, 2, 2), (9, 1, 1)]
    batch = Batch(torch.zeros(2, 1), torch.tensor([0, 2]), torch.arange(2))
    hcl = reviewkd.hcl_loss(outputs, [*teacher.preact[1:], teacher.embedding[:, :, None, None]]).item()
    for epoch, ramp in [(0, 1 / 20), (18, 19 / 20), (19, 1.0), (20, 1.0)]:
        terms = distiller.loss_terms(student, teacher, batch, Progress(epoch, 240, 0, 1))
        assert terms["review"].item() == pytest.approx(5.0 * ramp * hcl, rel=1e-5)
    sum(terms.values()).backward()
    assert all(t.grad is None for t in (*teacher.preact, teacher.embedding))
    assert student.feats[0].grad is None, "the stem is not reviewed"
    assert all(f.grad is not None for f in (*student.feats[1:], student.embedding))
    assert all(p.grad is not None for p in distiller.parameters())


def test_reviewkd_ramp_over_zero_based_epochs_as_the_authors_train_py() -> None:
    distiller, student, teacher = _review_setup(warmup_first_epoch=0)
    batch = Batch(torch.zeros(2, 1), torch.tensor([0, 2]), torch.arange(2))
    with torch.no_grad():
        full = distiller.loss_terms(student, teacher, batch, Progress(20, 240, 0, 1))["review"].item()
        for epoch, ramp in [(0, 0.0), (1, 1 / 20), (19, 19 / 20), (20, 1.0)]:
            terms = distiller.loss_terms(student, teacher, batch, Progress(epoch, 240, 0, 1))
            assert terms["review"].item() == pytest.approx(ramp * full, rel=1e-6, abs=0.0)


# -------------------------------------------------------------------------------------------- SSKD


def _views_reference(raw: torch.Tensor, flips: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int):
    """SSKD's loader per image: flip, numpy rot90 on H×W×C, zero-padded crop — one view at a time."""
    out = []
    size = raw.shape[-1]
    for i in range(raw.shape[0]):
        image = raw[i].permute(1, 2, 0).numpy()
        if flips[i]:
            image = image[:, ::-1, :]
        for k in range(4):
            rotated = np.rot90(image, k)
            padded = np.zeros((size + 2 * pad, size + 2 * pad, image.shape[2]), dtype=image.dtype)
            padded[pad : pad + size, pad : pad + size] = rotated
            row = 4 * i + k
            crop = padded[int(dy[row]) : int(dy[row]) + size, int(dx[row]) : int(dx[row]) + size]
            out.append(torch.from_numpy(crop.copy()).permute(2, 0, 1))
    return torch.stack(out)


def test_rotation_views_match_numpy_rot90_and_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (3, 2, 5, 5), generator=generator, dtype=torch.uint8)
    flips, dy, dx = sskd.draw_view_params(3, 2, True, torch.Generator().manual_seed(1))
    assert dy.shape == dx.shape == (12,) and int(dy.max()) <= 4
    got = sskd.rotation_views(raw, flips, dy, dx, 2)
    assert torch.equal(got, _views_reference(raw, flips, dy, dx, 2))
    plain = sskd.rotation_views(raw, torch.zeros(3, dtype=torch.bool), dy, dx, 0)
    assert torch.equal(plain, _views_reference(raw, torch.zeros(3), torch.zeros(12), torch.zeros(12), 0))


def _cosine_rows(rep: torch.Tensor) -> list[list[float]]:
    rows = rep.tolist()
    batch = len(rows) // 4

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    rotated = [rows[4 * i + k] for i in range(batch) for k in (1, 2, 3)]
    return [[cos(r, rows[4 * j]) for j in range(batch)] for r in rotated]


def test_similarity_matrix_and_head_loss_match_loops() -> None:
    rep = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    expected = _cosine_rows(rep)
    torch.testing.assert_close(sskd.similarity_matrix(rep), torch.tensor(expected, dtype=F64))
    ce = 0.0
    for r, row in enumerate(expected):
        ce += math.log(sum(math.exp(v) for v in row)) - row[r // 3]
    assert sskd.ss_head_loss(rep).item() == pytest.approx(ce / len(expected), rel=1e-9)


def test_soft_kl_rows_matches_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 6, generator=generator, dtype=F64), torch.randn(4, 6, generator=generator, dtype=F64)
    for temperature in (0.5, 4.0):
        got = sskd.soft_kl_rows(s, t, temperature)
        for n in range(4):
            p_s = torch.softmax(s[n] / temperature, 0).tolist()
            p_t = torch.softmax(t[n] / temperature, 0).tolist()
            kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s)) * temperature**2
            assert got[n].item() == pytest.approx(kl, rel=1e-9)


def _keep_reference(scores: torch.Tensor, targets: torch.Tensor, ratio: float) -> list[int]:
    """SSKD's selection: rank of the target in the descending order; keep correct + int(ratio·wrong) best ranked."""
    ranks = []
    for row, target in zip(scores.tolist(), targets.tolist()):
        order = sorted(range(len(row)), key=lambda c: -row[c])
        ranks.append(order.index(target))
    wrong = sum(r > 0 for r in ranks)
    keep = len(ranks) - wrong + int(wrong * ratio)
    return sorted(sorted(range(len(ranks)), key=lambda r: (ranks[r], r))[:keep])


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 1.0])
def test_error_rank_keep_matches_reference_selection(ratio: float) -> None:
    scores = torch.randn(30, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    targets = torch.arange(30) % 6
    mask = sskd.error_rank_keep(scores, targets, ratio)
    assert mask.nonzero().flatten().tolist() == _keep_reference(scores, targets, ratio)


def _sskd(pad: int = 1, flip: bool = True) -> sskd.SSKD:
    shapes_s, shapes_t = Signals(_meta(2, 7), embedding=_meta(2, 6)), Signals(_meta(2, 7), embedding=_meta(2, 8))
    torch.manual_seed(0)
    return sskd.SSKD(None, None, _context(shapes_s, shapes_t, input_size=(2, 5, 5), augment=AugmentSpec(pad, flip)))


def test_sskd_prepare_batch_builds_four_normalised_views_from_the_generator() -> None:
    distiller = _sskd(pad=0, flip=False)
    raw = torch.randint(0, 256, (3, 2, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = Batch(
        torch.zeros(3, 2, 5, 5), torch.tensor([1, 2, 3]), torch.arange(3), raw=raw, generator=torch.Generator()
    )
    out = distiller.prepare_batch(batch)
    assert out.images.shape == (12, 2, 5, 5) and torch.equal(out.targets, batch.targets)
    for i in range(3):
        for k in range(4):
            expected = (torch.rot90(raw[i], k, dims=(1, 2)).double() / 255 - 0.5) / 0.25
            torch.testing.assert_close(out.images[4 * i + k].double(), expected, rtol=1e-6, atol=1e-6)
    augmented = _sskd(pad=1, flip=True)
    rng = torch.get_rng_state()
    first = augmented.prepare_batch(
        Batch(batch.images, batch.targets, batch.indices, raw, torch.Generator().manual_seed(3))
    )
    again = augmented.prepare_batch(
        Batch(batch.images, batch.targets, batch.indices, raw, torch.Generator().manual_seed(3))
    )
    assert torch.equal(first.images, again.images) and torch.equal(rng, torch.get_rng_state())


def test_sskd_phases_train_only_the_teacher_head() -> None:
    distiller = _sskd()
    phases = distiller.phases()
    assert [(p.name, p.epochs, p.lr, p.lr_milestones, p.lr_gamma) for p in phases] == [
        ("teacher_ss", 60, 0.05, (30, 45), 0.1)
    ]
    head_t = {id(p) for p in distiller.teacher_head.parameters()}
    head_s = {id(p) for p in distiller.student_head.parameters()}
    assert {id(p) for p in distiller.phase_parameters(phases[0], torch.nn.Linear(1, 1))} == head_t
    assert {id(p) for p in distiller.main_parameters()} == head_s
    assert distiller.signals(phases[0]) == (frozenset(), frozenset({"embedding"}))
    assert distiller.signals(None) == (frozenset({"logits", "embedding"}),) * 2
    teacher = Signals(torch.randn(8, 7), embedding=torch.randn(8, 8))
    student = Signals(torch.randn(8, 7, requires_grad=True), embedding=torch.randn(8, 6, requires_grad=True))
    batch = Batch(torch.zeros(8, 1), torch.tensor([0, 1]), torch.arange(2))
    terms = distiller.phase_terms(phases[0], student, teacher, batch, Progress(0, 30, 0, 1, "teacher_ss"))
    expected = sskd.ss_head_loss(distiller.teacher_head(teacher.embedding))
    assert set(terms) == {"ss_head"} and terms["ss_head"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["ss_head"].backward()
    assert all(p.grad is not None for p in distiller.teacher_head.parameters())
    assert all(p.grad is None for p in distiller.student_head.parameters()) and student.embedding.grad is None


def test_sskd_main_terms_follow_the_reference_formulas() -> None:
    distiller = _sskd().double()
    generator = torch.Generator().manual_seed(6)
    batch_size, classes = 5, 7
    s_logits = torch.randn(4 * batch_size, classes, generator=generator, dtype=F64, requires_grad=True)
    t_logits = torch.randn(4 * batch_size, classes, generator=generator, dtype=F64) * 3
    s_emb = torch.randn(4 * batch_size, 6, generator=generator, dtype=F64, requires_grad=True)
    t_emb = torch.randn(4 * batch_size, 8, generator=generator, dtype=F64)
    targets = torch.randint(0, classes, (batch_size,), generator=generator)
    batch = Batch(torch.zeros(4 * batch_size, 1), targets, torch.arange(batch_size))
    terms = distiller.loss_terms(
        Signals(s_logits, embedding=s_emb), Signals(t_logits, embedding=t_emb), batch, Progress(0, 240, 0, 1)
    )

    # The reference's own recipe: boolean row masks, KL 'batchmean' on index lists.
    nor = torch.arange(4 * batch_size) % 4 == 0
    aug = ~nor

    def kl(log_s: torch.Tensor, p_t: torch.Tensor, rows: list[int], temperature: float) -> float:
        return F.kl_div(log_s[rows], p_t[rows], reduction="batchmean").item() * temperature**2

    ce = F.cross_entropy(s_logits[nor], targets).item()
    kd = kl(F.log_softmax(s_logits[nor] / 4, 1), F.softmax(t_logits[nor] / 4, 1), list(range(batch_size)), 4.0)
    aug_targets = targets.repeat_interleave(3)
    tf_rows = _keep_reference(F.softmax(t_logits[aug] / 4, 1), aug_targets, 1.0)
    tf = kl(F.log_softmax(s_logits[aug] / 4, 1), F.softmax(t_logits[aug] / 4, 1), tf_rows, 4.0)
    with torch.no_grad():
        s_simi = torch.tensor(_cosine_rows(distiller.student_head(s_emb)), dtype=F64)
        t_simi = torch.tensor(_cosine_rows(distiller.teacher_head(t_emb)), dtype=F64)
    ss_rows = _keep_reference(t_simi, torch.arange(batch_size).repeat_interleave(3), 0.75)
    ss = kl(F.log_softmax(s_simi / 0.5, 1), F.softmax(t_simi / 0.5, 1), ss_rows, 0.5)
    expected = {"ce": 0.1 * ce, "kd": 0.9 * kd, "tf": 2.7 * tf, "ss": 10.0 * ss}
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(expected, rel=1e-9)

    sum(terms.values()).backward()
    assert s_emb.grad is not None and all(p.grad is not None for p in distiller.student_head.parameters())
    assert all(p.grad is None for p in distiller.teacher_head.parameters())


def test_sskd_rejects_non_square_images() -> None:
    shapes = Signals(_meta(2, 7), embedding=_meta(2, 6))
    with pytest.raises(KdbenchError, match="square"):
        sskd.SSKD(None, None, _context(shapes, shapes, input_size=(3, 4, 6)))
