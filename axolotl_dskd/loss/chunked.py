"""The dual-space KD loss over gathered rows, computed chunk by chunk.

Inputs are hidden states already gathered at the positions that enter the loss (one row
per response token), never logits. Each chunk of rows is turned into logits, scored,
differentiated and dropped inside the forward pass (the way Liger-Kernel's chunked losses
work): only the small gradients for the hidden rows, the student head and the projector
are kept, and backward just scales them. No [rows x vocab] tensor exists for the whole
batch, and no chunk is computed twice.

All terms are *sums* over rows (named in terms.py); the caller divides by the number of
response tokens in the global batch, which keeps gradient accumulation and data
parallelism exact.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from axolotl_dskd.loss import closed_form
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.objectives import CE_ONLY, OBJECTIVES, Objective
from axolotl_dskd.loss.terms import Counts, LossTerms


def term_weights(cfg: LossConfig) -> LossTerms[float]:
    """d loss / d sums: (1 - alpha) for the gold CE, alpha for each KD term."""
    return LossTerms.of(1.0 - cfg.kd_ratio, cfg.kd_ratio)


def _chunks(n_rows: int, n_pairs: int, chunk_size: int, objective: Objective):
    """(objective, rows) per chunk: aligned pairs under the run's objective, then lone rows
    under the gold CE alone."""
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        if start < min(stop, n_pairs):
            yield objective, slice(start, min(stop, n_pairs))
        if stop > n_pairs:
            yield CE_ONLY, slice(max(start, n_pairs), stop)


def _leaf(tensor: torch.Tensor | None, needs_grad: bool) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().requires_grad_(needs_grad)


def _chunk_by_autograd(objective: Objective, rows, student_hidden, teacher_hidden, labels, heads, cfg, weights, needs):
    """(term sums, counts, gradients of the hidden rows, student head and projector, None
    where not needed) of one chunk, differentiated by autograd."""
    with torch.enable_grad():
        hidden = _leaf(student_hidden[rows], needs[0])
        head, projector = _leaf(heads.student_head, needs[1]), _leaf(heads.t2s_weight, needs[2])
        chunk_heads = replace(heads, student_head=head, t2s_weight=projector)
        terms, counts = objective.terms(hidden, teacher_hidden[rows], labels[rows], chunk_heads, cfg)
        chunk_sums = terms.stack(hidden.device)
        leaves = [(k, t) for k, t in enumerate((hidden, head, projector)) if t is not None and t.requires_grad]
        grads: list[torch.Tensor | None] = [None, None, None]
        if leaves and chunk_sums.requires_grad:  # a chunk of lone rows never reaches the projector
            found = torch.autograd.grad((chunk_sums * weights).sum(), [t for _, t in leaves], allow_unused=True)
            for (k, _), grad in zip(leaves, found, strict=True):
                grads[k] = grad
    return LossTerms.unstack(chunk_sums.detach()), counts, tuple(grads)


class _ChunkedLoss(torch.autograd.Function):
    """Weighted loss sum whose gradients are computed chunk by chunk during forward."""

    @staticmethod
    def forward(ctx, weights, student_hidden, student_head, t2s_weight, teacher_hidden, labels, heads, cfg):
        """`weights`: the stacked LossTerms weights (autograd passes tensors)."""
        needs = ctx.needs_input_grad[1:4]
        term_weights_ = LossTerms(*weights.tolist())
        grads = [
            torch.zeros(t.shape, dtype=torch.float32, device=t.device) if t is not None and need else None
            for t, need in zip((student_hidden, student_head, t2s_weight), needs, strict=True)
        ]
        sums = student_hidden.new_zeros(len(LossTerms.names()), dtype=torch.float32)
        counts = student_hidden.new_zeros(len(Counts.names()), dtype=torch.float32)
        weights = weights.to(sums.device)
        n_pairs = teacher_hidden.shape[0]
        objective = OBJECTIVES[cfg.method]
        block = None
        if objective.has_closed_form(cfg) and n_pairs:
            block = closed_form.workspace(min(cfg.chunk_size, n_pairs), heads, student_hidden.device)
        for chunk_objective, rows in _chunks(labels.numel(), n_pairs, cfg.chunk_size, objective):
            done = None
            if block is not None and chunk_objective.has_closed_form(cfg):  # None: a non-finite logit
                done = closed_form.pair_chunk(
                    student_hidden[rows], teacher_hidden[rows], labels[rows], heads, cfg, term_weights_, needs, block
                )
            if done is None:
                done = _chunk_by_autograd(
                    chunk_objective, rows, student_hidden, teacher_hidden, labels, heads, cfg, weights, needs
                )
            chunk_terms, chunk_counts, chunk_grads = done
            for k, grad in enumerate(chunk_grads):
                if grad is not None:
                    (grads[0][rows] if k == 0 else grads[k]).add_(grad.float())
            sums += chunk_terms.stack(sums.device)
            counts += chunk_counts.stack(counts.device)
        ctx.save_for_backward(
            *(
                g if g is None else g.to(t.dtype)
                for g, t in zip(grads, (student_hidden, student_head, t2s_weight), strict=True)
            )
        )
        ctx.mark_non_differentiable(sums, counts)
        return (sums * weights).sum(), sums, counts

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums, _grad_counts):
        scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors]
        return None, *scaled, None, None, None, None


def chunked_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
    weights: LossTerms[float] | None = None,
) -> tuple[torch.Tensor, LossTerms[torch.Tensor], Counts]:
    """(sum of weight x sum over the terms (differentiable), the term sums, the counts)
    over all rows, one chunk of rows at a time; weights default to `term_weights(cfg)`.

    The first len(teacher_hidden) student rows are paired with the teacher rows, in order;
    the remaining student rows (unaligned, cross-tokenizer) only enter the gold CE.
    """
    weights = term_weights(cfg) if weights is None else weights
    loss, sums, counts = _ChunkedLoss.apply(
        weights.stack(), student_hidden, heads.student_head, heads.t2s_weight, teacher_hidden, labels, heads, cfg
    )
    return loss, LossTerms.unstack(sums), Counts.unstack(counts)
