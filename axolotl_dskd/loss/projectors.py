"""The two projectors between the student and teacher hidden spaces.

Heads are used in HF orientation: a head weight is [vocab, hidden] and logits = h @ W.T.
Both projectors are fitted so that projected hidden states reproduce the other model's
logits on a shared set of vocabulary entries ("logit identity", DSKDv2):

- t2s: h_t @ P_t2s.T @ W_s.T ~= h_t @ W_t.T  ->  P_t2s = pinv(W_s) @ W_t      [d, D]
- s2t: h_s @ P_s2t.T @ W_t.T ~= h_s @ W_s.T  ->  P_s2t = pinv(W_t) @ W_s      [D, d]

t2s is a trainable Linear(D -> d, no bias) starting at that least-squares solution; s2t is
never trained: it is rebuilt from the detached student head when that head trains, else
built once.

Neither pinv is formed: pinv(A) @ B is solved through the normal equations, A^T A and
A^T B accumulated over chunks of vocabulary rows in float64 and A^T A inverted by eigh
with torch.linalg.pinv's rank rule, so no [vocab, hidden] or [hidden, vocab] copy exists
beside the heads (a pinv of Qwen2.5's head alone is 544 MB in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenPairs:
    """Vocabulary entries both heads are restricted to for the init (same order on both sides)."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor

    @classmethod
    def first_ids(cls, size: int) -> TokenPairs:
        """Same tokenizer: ids 0..size-1 mean the same token on both sides."""
        ids = torch.arange(size)
        return cls(student_ids=ids, teacher_ids=ids)

    def __len__(self) -> int:
        return int(self.student_ids.numel())


ROWS_PER_CHUNK = 4096  # vocabulary rows read at a time: 4096 x hidden x 8 bytes transient


def _row_chunks(head: torch.Tensor, ids: torch.Tensor, device: torch.device):
    """The head's rows at `ids`, detached, in float64 on `device`, chunk by chunk."""
    ids = ids.to(head.device)
    for start in range(0, ids.numel(), ROWS_PER_CHUNK):
        yield head.detach().index_select(0, ids[start : start + ROWS_PER_CHUNK]).to(device, torch.float64)


def gram_pinv(head: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """pinv(A^T A) for A = head[ids] ([n, n], float64), dropping the directions that
    torch.linalg.pinv drops for a float32 A: singular values at or below
    max(rows, n) x eps(float32) x the largest (eigenvalues of A^T A are their squares)."""
    n = head.shape[1]
    gram = torch.zeros(n, n, dtype=torch.float64, device=head.device)
    for rows in _row_chunks(head, ids, head.device):
        gram.addmm_(rows.T, rows)
    eigenvalues, vectors = torch.linalg.eigh(gram)
    rtol = max(ids.numel(), n) * torch.finfo(torch.float32).eps
    kept = eigenvalues > (rtol**2) * eigenvalues.max().clamp_min(0.0)
    inverse = torch.where(kept, 1.0 / eigenvalues.where(kept, torch.ones_like(eigenvalues)), 0.0)
    return (vectors * inverse) @ vectors.T


def cross_product(left: torch.Tensor, left_ids: torch.Tensor, right: torch.Tensor, right_ids: torch.Tensor):
    """left[left_ids]^T @ right[right_ids] ([n, m], float64), accumulated chunk by chunk."""
    out = torch.zeros(left.shape[1], right.shape[1], dtype=torch.float64, device=left.device)
    chunks = zip(_row_chunks(left, left_ids, left.device), _row_chunks(right, right_ids, left.device), strict=True)
    for left_rows, right_rows in chunks:
        out.addmm_(left_rows.T, right_rows)
    return out


def least_squares(
    lhs: torch.Tensor, lhs_ids: torch.Tensor, rhs: torch.Tensor, rhs_ids: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """pinv(lhs[lhs_ids]) @ rhs[rhs_ids] in float32 ([n, m]) and the fit's relative error
    ||rhs - lhs X|| / ||rhs|| over those rows (Frobenius norm)."""
    solution = gram_pinv(lhs, lhs_ids) @ cross_product(lhs, lhs_ids, rhs, rhs_ids)
    residual, total = 0.0, 0.0
    chunks = zip(_row_chunks(lhs, lhs_ids, lhs.device), _row_chunks(rhs, rhs_ids, lhs.device), strict=True)
    for lhs_rows, rhs_rows in chunks:
        residual += (rhs_rows - lhs_rows @ solution).square().sum().item()
        total += rhs_rows.square().sum().item()
    return solution.float(), (residual / max(total, 1e-24)) ** 0.5


def pinv_t2s_weight(
    student_head: torch.Tensor, teacher_head: torch.Tensor, vocab: TokenPairs
) -> tuple[torch.Tensor, float]:
    """Least-squares t2s weight [d, D] and its relative logit error on the shared vocab.

    The error is ||W_t - W_s P|| / ||W_t|| over the shared rows (Frobenius norm): 0 means
    projected logits equal the teacher's logits for every teacher hidden state.
    """
    return least_squares(student_head, vocab.student_ids, teacher_head.to(student_head.device), vocab.teacher_ids)


class T2SProjector(nn.Linear):
    """Trainable teacher -> student hidden projector (fp32, no bias, as in DSKDv2)."""

    def __init__(self, teacher_hidden: int, student_hidden: int) -> None:
        super().__init__(teacher_hidden, student_hidden, bias=False, dtype=torch.float32)

    @torch.no_grad()
    def init_pinv(self, student_head: torch.Tensor, teacher_head: torch.Tensor, vocab: TokenPairs) -> float:
        """Set the weight to the pseudo-inverse solution; return the relative init error."""
        weight, rel_error = pinv_t2s_weight(student_head, teacher_head, vocab)
        self.weight.copy_(weight.to(self.weight.device))
        return rel_error


class S2TMap:
    """The student -> teacher projection pinv(W_t) @ stopgrad(W_s) over the shared vocab.

    A frozen student head (LoRA, QLoRA) gets the [D, d] weight once and nothing else is
    kept. A training head keeps pinv(W_t^T W_t) ([D, D]) and rebuilds the weight from the
    current head at each call: one pass over the shared rows of both heads, the same
    multiply-adds as the [D, V] x [V, d] product a stored pinv(W_t) would cost.
    """

    def __init__(self, teacher_head: torch.Tensor, vocab: TokenPairs) -> None:
        self.vocab = vocab
        self.teacher_gram_pinv = gram_pinv(teacher_head, vocab.teacher_ids)  # [D, D], float64
        self._cached: torch.Tensor | None = None

    def weight(self, student_head: torch.Tensor, teacher_head: torch.Tensor) -> torch.Tensor:
        """[D, d] weight so that F.linear(h_s, weight) lies in the teacher's hidden space."""
        if self._cached is not None:
            return self._cached
        student_on_teacher = student_head.to(teacher_head.device)
        cross = cross_product(teacher_head, self.vocab.teacher_ids, student_on_teacher, self.vocab.student_ids)
        weight = (self.teacher_gram_pinv @ cross).float()
        if not student_head.requires_grad:
            self._cached, self.teacher_gram_pinv = weight, None  # never needed again
        return weight
