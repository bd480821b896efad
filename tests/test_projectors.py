"""Pseudo-inverse ("ideal") init of both projectors and the s2t cache."""

import torch

from axolotl_dskd.loss.projectors import S2TMap, SharedVocab, T2SProjector, pinv_t2s_weight

D_STUDENT, D_TEACHER, VOCAB = 8, 12, 40


def _heads(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, D_STUDENT, generator=generator), torch.randn(VOCAB, D_TEACHER, generator=generator)


def test_t2s_logit_identity_when_student_head_is_invertible_on_the_used_vocab() -> None:
    student_head, teacher_head = _heads()
    vocab = SharedVocab.first_ids(D_STUDENT)  # square, invertible student head on these ids
    projector = T2SProjector(D_TEACHER, D_STUDENT)
    rel_error = projector.init_pinv(student_head, teacher_head, vocab)
    teacher_hidden = torch.randn(5, D_TEACHER)
    projected_logits = projector(teacher_hidden) @ student_head[:D_STUDENT].T
    assert torch.allclose(projected_logits, teacher_hidden @ teacher_head[:D_STUDENT].T, atol=1e-4)
    assert rel_error < 1e-5


def test_t2s_logit_identity_over_the_whole_vocab_when_teacher_head_lies_in_student_row_space() -> None:
    student_head, _ = _heads()
    teacher_head = student_head @ torch.randn(D_STUDENT, D_TEACHER)
    weight, rel_error = pinv_t2s_weight(student_head, teacher_head, SharedVocab.first_ids(VOCAB))
    teacher_hidden = torch.randn(5, D_TEACHER)
    assert torch.allclose(teacher_hidden @ weight.T @ student_head.T, teacher_hidden @ teacher_head.T, atol=1e-3)
    assert rel_error < 1e-5


def test_init_error_is_reported_when_identity_cannot_hold() -> None:
    student_head, teacher_head = _heads()
    _, rel_error = pinv_t2s_weight(student_head, teacher_head, SharedVocab.first_ids(VOCAB))
    assert 0.3 < rel_error < 1.0  # random heads: a least-squares fit, far from exact, never worse than 0


def test_s2t_logit_identity_and_cache_follows_head_trainability() -> None:
    _, teacher_head = _heads()
    student_head = teacher_head @ torch.randn(D_TEACHER, D_STUDENT)  # student rows in teacher row space
    s2t = S2TMap(teacher_head, SharedVocab.first_ids(VOCAB))
    weight = s2t.weight(student_head)
    student_hidden = torch.randn(5, D_STUDENT)
    assert torch.allclose(student_hidden @ weight.T @ teacher_head.T, student_hidden @ student_head.T, atol=1e-3)
    assert s2t.weight(student_head) is weight  # frozen head: computed once

    trainable = torch.nn.Parameter(student_head.clone())
    s2t_trainable = S2TMap(teacher_head, SharedVocab.first_ids(VOCAB))
    first = s2t_trainable.weight(trainable)
    with torch.no_grad():
        trainable.mul_(2)
    assert torch.allclose(s2t_trainable.weight(trainable), 2 * first, atol=1e-4)  # rebuilt from the current head
    assert not first.requires_grad  # built from the detached head: never trains the student head
