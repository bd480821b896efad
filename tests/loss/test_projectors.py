"""Pseudo-inverse ("ideal") init of both projectors and the s2t cache."""

import pytest
import torch

from axolotl_dskd.loss.projectors import S2TMap, T2SProjector, TokenPairs, pinv_t2s_weight

D_STUDENT, D_TEACHER, VOCAB = 8, 12, 40


def _heads(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, D_STUDENT, generator=generator), torch.randn(VOCAB, D_TEACHER, generator=generator)


def test_t2s_logit_identity_when_student_head_is_invertible_on_the_used_vocab() -> None:
    student_head, teacher_head = _heads()
    vocab = TokenPairs.first_ids(D_STUDENT)  # square, invertible student head on these ids
    projector = T2SProjector(D_TEACHER, D_STUDENT)
    rel_error = projector.init_pinv(student_head, teacher_head, vocab)
    teacher_hidden = torch.randn(5, D_TEACHER)
    projected_logits = projector(teacher_hidden) @ student_head[:D_STUDENT].T
    assert torch.allclose(projected_logits, teacher_hidden @ teacher_head[:D_STUDENT].T, atol=1e-4)
    assert rel_error < 1e-5


def test_t2s_logit_identity_over_the_whole_vocab_when_teacher_head_lies_in_student_row_space() -> None:
    student_head, _ = _heads()
    teacher_head = student_head @ torch.randn(D_STUDENT, D_TEACHER)
    weight, rel_error = pinv_t2s_weight(student_head, teacher_head, TokenPairs.first_ids(VOCAB))
    teacher_hidden = torch.randn(5, D_TEACHER)
    assert torch.allclose(teacher_hidden @ weight.T @ student_head.T, teacher_hidden @ teacher_head.T, atol=1e-3)
    assert rel_error < 1e-5


def test_init_error_is_reported_when_identity_cannot_hold() -> None:
    student_head, teacher_head = _heads()
    _, rel_error = pinv_t2s_weight(student_head, teacher_head, TokenPairs.first_ids(VOCAB))
    assert 0.3 < rel_error < 1.0  # random heads: a least-squares fit, far from exact, never worse than 0


def test_s2t_logit_identity_and_cache_follows_head_trainability() -> None:
    _, teacher_head = _heads()
    student_head = teacher_head @ torch.randn(D_TEACHER, D_STUDENT)  # student rows in teacher row space
    s2t = S2TMap(teacher_head, TokenPairs.first_ids(VOCAB))
    weight = s2t.weight(student_head, teacher_head)
    student_hidden = torch.randn(5, D_STUDENT)
    assert torch.allclose(student_hidden @ weight.T @ teacher_head.T, student_hidden @ student_head.T, atol=1e-3)
    assert s2t.weight(student_head, teacher_head) is weight  # frozen head: computed once

    trainable = torch.nn.Parameter(student_head.clone())
    s2t_trainable = S2TMap(teacher_head, TokenPairs.first_ids(VOCAB))
    first = s2t_trainable.weight(trainable, teacher_head)
    with torch.no_grad():
        trainable.mul_(2)
    assert torch.allclose(
        s2t_trainable.weight(trainable, teacher_head), 2 * first, atol=1e-4
    )  # rebuilt from the current head
    assert not first.requires_grad  # built from the detached head: never trains the student head


def _reference_pinv(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """What the projectors were before: an explicit pseudo-inverse times the other head, with
    the rank rule torch.linalg.pinv applies to a float32 head (here in float64 arithmetic)."""
    rtol = max(lhs.shape) * torch.finfo(torch.float32).eps
    return (torch.linalg.pinv(lhs.double(), rtol=rtol) @ rhs.double()).float()


@pytest.mark.parametrize("kind", ["random", "rank_deficient", "ill_conditioned", "below_cutoff", "tall_bf16"])
def test_normal_equations_equal_the_explicit_pinv(kind: str) -> None:
    """Both maps without a [V, hidden] pinv: equal to pinv(A) @ B to 1e-5 relative, also when
    A has fewer independent columns than its width, is ill-conditioned, or has directions
    below pinv's cutoff."""
    generator = torch.Generator().manual_seed(3)
    vocab, d, wide = 3000, 24, 40
    student = torch.randn(vocab, d, generator=generator)
    teacher = torch.randn(vocab, wide, generator=generator)
    if kind == "rank_deficient":  # the last 8 columns repeat others: rank 16 of 24
        student[:, 16:] = student[:, :8] * 2.0
    if kind == "ill_conditioned":  # condition number 1e3: every direction kept
        student = student * torch.logspace(0, -3, d)
    if kind == "below_cutoff":  # down to 1e-5: the smallest directions dropped, as pinv drops them
        student = student * torch.logspace(0, -5, d)
    if kind == "tall_bf16":
        student, teacher = student.bfloat16(), teacher.bfloat16()
    ids = torch.arange(vocab)
    shared = TokenPairs(ids, ids)
    weight, rel_error = pinv_t2s_weight(student, teacher, shared)
    expected = _reference_pinv(student.float(), teacher.float())
    assert (weight - expected).norm() / expected.norm() < 1e-5
    residual = teacher.double() - student.double() @ expected.double()
    assert rel_error == pytest.approx((residual.norm() / teacher.double().norm()).item(), rel=1e-5)
    s2t = S2TMap(teacher, shared).weight(student, teacher)
    expected_s2t = _reference_pinv(teacher.float(), student.float())
    assert (s2t - expected_s2t).norm() / expected_s2t.norm() < 1e-5


def test_maps_read_the_vocabulary_in_chunks_and_keep_nothing_vocabulary_sized(monkeypatch) -> None:
    """Chunked accumulation equals one pass; a frozen head's map keeps only its [D, d] weight."""
    from axolotl_dskd.loss import projectors

    student_head, teacher_head = _heads()
    vocab = TokenPairs.first_ids(VOCAB)
    whole, _ = pinv_t2s_weight(student_head, teacher_head, vocab)
    monkeypatch.setattr(projectors, "ROWS_PER_CHUNK", 7)  # 40 rows in 6 chunks
    chunked, _ = pinv_t2s_weight(student_head, teacher_head, vocab)
    assert torch.allclose(whole, chunked, atol=1e-6)
    s2t = S2TMap(teacher_head, vocab)
    s2t.weight(student_head, teacher_head)
    assert s2t.teacher_gram_pinv is None
    kept = [value for value in vars(s2t).values() if isinstance(value, torch.Tensor)]
    assert all(VOCAB not in tensor.shape for tensor in kept)
