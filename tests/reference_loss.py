"""DSKDv2's dual-space loss (method doc section 2) written the straightforward way: full
[rows x vocab] logits for every row at once. The reference the chunked loss is tested
against, and the baseline of benchmarks/loss_memory.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from axolotl_dskd.divergences import divergence
from axolotl_dskd.loss import Heads, LossConfig


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
