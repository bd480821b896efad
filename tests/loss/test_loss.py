"""The chunked loss against a straightforward full-logits computation of the method doc."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from axolotl_dskd.loss.chunked import chunked_loss, term_weights
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import DIVERGENCES, DivergenceConfig, divergence
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.normaliser import divided_weights, pair_counts
from axolotl_dskd.loss.projectors import T2SProjector
from tests.oracles.reference_loss import reference_dskd, reference_paper

ROWS, D_S, D_T, V_S, V_T, REAL_VOCAB = 13, 6, 10, 30, 34, 30


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    student_hidden = torch.randn(ROWS, D_S, requires_grad=True)
    teacher_hidden = torch.randn(ROWS, D_T)
    labels = torch.randint(0, REAL_VOCAB, (ROWS,))
    student_head = torch.nn.Parameter(torch.randn(V_S, D_S))
    teacher_head = torch.randn(V_T, D_T)  # 4 padded rows past the real vocab
    projector = T2SProjector(D_T, D_S)
    s2t_weight = torch.randn(D_T, D_S)
    heads = Heads(student_head, teacher_head, REAL_VOCAB, REAL_VOCAB, projector.weight, s2t_weight)
    return student_hidden, teacher_hidden, labels, heads


def _reference_vanilla(student_hidden, teacher_hidden, labels, heads, cfg: LossConfig) -> torch.Tensor:
    z_s = student_hidden @ heads.student_head.T
    z_t = teacher_hidden @ heads.teacher_head.T
    kd = divergence(z_t[:, :REAL_VOCAB], z_s[:, :REAL_VOCAB], cfg.divergence).sum()
    return (1 - cfg.kd_ratio) * F.cross_entropy(z_s, labels, reduction="sum") + cfg.kd_ratio * kd


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_chunked_dskd_matches_reference(name: str, chunk_size: int) -> None:
    student_hidden, teacher_hidden, labels, heads = _setup()
    cfg = LossConfig(kd_ratio=0.3, divergence=DivergenceConfig(name=name), chunk_size=chunk_size)
    trained = [student_hidden, heads.student_head, heads.t2s_weight]
    expected = reference_dskd(student_hidden, teacher_hidden, labels, heads, cfg)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for got_grad, expected_grad in zip(_grads(got, trained), _grads(expected, trained), strict=True):
        assert torch.allclose(got_grad, expected_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("agreement_mask", [True, False])
def test_agreement_mask_switch(agreement_mask: bool) -> None:
    student_hidden, teacher_hidden, labels, heads = _setup(seed=3)
    cfg = LossConfig(agreement_mask=agreement_mask, chunk_size=5)
    expected = reference_dskd(student_hidden, teacher_hidden, labels, heads, cfg)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["forward_kl", "adaptive_kl"])
def test_vanilla_kd_matches_reference(name: str) -> None:
    student_hidden, teacher_hidden, labels, heads = _setup(seed=1)
    cfg = LossConfig(method="vanilla_kd", divergence=DivergenceConfig(name=name), chunk_size=4)
    expected = _reference_vanilla(student_hidden, teacher_hidden, labels, heads, cfg)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    trained = [student_hidden, heads.student_head]
    for got_grad, expected_grad in zip(_grads(got, trained), _grads(expected, trained), strict=True):
        assert torch.allclose(got_grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_counts_report_tokens_agreement_and_accuracy() -> None:
    student_hidden, teacher_hidden, labels, heads = _setup(seed=2)
    *_, counts = chunked_loss(student_hidden, teacher_hidden, labels, heads, LossConfig(chunk_size=3))
    with torch.no_grad():
        z_t2s = F.linear(teacher_hidden, heads.t2s_weight) @ heads.student_head.T
        z_t = teacher_hidden @ heads.teacher_head.T
        teacher_pred = z_t[:, :REAL_VOCAB].argmax(-1)
        t2s_pred = z_t2s[:, :REAL_VOCAB].argmax(-1)
        s2t_pred = ((student_hidden @ heads.s2t_weight.T) @ heads.teacher_head.T)[:, :REAL_VOCAB].argmax(-1)
    assert counts.stack().tolist() == [
        ROWS,
        ROWS,
        ROWS,
        (t2s_pred == teacher_pred).sum().item(),
        (t2s_pred == labels).sum().item(),
        (s2t_pred == teacher_pred).sum().item(),
        ROWS,  # one vocabulary: the teacher has every gold token
        (teacher_pred == labels).sum().item(),
        pytest.approx(F.cross_entropy(z_t, labels, reduction="sum").item(), rel=1e-5),
    ]


def _reference_cross(student_hidden, teacher_hidden, labels, heads, cfg: LossConfig) -> torch.Tensor:
    """Method doc 4.2: pairs first (teacher argmax mapped to the student vocab, unmapped
    pairs skipped entirely), then CE alone on the unpaired student rows."""
    n_pairs = teacher_hidden.shape[0]
    paired = student_hidden[:n_pairs]
    z_s_all = student_hidden @ heads.student_head.T
    z_s, z_t = z_s_all[:n_pairs], teacher_hidden @ heads.teacher_head.T
    label = heads.teacher_to_student[z_t[:, :REAL_VOCAB].argmax(-1)]
    valid = label >= 0
    z_t2s = F.linear(teacher_hidden, heads.t2s_weight) @ heads.student_head.detach().T
    agree = valid & (z_t2s[:, :REAL_VOCAB].argmax(-1) == label)
    t2s_ce = F.cross_entropy(z_t2s[valid], label[valid], reduction="sum")
    t2s_kd = (divergence(z_t2s.detach(), z_s, cfg.divergence) * agree).sum()
    z_s2t = (paired @ heads.s2t_weight.T) @ heads.teacher_head.T
    s2t_kd = (divergence(z_t, z_s2t, cfg.divergence) * valid).sum()
    ce = F.cross_entropy(z_s_all, labels, reduction="sum")
    return (1 - cfg.kd_ratio) * ce + cfg.kd_ratio * (t2s_ce + t2s_kd + s2t_kd)


@pytest.mark.parametrize("chunk_size", [2, 5, 1024])
def test_cross_tokenizer_pairs_match_reference(chunk_size: int) -> None:
    student_hidden, teacher_hidden, labels, heads = _setup(seed=4)
    teacher_hidden = teacher_hidden[:8]  # 8 aligned pairs, 5 unaligned student rows
    heads.teacher_to_student = torch.randint(0, REAL_VOCAB, (V_T,))
    heads.teacher_to_student[::3] = -1  # teacher tokens with no student token
    cfg = LossConfig(chunk_size=chunk_size)
    expected = _reference_cross(student_hidden, teacher_hidden, labels, heads, cfg)
    got, _, counts = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    trained = [student_hidden, heads.student_head, heads.t2s_weight]
    for got_grad, expected_grad in zip(_grads(got, trained), _grads(expected, trained), strict=True):
        assert torch.allclose(got_grad, expected_grad, atol=1e-5, rtol=1e-5)
    assert (counts.n_tokens.item(), counts.n_pairs.item()) == (ROWS, 8)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_chunked_dskd_matches_reference_in_bf16(name: str) -> None:
    """The loss (an fp32 sum) matches to 1e-5, and so does the fp32 projector's gradient.
    Gradients of bf16 tensors are bf16 numbers (epsilon 7.8e-3) summed over chunks in
    another order, so they match to 2 bf16 ulps."""
    student_hidden, teacher_hidden, labels, heads = _setup(seed=5)
    student_hidden = student_hidden.detach().bfloat16().requires_grad_(True)
    teacher_hidden = teacher_hidden.bfloat16()
    heads.student_head = torch.nn.Parameter(heads.student_head.detach().bfloat16())
    heads.teacher_head = heads.teacher_head.bfloat16()
    cfg = LossConfig(divergence=DivergenceConfig(name=name), chunk_size=4)
    trained = [student_hidden, heads.student_head, heads.t2s_weight]
    expected = reference_dskd(student_hidden, teacher_hidden, labels, heads, cfg)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for got_grad, expected_grad in zip(_grads(got, trained), _grads(expected, trained), strict=True):
        tolerance = max(2 * torch.finfo(got_grad.dtype).eps, 1e-5)
        assert torch.allclose(got_grad.float(), expected_grad.float(), atol=tolerance * 0.1, rtol=tolerance)


def test_bf16_projector_trains_like_the_fp32_one() -> None:
    """DeepSpeed's bf16 engine casts every parameter of the student, the projector it holds
    included: the loss takes a bf16 projector and gives it a bf16 gradient equal to the
    fp32 one up to bf16 rounding."""
    student_hidden, teacher_hidden, labels, heads = _setup(seed=7)
    cfg = LossConfig(chunk_size=4)
    fp32_loss = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    (fp32_grad,) = _grads(fp32_loss, [heads.t2s_weight])
    bf16_projector = torch.nn.Parameter(heads.t2s_weight.detach().bfloat16())
    heads.t2s_weight = bf16_projector
    bf16_loss = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    (bf16_grad,) = _grads(bf16_loss, [bf16_projector])
    assert bf16_grad.dtype == torch.bfloat16
    assert bf16_loss.item() == pytest.approx(fp32_loss.item(), rel=2e-2)
    assert torch.allclose(bf16_grad.float(), fp32_grad, atol=2e-2 * fp32_grad.abs().max().item(), rtol=2e-2)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_paper_normalisation_matches_the_reference_criterion(cross: bool, chunk_size: int) -> None:
    student_hidden, teacher_hidden, labels, heads = _setup(seed=10)
    if cross:
        teacher_hidden = teacher_hidden[:9]  # 9 aligned pairs, 4 unaligned student rows
        heads.teacher_to_student = torch.randint(0, REAL_VOCAB, (V_T,))
        heads.teacher_to_student[::3] = -1
    cfg = LossConfig(kd_ratio=0.4, chunk_size=chunk_size, normalization="paper")
    loss_denom = 17.0
    pairs = pair_counts(teacher_hidden, heads, chunk_size)
    assert 0 < pairs[1] < pairs[0]  # some agreeing pairs, fewer than the valid ones
    weights = divided_weights(cfg, term_weights(cfg), loss_denom, loss_denom, 1.0, pairs, cross)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg, weights)[0]
    expected = reference_paper(student_hidden, teacher_hidden, labels, heads, cfg, loss_denom)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    trained = [student_hidden, heads.student_head, heads.t2s_weight]
    for got_grad, expected_grad in zip(_grads(got, trained), _grads(expected, trained), strict=True):
        assert torch.allclose(got_grad, expected_grad, atol=1e-5, rtol=1e-5)
    # and it is another loss than the global normalisation's
    global_cfg = replace(cfg, normalization="global")
    global_weights = divided_weights(global_cfg, term_weights(cfg), loss_denom, loss_denom, 1.0, None, cross)
    assert chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg, global_weights)[0].item() != pytest.approx(
        expected.item(), rel=1e-3
    )
