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
COUNTS = ("n_tokens", "n_agree", "n_t2s_correct")


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

    `argmax_vocab` bounds the ids that count as real tokens on both sides (padded head rows
    beyond the tokenizer are never a prediction).
    """

    student_head: torch.Tensor  # [V_s, d], trainable or frozen
    teacher_head: torch.Tensor  # [V_t, D], frozen
    argmax_vocab: int
    t2s_projector: torch.nn.Module | None = None  # D -> d
    s2t_weight: torch.Tensor | None = None  # [D, d], built from the detached student head


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden.to(head.dtype), head).float()


def _chunk_terms(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sums and counts for one chunk of rows (see LOSS_TERMS and COUNTS)."""
    zero = student_hidden.new_zeros((), dtype=torch.float32)
    student_logits = _logits(student_hidden, heads.student_head)
    ce = F.cross_entropy(student_logits, labels, reduction="sum")
    with torch.no_grad():
        teacher_logits = _logits(teacher_hidden, heads.teacher_head)
    vocab = heads.argmax_vocab
    n_tokens = torch.tensor(float(labels.numel()), device=labels.device)

    if cfg.method == "vanilla_kd":
        kd = divergence(teacher_logits[:, :vocab], student_logits[:, :vocab], cfg.divergence).sum()
        sums = torch.stack([ce, zero, zero, zero, kd])
        counts = torch.stack([n_tokens, zero, zero])
        return sums, counts

    teacher_pred = teacher_logits[:, :vocab].argmax(-1)
    # student space: teacher hidden -> student hidden, decoded by the detached student head
    projected_teacher = heads.t2s_projector(teacher_hidden.float())
    t2s_logits = _logits(projected_teacher, heads.student_head.detach())
    t2s_ce = F.cross_entropy(t2s_logits, teacher_pred, reduction="sum")
    t2s_pred = t2s_logits[:, :vocab].argmax(-1)
    agree = t2s_pred == teacher_pred
    t2s_kd_rows = divergence(t2s_logits.detach(), student_logits, cfg.divergence)
    if cfg.agreement_mask:
        t2s_kd_rows = t2s_kd_rows * agree
    # teacher space: student hidden -> teacher hidden, decoded by the frozen teacher head
    projected_student = F.linear(student_hidden.float(), heads.s2t_weight)
    s2t_logits = _logits(projected_student, heads.teacher_head)
    s2t_kd = divergence(teacher_logits, s2t_logits, cfg.divergence).sum()

    sums = torch.stack([ce, t2s_ce, t2s_kd_rows.sum(), s2t_kd, zero])
    counts = torch.stack([n_tokens, agree.sum().float(), (t2s_pred == labels).sum().float()])
    return sums, counts


def loss_sums(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of every loss term and count over all rows, one chunk of rows at a time."""
    sums = student_hidden.new_zeros(len(LOSS_TERMS), dtype=torch.float32)
    counts = student_hidden.new_zeros(len(COUNTS), dtype=torch.float32)
    n_rows = labels.numel()
    for start in range(0, n_rows, cfg.chunk_size):
        rows = slice(start, start + cfg.chunk_size)
        chunk_args = (student_hidden[rows], teacher_hidden[rows], labels[rows], heads, cfg)
        if start + cfg.chunk_size < n_rows:
            chunk_sums, chunk_counts = checkpoint(_chunk_terms, *chunk_args, use_reentrant=False)
        else:  # backward starts with the last chunk, so recomputing it would save no memory
            chunk_sums, chunk_counts = _chunk_terms(*chunk_args)
        sums = sums + chunk_sums
        counts = counts + chunk_counts.detach()
    return sums, counts


def kd_sum(sums: torch.Tensor) -> torch.Tensor:
    """All KD terms together: every entry of LOSS_TERMS after the gold CE."""
    return sums[1:].sum()


def combine(sums: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * KD."""
    return (1.0 - cfg.kd_ratio) * sums[0] + cfg.kd_ratio * kd_sum(sums)
