"""How well the teacher predicts the gold response: the numbers behind `teacher_acc` and
`teacher_ce`.

A teacher that disagrees with the data pulls the student away from it through every KD
term while the gold CE pulls it back; these counts make that visible in the training log
and in the pre-flight check. They are computed from teacher logits the loss has already
built, so they cost one extra pass over a vocabulary-sized buffer.
"""

from __future__ import annotations

import torch

from axolotl_dskd.loss.terms import TeacherFitCounts


def gold_teacher_ids(labels: torch.Tensor, teacher_vocab: int, student_to_teacher: torch.Tensor | None) -> torch.Tensor:
    """The gold student token of each row as a teacher id: the same id with one shared
    vocabulary, the id of identical bytes with two (-1 where the teacher has no such token
    or the row is not trained)."""
    trained = labels >= 0
    safe = labels.clamp_min(0)
    if student_to_teacher is None:
        gold = torch.where(safe < teacher_vocab, safe, -1)
    else:
        gold = student_to_teacher.to(labels.device)[safe]
    return torch.where(trained, gold, -1)


def teacher_fit_counts(
    teacher_logits: torch.Tensor,
    teacher_pred: torch.Tensor,
    gold: torch.Tensor,
    scratch: torch.Tensor | None = None,
) -> TeacherFitCounts:
    """Rows whose gold token the teacher has, rows where the teacher's argmax is that
    token, and the teacher's summed negative log-likelihood of it at temperature 1.

    `scratch` (same shape as the logits) avoids a new vocabulary-sized allocation; the
    logits themselves are left unchanged."""
    has_gold = gold >= 0
    rows = torch.arange(gold.numel(), device=gold.device)
    gold_logit = teacher_logits[rows, gold.clamp_min(0)].float()
    row_max = teacher_logits.amax(-1, keepdim=True)
    shifted = teacher_logits - row_max if scratch is None else torch.sub(teacher_logits, row_max, out=scratch)
    log_total = shifted.exp_().sum(-1, dtype=torch.float32).log()
    nll = (row_max.squeeze(-1).float() + log_total - gold_logit) * has_gold
    return TeacherFitCounts(
        n_teacher_gold=has_gold.sum().float(),
        n_teacher_correct=(has_gold & (teacher_pred == gold)).sum().float(),
        teacher_gold_nll=nll.sum(),
    )
