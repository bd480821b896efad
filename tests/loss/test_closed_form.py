"""The hand-written forward-KL chunk against autograd through the DSKD objective's terms."""

from dataclasses import replace

import pytest
import torch

from axolotl_dskd.loss.chunked import chunked_loss, closed_form
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import DivergenceConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.objectives import DSKD, OBJECTIVES
from axolotl_dskd.loss.terms import LossTerms
from tests.oracles.reference_loss import reference_dskd

ROWS, HIDDEN, V_S, V_T, REAL_VOCAB = 11, 8, 30, 34, 29


def _inputs(seed: int, cross: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Heads]:
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(ROWS, HIDDEN, generator=generator)
    teacher_hidden = torch.randn(ROWS, HIDDEN, generator=generator)
    labels = torch.randint(0, REAL_VOCAB, (ROWS,), generator=generator)
    mapping = reverse = None
    if cross:
        mapping = torch.arange(V_T).clamp_max(REAL_VOCAB - 1)
        mapping[::3] = -1  # teacher tokens with no student token
        reverse = torch.arange(V_S)
        reverse[::3] = -1  # gold tokens the teacher cannot say
    # the student head starts as the teacher's and the projector near identity, so that
    # some projected teacher rows agree with the teacher's prediction and some do not
    teacher_head = torch.randn(V_T, HIDDEN, generator=generator)
    heads = Heads(
        student_head=teacher_head[:V_S] + 0.3 * torch.randn(V_S, HIDDEN, generator=generator),
        teacher_head=teacher_head,
        student_vocab=REAL_VOCAB,
        teacher_vocab=REAL_VOCAB,
        t2s_weight=torch.eye(HIDDEN) + 0.4 * torch.randn(HIDDEN, HIDDEN, generator=generator),
        s2t_weight=torch.eye(HIDDEN) + 0.4 * torch.randn(HIDDEN, HIDDEN, generator=generator),
        teacher_to_student=mapping,
        student_to_teacher=reverse,
    )
    return student_hidden, teacher_hidden, labels, heads


def _block(heads: Heads) -> torch.Tensor:
    """A workspace filled with NaN: the closed form must not read what it did not write."""
    return closed_form.workspace(ROWS, heads, torch.device("cpu")).fill_(torch.nan)


def _by_autograd(student_hidden, teacher_hidden, labels, heads: Heads, cfg: LossConfig, weights: LossTerms):
    hidden = student_hidden.detach().requires_grad_(True)
    head = heads.student_head.detach().requires_grad_(True)
    projector = heads.t2s_weight.detach().requires_grad_(True)
    trained_heads = replace(heads, student_head=head, t2s_weight=projector)
    sums, counts = DSKD().terms(hidden, teacher_hidden, labels, trained_heads, cfg)
    grads = torch.autograd.grad((sums.stack() * weights.stack()).sum(), [hidden, head, projector])
    return sums.stack().detach(), counts.stack(), grads


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("agreement_mask", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.7])
@pytest.mark.parametrize("weights", [[0.5, 0.5, 0.5, 0.5, 0.5], [0.0, 0.3, 0.7, 1.1, 0.0]])
def test_closed_form_equals_autograd(cross: bool, agreement_mask: bool, temperature: float, weights: list) -> None:
    student_hidden, teacher_hidden, labels, heads = _inputs(seed=0, cross=cross)
    cfg = LossConfig(agreement_mask=agreement_mask, divergence=DivergenceConfig(temperature=temperature))
    term_weights = LossTerms(*weights)
    expected_sums, expected_counts, expected_grads = _by_autograd(
        student_hidden, teacher_hidden, labels, heads, cfg, term_weights
    )
    result = closed_form.pair_chunk(
        student_hidden, teacher_hidden, labels, heads, cfg, term_weights, (True, True, True), _block(heads)
    )
    assert result is not None
    sums, counts, grads = result
    assert torch.allclose(sums.stack(), expected_sums, rtol=1e-5, atol=1e-5)
    assert counts.stack()[:-1].tolist() == expected_counts[:-1].tolist()  # the last is the teacher's NLL sum
    assert counts.teacher_gold_nll.item() == pytest.approx(expected_counts[-1].item(), rel=1e-5)
    for got, expected in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    n_valid, n_agree = counts.n_valid.item(), counts.n_agree.item()
    assert 0 < n_agree < n_valid and sums.t2s_kd_loss > 0  # the agreement mask keeps some pairs, drops others


def test_only_the_needed_gradients_are_built() -> None:
    student_hidden, teacher_hidden, labels, heads = _inputs(seed=1, cross=False)
    result = closed_form.pair_chunk(
        student_hidden,
        teacher_hidden,
        labels,
        heads,
        LossConfig(),
        LossTerms.of(1.0, 1.0),
        (True, False, True),
        _block(heads),
    )
    assert result is not None
    hidden_grad, head_grad, projector_grad = result[2]
    assert head_grad is None and hidden_grad is not None and projector_grad is not None


def test_other_divergences_and_vanilla_kd_use_autograd() -> None:
    dskd, vanilla_kd = OBJECTIVES["dskd"], OBJECTIVES["vanilla_kd"]
    assert dskd.has_closed_form(LossConfig())
    assert not dskd.has_closed_form(LossConfig(divergence=DivergenceConfig(name="reverse_kl")))
    assert not vanilla_kd.has_closed_form(LossConfig(method="vanilla_kd"))


def test_a_non_finite_logit_falls_back_to_autograd_with_the_same_loss() -> None:
    """An infinite padded teacher-head row makes that column +-inf: the closed form declines
    the chunk and the masked autograd path gives the reference's loss and projector gradient
    (the student rows' gradient is NaN in both: inf enters the s2t head product)."""
    student_hidden, teacher_hidden, labels, heads = _inputs(seed=2, cross=False)
    heads.teacher_head[-1] = torch.inf
    cfg = LossConfig(chunk_size=4)
    declined = closed_form.pair_chunk(
        student_hidden, teacher_hidden, labels, heads, cfg, LossTerms.of(1.0, 1.0), (True,) * 3, _block(heads)
    )
    assert declined is None
    heads.t2s_weight.requires_grad_(True)
    got = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    expected = reference_dskd(student_hidden, teacher_hidden, labels, heads, cfg)
    assert torch.isfinite(got) and got.item() == pytest.approx(expected.item(), rel=1e-5)
    (got_grad,) = torch.autograd.grad(got, [heads.t2s_weight])
    (expected_grad,) = torch.autograd.grad(expected, [heads.t2s_weight])
    assert torch.allclose(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("columns", "width", "block"), [(50, 50, 8), (50, 45, 8), (50, 7, 8), (64, 64, 8), (30, 29, 1024)]
)
def test_row_argmax_is_torch_argmax_first_maximum_included(columns: int, width: int, block: int) -> None:
    generator = torch.Generator().manual_seed(columns + width)
    ties = torch.randint(0, 4, (40, columns), generator=generator).float()  # many equal maxima per row
    spread = torch.randn(40, columns, generator=generator)
    for logits in (ties, spread):
        expected = logits[:, :width].argmax(-1)
        assert torch.equal(closed_form.row_argmax(logits, width, block), expected)
