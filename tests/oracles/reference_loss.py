"""DSKDv2's dual-space loss (method doc section 2) written the straightforward way: full
[rows x vocab] logits for every row at once. The reference the chunked loss is tested
against, and the baseline of benchmarks/loss_memory.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import divergence
from axolotl_dskd.loss.heads import Heads


def _logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    return (hidden.to(head.dtype) @ head.T).float()


def reference_dskd(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor, heads: Heads, cfg: LossConfig
) -> torch.Tensor:
    """(1 - alpha) CE + alpha (t2s CE + t2s KD + s2t KD), summed over rows."""
    vocab = heads.student_vocab
    z_s = _logits(student_hidden, heads.student_head)
    with torch.no_grad():
        z_t = _logits(teacher_hidden, heads.teacher_head)
    teacher_pred = z_t[:, :vocab].argmax(-1)
    z_t2s = _logits(F.linear(teacher_hidden.float(), heads.t2s_weight), heads.student_head.detach())
    agree = (z_t2s[:, :vocab].argmax(-1) == teacher_pred).float()
    t2s_kd = divergence(z_t2s.detach(), z_s, cfg.divergence)
    if cfg.agreement_mask:
        t2s_kd = t2s_kd * agree
    z_s2t = _logits(student_hidden.float() @ heads.s2t_weight.T, heads.teacher_head)
    kd = (
        F.cross_entropy(z_t2s, teacher_pred, reduction="sum")
        + t2s_kd.sum()
        + divergence(z_t, z_s2t, cfg.divergence).sum()
    )
    ce = F.cross_entropy(z_s, labels, reduction="sum")
    return (1 - cfg.kd_ratio) * ce + cfg.kd_ratio * kd


def reference_paper(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    heads: Heads,
    cfg: LossConfig,
    loss_denom: float,
) -> torch.Tensor:
    """DSKDv2's criterion for one micro-batch (method doc 2.3 and 4.2): the gold CE over
    `loss_denom`; t2s KD over the agreeing pairs; with two tokenizers t2s CE and s2t KD over
    the valid pairs, else over `loss_denom`. The first len(teacher_hidden) rows are pairs."""
    n_pairs = teacher_hidden.shape[0]
    z_s_all = _logits(student_hidden, heads.student_head)
    z_s = z_s_all[:n_pairs]
    with torch.no_grad():
        z_t = _logits(teacher_hidden, heads.teacher_head)
    teacher_pred = z_t[:, : heads.teacher_vocab].argmax(-1)
    label = teacher_pred if heads.teacher_to_student is None else heads.teacher_to_student[teacher_pred]
    valid = label >= 0
    z_t2s = _logits(F.linear(teacher_hidden.float(), heads.t2s_weight), heads.student_head.detach())
    agree = valid & (z_t2s[:, : heads.student_vocab].argmax(-1) == label)
    t2s_ce = F.cross_entropy(z_t2s[valid], label[valid], reduction="sum")
    t2s_kd = (divergence(z_t2s.detach(), z_s, cfg.divergence) * agree).sum() / max(int(agree.sum()), 1)
    z_s2t = _logits(student_hidden[:n_pairs].float() @ heads.s2t_weight.T, heads.teacher_head)
    s2t_kd = (divergence(z_t, z_s2t, cfg.divergence) * valid).sum()
    pair_denom = max(int(valid.sum()), 1) if heads.teacher_to_student is not None else loss_denom
    kd = t2s_ce / pair_denom + t2s_kd + s2t_kd / pair_denom
    ce = F.cross_entropy(z_s_all, labels, reduction="sum") / loss_denom
    return (1 - cfg.kd_ratio) * ce + cfg.kd_ratio * kd
