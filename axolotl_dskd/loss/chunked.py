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

import dataclasses
from dataclasses import replace

import torch
import torch.nn.functional as F

from axolotl_dskd.loss import IGNORE_INDEX, closed_form
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import divergence
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.teacher_fit import teacher_fit_counts
from axolotl_dskd.loss.terms import Counts, LossTerms


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden.to(head.dtype), head).float()


def _ce_only(student_hidden: torch.Tensor, labels: torch.Tensor, heads: Heads) -> tuple[LossTerms, Counts]:
    """Rows without a teacher partner (cross-tokenizer): only the gold CE."""
    ce = F.cross_entropy(_logits(student_hidden, heads.student_head), labels, reduction="sum")
    return LossTerms.of(ce, ce.new_zeros(())), Counts.lone_rows(ce.new_tensor(float(labels.numel())).detach())


def _pair_terms(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
) -> tuple[LossTerms, Counts]:
    """Loss sums and counts for a chunk of aligned (student row, teacher row) pairs."""
    zero = student_hidden.new_zeros((), dtype=torch.float32)
    student_logits = _logits(student_hidden, heads.student_head)
    ce = F.cross_entropy(student_logits, labels, reduction="sum")
    with torch.no_grad():
        teacher_logits = _logits(teacher_hidden, heads.teacher_head)

    teacher_pred = teacher_logits[:, : heads.teacher_vocab].argmax(-1)
    fit = teacher_fit_counts(teacher_logits, teacher_pred, heads.gold_in_teacher(labels))
    n_rows = zero.new_tensor(float(labels.numel()))

    if cfg.method == "vanilla_kd":
        vocab = min(heads.student_vocab, heads.teacher_vocab)
        kd = divergence(teacher_logits[:, :vocab], student_logits[:, :vocab], cfg.divergence).sum()
        sums = LossTerms(ce_loss=ce, t2s_ce_loss=zero, t2s_kd_loss=zero, s2t_kd_loss=zero, vanilla_kd_loss=kd)
        return sums, Counts.of({"n_tokens": n_rows, "n_pairs": n_rows, "n_valid": n_rows}, fit)

    t2s_label = heads.t2s_label(teacher_pred)
    valid = t2s_label >= 0  # the teacher's prediction has a student token: otherwise skip the pair
    # student space: teacher hidden -> student hidden, decoded by the detached student head
    # fp32 projector, or bf16 when DeepSpeed's bf16 engine cast it with the student
    projected_teacher = F.linear(teacher_hidden.to(heads.t2s_weight.dtype), heads.t2s_weight).float()
    t2s_logits = _logits(projected_teacher, heads.student_head.detach())
    t2s_ce = F.cross_entropy(t2s_logits, torch.where(valid, t2s_label, IGNORE_INDEX), reduction="sum")
    t2s_pred = t2s_logits[:, : heads.student_vocab].argmax(-1)
    agree = valid & (t2s_pred == t2s_label)
    t2s_kd_rows = divergence(t2s_logits.detach(), student_logits, cfg.divergence)
    t2s_kd = (t2s_kd_rows * (agree if cfg.agreement_mask else valid)).sum()
    # teacher space: student hidden -> teacher hidden, decoded by the frozen teacher head
    projected_student = F.linear(student_hidden.float(), heads.s2t_weight)
    s2t_logits = _logits(projected_student, heads.teacher_head)
    s2t_kd = (divergence(teacher_logits, s2t_logits, cfg.divergence) * valid).sum()
    s2t_agree = s2t_logits[:, : heads.teacher_vocab].argmax(-1) == teacher_pred

    sums = LossTerms(ce_loss=ce, t2s_ce_loss=t2s_ce, t2s_kd_loss=t2s_kd, s2t_kd_loss=s2t_kd, vanilla_kd_loss=zero)
    return sums, Counts.of_pairs(valid, agree, t2s_pred == labels, s2t_agree, fit)


def term_weights(cfg: LossConfig) -> LossTerms[float]:
    """d loss / d sums: (1 - alpha) for the gold CE, alpha for each KD term."""
    return LossTerms.of(1.0 - cfg.kd_ratio, cfg.kd_ratio)


@torch.no_grad()
def pair_counts(teacher_hidden: torch.Tensor, heads: Heads, chunk_size: int) -> tuple[int, int]:
    """(pairs whose teacher prediction has a student token, of those the ones where the
    projected teacher agrees): the per-micro-batch divisors of the `paper` normalisation,
    known only once the teacher rows are decoded."""
    n_valid = n_agree = 0
    for start in range(0, teacher_hidden.shape[0], chunk_size):
        rows = teacher_hidden[start : start + chunk_size]
        t2s_label = heads.t2s_label(_logits(rows, heads.teacher_head)[:, : heads.teacher_vocab].argmax(-1))
        projected = F.linear(rows.to(heads.t2s_weight.dtype), heads.t2s_weight).float()
        t2s_pred = _logits(projected, heads.student_head.detach())[:, : heads.student_vocab].argmax(-1)
        n_valid += int((t2s_label >= 0).sum())
        n_agree += int(((t2s_label >= 0) & (t2s_pred == t2s_label)).sum())
    return n_valid, n_agree


def divided_weights(
    cfg: LossConfig,
    weights: LossTerms[float],
    gold_divisor: float,
    kd_divisor: float,
    local_divisor: float,
    counts: tuple[int, int] | None,
    cross: bool,
) -> LossTerms[float]:
    """Each term's weight divided by what its sum is normalised by, so sum(weights * sums)
    is the loss. `global`: the gold CE by `gold_divisor`, every KD term by `kd_divisor`.
    `paper` (DSKDv2's criterion, `counts` from `pair_counts`): the student-space KD by the
    micro-batch's agreeing pairs and, with two tokenizers, the t2s CE and s2t KD by its
    valid pairs, each times `local_divisor` (micro-batches per step x processes), so a step
    averages its micro-batches' ratios."""
    divisors = LossTerms.of(float(gold_divisor), float(kd_divisor))
    if cfg.normalization == "paper" and cfg.method == "dskd":
        n_valid, n_agree = counts
        by_pairs = ["t2s_ce_loss", "s2t_kd_loss"] if cross else []
        by_agreement = []
        if cfg.agreement_mask:
            by_agreement.append("t2s_kd_loss")
        elif cross:
            by_pairs.append("t2s_kd_loss")
        divisors = dataclasses.replace(
            divisors,
            **{term: max(n_valid, 1) * local_divisor for term in by_pairs},
            **{term: max(n_agree, 1) * local_divisor for term in by_agreement},
        )
    return LossTerms(*(weight / divisor for weight, divisor in zip(weights.values(), divisors.values(), strict=True)))


def _chunks(n_rows: int, n_pairs: int, chunk_size: int):
    """(function, student rows, teacher rows) per chunk: aligned pairs, then lone rows."""
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        if start < min(stop, n_pairs):
            yield _pair_terms, slice(start, min(stop, n_pairs))
        if stop > n_pairs:
            yield _ce_only, slice(max(start, n_pairs), stop)


def _leaf(tensor: torch.Tensor | None, needs_grad: bool) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().requires_grad_(needs_grad)


def _chunk_by_autograd(chunk_fn, rows, student_hidden, teacher_hidden, labels, heads, cfg, weights, needs):
    """(term sums, counts, gradients of the hidden rows, student head and projector, None
    where not needed) of one chunk, differentiated by autograd."""
    with torch.enable_grad():
        hidden = _leaf(student_hidden[rows], needs[0])
        head, projector = _leaf(heads.student_head, needs[1]), _leaf(heads.t2s_weight, needs[2])
        chunk_heads = replace(heads, student_head=head, t2s_weight=projector)
        if chunk_fn is _pair_terms:
            terms, counts = _pair_terms(hidden, teacher_hidden[rows], labels[rows], chunk_heads, cfg)
        else:
            terms, counts = _ce_only(hidden, labels[rows], chunk_heads)
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
        block = None
        if closed_form.supports(cfg) and n_pairs:
            block = closed_form.workspace(min(cfg.chunk_size, n_pairs), heads, student_hidden.device)
        for chunk_fn, rows in _chunks(labels.numel(), n_pairs, cfg.chunk_size):
            done = None
            if chunk_fn is _pair_terms and block is not None:
                done = closed_form.pair_chunk(
                    student_hidden[rows], teacher_hidden[rows], labels[rows], heads, cfg, term_weights_, needs, block
                )
            if done is None:
                done = _chunk_by_autograd(
                    chunk_fn, rows, student_hidden, teacher_hidden, labels, heads, cfg, weights, needs
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
