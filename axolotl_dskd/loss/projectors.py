"""The two projectors between the student and teacher hidden spaces.

Heads are used in HF orientation: a head weight is [vocab, hidden] and logits = h @ W.T.
Both projectors are fitted so that projected hidden states reproduce the other model's
logits on a shared set of vocabulary entries ("logit identity", DSKDv2):

- t2s: h_t @ P_t2s.T @ W_s.T ~= h_t @ W_t.T  ->  P_t2s = pinv(W_s) @ W_t      [d, D]
- s2t: h_s @ P_s2t.T @ W_t.T ~= h_s @ W_s.T  ->  P_s2t = pinv(W_t) @ W_s      [D, d]

t2s is a trainable Linear(D -> d, no bias) starting at that least-squares solution; s2t is
never trained: it is rebuilt from the detached student head and a cached pinv(W_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SharedVocab:
    """Vocabulary entries both heads are restricted to for the init (same order on both sides)."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    @classmethod
    def first_ids(cls, size: int) -> SharedVocab:
        """Same tokenizer: ids 0..size-1 mean the same token on both sides."""
        ids = torch.arange(size)
        return cls(student_ids=ids, teacher_ids=ids)

    def __len__(self) -> int:
        return int(self.student_ids.numel())


def _rows(head_weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return head_weight.detach().index_select(0, ids.to(head_weight.device)).float()


def pinv_t2s_weight(
    student_head: torch.Tensor, teacher_head: torch.Tensor, vocab: SharedVocab
) -> tuple[torch.Tensor, float]:
    """Least-squares t2s weight [d, D] and its relative logit error on the shared vocab.

    The error is ||W_t - W_s P|| / ||W_t|| over the shared rows (Frobenius norm): 0 means
    projected logits equal the teacher's logits for every teacher hidden state.
    """
    student_rows = _rows(student_head, vocab.student_ids)
    teacher_rows = _rows(teacher_head, vocab.teacher_ids).to(student_rows.device)
    weight = torch.linalg.pinv(student_rows) @ teacher_rows
    residual = teacher_rows - student_rows @ weight
    rel_error = (residual.norm() / teacher_rows.norm().clamp_min(1e-12)).item()
    return weight, rel_error


class T2SProjector(nn.Linear):
    """Trainable teacher -> student hidden projector (fp32, no bias, as in DSKDv2)."""

    def __init__(self, teacher_hidden: int, student_hidden: int) -> None:
        super().__init__(teacher_hidden, student_hidden, bias=False, dtype=torch.float32)

    @torch.no_grad()
    def init_pinv(self, student_head: torch.Tensor, teacher_head: torch.Tensor, vocab: SharedVocab) -> float:
        """Set the weight to the pseudo-inverse solution; return the relative init error."""
        weight, rel_error = pinv_t2s_weight(student_head, teacher_head, vocab)
        self.weight.copy_(weight.to(self.weight.device))
        return rel_error


class S2TMap:
    """Builds the student -> teacher projection from the current, detached student head.

    pinv(W_t) over the shared vocab is computed once. When the student head does not
    train (LoRA, QLoRA, frozen head) the product is computed once as well.
    """

    def __init__(self, teacher_head: torch.Tensor, vocab: SharedVocab) -> None:
        self.vocab = vocab
        self.teacher_head_pinv = torch.linalg.pinv(_rows(teacher_head, vocab.teacher_ids))  # [D, V]
        self._cached: torch.Tensor | None = None

    def weight(self, student_head: torch.Tensor) -> torch.Tensor:
        """[D, d] weight so that F.linear(h_s, weight) lies in the teacher's hidden space."""
        if self._cached is not None:
            return self._cached
        student_rows = _rows(student_head, self.vocab.student_ids).to(self.teacher_head_pinv.device)
        weight = self.teacher_head_pinv @ student_rows
        if not student_head.requires_grad:
            self._cached = weight
        return weight
