"""The dual-space KD loss over gathered rows, computed chunk by chunk.

Inputs are hidden states already gathered at the positions that enter the loss (one row
per response token), never logits. Each chunk of rows is turned into logits, scored and
dropped; `torch.utils.checkpoint` recomputes each chunk but the last in the backward pass, so no
[rows x vocab] tensor for the whole batch exists in forward or backward.

All terms are *sums* over rows; the caller divides by the number of response tokens in
the global batch, which keeps gradient accumulation and data parallelism exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from axolotl_dskd.divergences import DivergenceConfig, divergence

# Order of the differentiable sums and of the (non-differentiable) counts a chunk returns.
LOSS_TERMS = ("ce_loss", "t2s_ce_loss", "t2s_kd_loss", "s2t_kd_loss", "vanilla_kd_loss")
COUNTS = ("n_tokens", "n_pairs", "n_valid", "n_agree", "n_t2s_correct", "n_s2t_agree")


@dataclass(frozen=True)
class LossConfig:
    """Loss knobs from the YAML (dskd_method, dskd_kd_ratio, dskd_agreement_mask, ...)."""

    method: str = "dskd"
    kd_ratio: float = 0.5
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    agreement_mask: bool = True
    chunk_size: int = 1024


@dataclass
class Heads:
    """Everything that maps hidden states to logits, plus the projectors.

    `student_vocab` / `teacher_vocab` bound the ids that are real tokens (padded head rows
    beyond a tokenizer are never a prediction). `teacher_to_student` maps a teacher id to
    the student id of the same text (-1: none); None means both share one vocabulary.
    """

    student_head: torch.Tensor  # [V_s, d], trainable or frozen
    teacher_head: torch.Tensor  # [V_t, D], frozen
    student_vocab: int
    teacher_vocab: int
    t2s_projector: torch.nn.Module | None = None  # D -> d
    s2t_weight: torch.Tensor | None = None  # [D, d], built from the detached student head
    teacher_to_student: torch.Tensor | None = None


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden.to(head.dtype), head).float()


def _ce_only(student_hidden: torch.Tensor, labels: torch.Tensor, heads: Heads) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows without a teacher partner (cross-tokenizer): only the gold CE."""
    ce = F.cross_entropy(_logits(student_hidden, heads.student_head), labels, reduction="sum")
    sums = torch.stack([ce, *ce.new_zeros(len(LOSS_TERMS) - 1)])
    counts = ce.new_zeros(len(COUNTS)).detach()
    counts[0] = labels.numel()
    return sums, counts


def _pair_terms(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sums and counts for a chunk of aligned (student row, teacher row) pairs."""
    zero = student_hidden.new_zeros((), dtype=torch.float32)
    student_logits = _logits(student_hidden, heads.student_head)
    ce = F.cross_entropy(student_logits, labels, reduction="sum")
    with torch.no_grad():
        teacher_logits = _logits(teacher_hidden, heads.teacher_head)

    if cfg.method == "vanilla_kd":
        vocab = min(heads.student_vocab, heads.teacher_vocab)
        kd = divergence(teacher_logits[:, :vocab], student_logits[:, :vocab], cfg.divergence).sum()
        n_rows = float(labels.numel())
        return torch.stack([ce, zero, zero, zero, kd]), labels.new_tensor([n_rows] * 3 + [0.0] * 3, dtype=torch.float)

    teacher_pred = teacher_logits[:, : heads.teacher_vocab].argmax(-1)
    t2s_label = teacher_pred if heads.teacher_to_student is None else heads.teacher_to_student[teacher_pred]
    valid = t2s_label >= 0  # the teacher's prediction has a student token: otherwise skip the pair
    # student space: teacher hidden -> student hidden, decoded by the detached student head
    projected_teacher = heads.t2s_projector(teacher_hidden.float())
    t2s_logits = _logits(projected_teacher, heads.student_head.detach())
    t2s_ce = F.cross_entropy(t2s_logits, torch.where(valid, t2s_label, -100), reduction="sum")
    t2s_pred = t2s_logits[:, : heads.student_vocab].argmax(-1)
    agree = valid & (t2s_pred == t2s_label)
    t2s_kd_rows = divergence(t2s_logits.detach(), student_logits, cfg.divergence)
    t2s_kd = (t2s_kd_rows * (agree if cfg.agreement_mask else valid)).sum()
    # teacher space: student hidden -> teacher hidden, decoded by the frozen teacher head
    projected_student = F.linear(student_hidden.float(), heads.s2t_weight)
    s2t_logits = _logits(projected_student, heads.teacher_head)
    s2t_kd = (divergence(teacher_logits, s2t_logits, cfg.divergence) * valid).sum()
    s2t_agree = s2t_logits[:, : heads.teacher_vocab].argmax(-1) == teacher_pred

    sums = torch.stack([ce, t2s_ce, t2s_kd, s2t_kd, zero])
    n = torch.tensor(labels.numel(), device=labels.device)
    counts = torch.stack([n, n, valid.sum(), agree.sum(), (t2s_pred == labels).sum(), s2t_agree.sum()])
    return sums, counts.float()


def loss_sums(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of every loss term and count over all rows, one chunk of rows at a time.

    The first len(teacher_hidden) student rows are paired with the teacher rows, in order;
    the remaining student rows (unaligned, cross-tokenizer) only enter the gold CE.
    """
    sums = student_hidden.new_zeros(len(LOSS_TERMS), dtype=torch.float32)
    counts = student_hidden.new_zeros(len(COUNTS), dtype=torch.float32)
    n_rows, n_pairs = labels.numel(), teacher_hidden.shape[0]
    for start in range(0, n_rows, cfg.chunk_size):
        stop = min(start + cfg.chunk_size, n_rows)
        paired = slice(start, min(stop, n_pairs))
        pieces = []
        if paired.start < paired.stop:
            pieces.append((_pair_terms, (student_hidden[paired], teacher_hidden[paired], labels[paired], heads, cfg)))
        if stop > n_pairs:
            alone = slice(max(start, n_pairs), stop)
            pieces.append((_ce_only, (student_hidden[alone], labels[alone], heads)))
        for chunk_fn, chunk_args in pieces:
            if stop < n_rows:
                chunk_sums, chunk_counts = checkpoint(chunk_fn, *chunk_args, use_reentrant=False)
            else:  # backward starts with the last chunk, so recomputing it would save no memory
                chunk_sums, chunk_counts = chunk_fn(*chunk_args)
            sums = sums + chunk_sums
            counts = counts + chunk_counts.detach()
    return sums, counts


def kd_sum(sums: torch.Tensor) -> torch.Tensor:
    """All KD terms together: every entry of LOSS_TERMS after the gold CE."""
    return sums[1:].sum()


def combine(sums: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * KD."""
    return (1.0 - cfg.kd_ratio) * sums[0] + cfg.kd_ratio * kd_sum(sums)
