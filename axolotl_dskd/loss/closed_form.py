"""The default DSKD chunk (forward KL) with its gradients written out by hand.

Autograd spends most of a chunk's time allocating [rows x vocab] tensors (each new one
costs page faults, several times the arithmetic on CPU) and keeping them for backward.
For forward KL the gradients have a closed form, so this path works in three reused
buffers per vocabulary, in place, and returns the gradients of the hidden rows, the
student head and the projector directly. It gives the same sums, counts and gradients
as the DSKD objective's terms + autograd (tested); any other divergence, or a chunk with a
non-finite logit, goes through autograd instead.

With p = softmax(a / T) the target and q = softmax(b / T) the trained side,
d KL(p || q) / d b = (q - p) / T, and d CE(z, y) / d z = softmax(z) - onehot(y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from axolotl_dskd.labels import IGNORE_INDEX
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.fit_counts import teacher_fit_counts
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.terms import Counts, LossTerms


def supports(cfg: LossConfig) -> bool:
    """Whether the closed form covers DSKD's terms under this configuration."""
    return cfg.divergence.name == "forward_kl"


def workspace(rows: int, heads: Heads, device: torch.device) -> torch.Tensor:
    """One float32 block for three [rows x vocab] buffers of either space: both spaces of
    every chunk reuse it, since each fresh vocabulary-sized block costs page faults on CPU."""
    vocab = max(heads.student_head.shape[0], heads.teacher_head.shape[0])
    return torch.empty(3 * rows * vocab, dtype=torch.float32, device=device)


def _buffers(block: torch.Tensor, rows: int, vocab: int) -> tuple[torch.Tensor, ...]:
    return block[: 3 * rows * vocab].view(3, rows, vocab).unbind(0)


def _logits_into(buffer: torch.Tensor, hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """hidden @ head.T in the head's dtype, stored as float32 in `buffer` (no new allocation
    for float32 heads)."""
    if head.dtype == torch.float32:
        return torch.mm(hidden.float(), head.t(), out=buffer)
    return buffer.copy_(F.linear(hidden.to(head.dtype), head))


def row_argmax(logits: torch.Tensor, width: int, block: int = 1024) -> torch.Tensor:
    """Column of each row's first maximum among its first `width` columns (torch.argmax's
    answer), found block by block: on CPU a max that tracks indices over a whole vocabulary
    row costs several times a plain one."""
    rows, full = logits.shape[0], width // block * block
    block_maxima = [logits[:, :full].reshape(rows, -1, block).amax(-1)] if full else []
    if full < width:
        block_maxima.append(logits[:, full:width].amax(-1, keepdim=True))
    start = torch.cat(block_maxima, dim=1).argmax(-1, keepdim=True) * block
    columns = (start + torch.arange(block, device=logits.device)).clamp_max(width - 1)
    return columns.gather(1, logits.gather(1, columns).argmax(-1, keepdim=True)).squeeze(1)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Turn each row into its softmax in place; return its logsumexp."""
    row_max = logits.amax(-1, keepdim=True)
    logits.sub_(row_max).exp_()
    total = logits.sum(-1, keepdim=True)
    logits.div_(total)
    return (row_max + total.log()).squeeze(-1)


def _log_softmax_(logits: torch.Tensor, probs: torch.Tensor) -> None:
    """Turn each row into its log-softmax in place and write its softmax into `probs`."""
    logits.sub_(logits.amax(-1, keepdim=True))
    total = torch.exp(logits, out=probs).sum(-1, keepdim=True)
    logits.sub_(total.log())
    probs.div_(total)


def _row_dot_(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Per-row dot product; overwrites `left`."""
    return left.mul_(right).sum(-1)


def _matmul(grad_logits: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """grad_logits @ head in the head's dtype (as autograd would for F.linear), as float32."""
    return (grad_logits.to(head.dtype) @ head).float()


def _all_finite(logits: torch.Tensor) -> bool:
    return bool(torch.isfinite(logits.sum()))


def pair_chunk(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
    weights: LossTerms[float],
    needs: tuple[bool, bool, bool],
    block: torch.Tensor,
) -> tuple[LossTerms[torch.Tensor], Counts, tuple[torch.Tensor | None, ...]] | None:
    """(term sums, counts, gradients of the weighted sum of the terms for the hidden rows,
    the student head and the projector, None where not needed) for a chunk of aligned
    pairs, or None when a logit is not finite (the caller then uses autograd). `block` is a
    `workspace` for at least this many rows; its contents are overwritten."""
    temperature = cfg.divergence.temperature
    w_ce, w_t2s_ce, w_t2s_kd, w_s2t_kd = weights.ce_loss, weights.t2s_ce_loss, weights.t2s_kd_loss, weights.s2t_kd_loss
    rows = labels.numel()
    hidden = student_hidden.detach().float()
    student_head, teacher_head, projector = heads.student_head.detach(), heads.teacher_head, heads.t2s_weight.detach()
    arange = torch.arange(rows, device=labels.device)

    # teacher space: p_t = softmax(z_t / T) vs q = softmax(z_s2t / T)
    teacher_log_p, s2t_logits, teacher_p = _buffers(block, rows, teacher_head.shape[0])
    _logits_into(teacher_log_p, teacher_hidden, teacher_head)
    projected_student = F.linear(hidden, heads.s2t_weight)
    _logits_into(s2t_logits, projected_student, teacher_head)
    if not (_all_finite(teacher_log_p) and _all_finite(s2t_logits)):
        return None
    teacher_pred = row_argmax(teacher_log_p, heads.teacher_vocab)
    s2t_agree = row_argmax(s2t_logits, heads.teacher_vocab) == teacher_pred
    t2s_label = heads.t2s_label(teacher_pred)
    valid = t2s_label >= 0
    fit = teacher_fit_counts(teacher_log_p, teacher_pred, heads.gold_in_teacher(labels), scratch=teacher_p)
    _log_softmax_(teacher_log_p.div_(temperature), teacher_p)
    s2t_log_q, s2t_q = s2t_logits.div_(temperature), teacher_log_p  # q overwrites log p_t once read
    p_log_p = _row_dot_(teacher_log_p, teacher_p)
    _log_softmax_(s2t_log_q, s2t_q)
    s2t_kd_rows = p_log_p - _row_dot_(s2t_log_q, teacher_p)
    grad_projected_student = _matmul(s2t_q.sub_(teacher_p), teacher_head) * (valid * (w_s2t_kd / temperature))[:, None]

    # student space: gold CE on z_s, t2s CE on z_t2s, KL(softmax(z_t2s / T) || softmax(z_s / T))
    student_logits, t2s_logits, scratch = _buffers(block, rows, student_head.shape[0])
    _logits_into(student_logits, hidden, student_head)
    projected_teacher = F.linear(teacher_hidden.to(projector.dtype), projector).float()
    _logits_into(t2s_logits, projected_teacher, student_head)
    if not (_all_finite(student_logits) and _all_finite(t2s_logits)):
        return None
    t2s_pred = row_argmax(t2s_logits, heads.student_vocab)
    agree = valid & (t2s_pred == t2s_label)
    kd_mask = agree if cfg.agreement_mask else valid
    safe_t2s_label = t2s_label.clamp_min(0)

    t2s_softmax = scratch.copy_(t2s_logits)
    t2s_ce_rows = (_softmax_(t2s_softmax) - t2s_logits[arange, safe_t2s_label]) * valid
    t2s_softmax[arange, safe_t2s_label] -= 1.0
    grad_projected_teacher = _matmul(t2s_softmax, student_head) * (valid * w_t2s_ce)[:, None]

    target_p = scratch  # p = softmax(z_t2s / T), log p in t2s_logits
    _log_softmax_(t2s_logits.div_(temperature), target_p)
    target_p_log_p = _row_dot_(t2s_logits, target_p)

    gold = labels != IGNORE_INDEX
    safe_labels = labels.clamp_min(0)
    grad_student_logits = t2s_logits.copy_(student_logits)  # becomes the gradient of z_s
    ce_rows = (_softmax_(grad_student_logits) - student_logits[arange, safe_labels]) * gold
    grad_student_logits.mul_(w_ce)
    grad_student_logits[arange, safe_labels] -= w_ce * gold
    kd_scale = (kd_mask * (w_t2s_kd / temperature))[:, None]
    grad_student_logits.addcmul_(target_p, kd_scale, value=-1.0)
    student_q = student_logits.div_(temperature)
    p_dot_z = _row_dot_(target_p, student_q)  # sum_v p z_s / T; target_p is spent
    student_lse = _softmax_(student_q)
    t2s_kd_rows = (target_p_log_p - p_dot_z + student_lse) * kd_mask
    grad_student_logits.addcmul_(student_q, kd_scale)

    grad_hidden = (
        _matmul(grad_student_logits, student_head) + grad_projected_student @ heads.s2t_weight if needs[0] else None
    )
    grad_head = _matmul(grad_student_logits.t(), hidden.to(student_head.dtype)) if needs[1] else None
    grad_projector = _matmul(grad_projected_teacher.t(), teacher_hidden.to(projector.dtype)) if needs[2] else None
    sums = LossTerms(
        ce_loss=ce_rows.sum(),
        t2s_ce_loss=t2s_ce_rows.sum(),
        t2s_kd_loss=t2s_kd_rows.sum(),
        s2t_kd_loss=(s2t_kd_rows * valid).sum(),
        vanilla_kd_loss=hidden.new_zeros(()),
    )
    counts = Counts.of_pairs(valid, agree, t2s_pred == labels, s2t_agree, fit)
    return sums, counts, (grad_hidden, grad_head, grad_projector)
