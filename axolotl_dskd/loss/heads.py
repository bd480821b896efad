"""What maps hidden rows to logits in both spaces: the two output heads, the projectors,
and the id maps between two vocabularies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axolotl_dskd.loss.fit_counts import gold_teacher_ids


@dataclass
class Heads:
    """Everything that maps hidden states to logits, plus the projectors.

    `student_vocab` / `teacher_vocab` bound the ids that are real tokens (padded head rows
    beyond a tokenizer are never a prediction). `teacher_to_student` maps a teacher id to
    the student id of the same text (-1: none), `student_to_teacher` the reverse; None
    means both share one vocabulary.
    """

    student_head: torch.Tensor  # [V_s, d], trainable or frozen
    teacher_head: torch.Tensor  # [V_t, D], frozen
    student_vocab: int
    teacher_vocab: int
    t2s_weight: torch.Tensor | None = None  # [d, D] trainable teacher -> student projector
    s2t_weight: torch.Tensor | None = None  # [D, d], built from the detached student head
    teacher_to_student: torch.Tensor | None = None
    student_to_teacher: torch.Tensor | None = None

    def t2s_label(self, teacher_pred: torch.Tensor) -> torch.Tensor:
        """The teacher's prediction as a student id (-1: no student token has its bytes)."""
        return teacher_pred if self.teacher_to_student is None else self.teacher_to_student[teacher_pred]

    def gold_in_teacher(self, labels: torch.Tensor) -> torch.Tensor:
        """The gold student tokens as teacher ids (-1: the teacher has no such token)."""
        return gold_teacher_ids(labels, self.teacher_vocab, self.student_to_teacher)
