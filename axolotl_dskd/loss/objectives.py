"""What one chunk of rows computes, one class per objective; the chunking and gradient
bookkeeping live in chunked.py (the split Liger-Kernel's chunked losses use).

DSKD (the dual-space terms, with the closed form as its fast path), vanilla KD (the
baseline, logit KD on a shared vocabulary) and the gold CE alone, for rows that have no
teacher partner. Every objective returns term *sums* (terms.py) and counts for its chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from axolotl_dskd.labels import IGNORE_INDEX
from axolotl_dskd.loss import closed_form
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import divergence
from axolotl_dskd.loss.fit_counts import teacher_fit_counts
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.terms import Counts, LossTerms


def logits(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """hidden @ head.T in the head's dtype, as float32."""
    return F.linear(hidden.to(head.dtype), head).float()


@dataclass(frozen=True)
class GoldAndTeacher:
    """What every objective with a teacher reads first: the student's logits and gold CE,
    the teacher's logits (no gradient), its predictions and its fit to the gold tokens."""

    student_logits: torch.Tensor
    ce: torch.Tensor
    teacher_logits: torch.Tensor
    teacher_pred: torch.Tensor
    fit: dict[str, torch.Tensor]

    @classmethod
    def of(cls, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor, heads: Heads):
        student_logits = logits(student_hidden, heads.student_head)
        ce = F.cross_entropy(student_logits, labels, reduction="sum")
        with torch.no_grad():
            teacher_logits = logits(teacher_hidden, heads.teacher_head)
        teacher_pred = teacher_logits[:, : heads.teacher_vocab].argmax(-1)
        fit = teacher_fit_counts(teacher_logits, teacher_pred, heads.gold_in_teacher(labels))
        return cls(student_logits, ce, teacher_logits, teacher_pred, fit)


class Objective:
    """One chunk's term sums and counts; `teacher_hidden` holds the chunk's teacher rows."""

    # what differs between objectives, asked by the layers above instead of the method's name:
    crosses_tokenizers: bool = False  # compares two vocabularies (through projectors), or needs one
    trains_projector: bool = False  # a t2s projector is trained, checkpointed and restored
    divides_by_pairs: bool = False  # `dskd_normalization: paper` divides its terms by pair counts

    def own_metrics(self, terms: dict[str, float], count: dict[str, float]) -> dict[str, float]:
        """The metrics only this objective logs (per-token `terms`, the micro-batch's counts)."""
        return {}

    def terms(
        self,
        student_hidden: torch.Tensor,
        teacher_hidden: torch.Tensor,
        labels: torch.Tensor,
        heads: Heads,
        cfg: LossConfig,
    ) -> tuple[LossTerms, Counts]:
        raise NotImplementedError

    def has_closed_form(self, cfg: LossConfig) -> bool:
        """Whether `closed_form.pair_chunk` computes this objective's chunks (and gradients)."""
        return False


class CEOnly(Objective):
    """Rows without a teacher partner (across tokenizers): only the gold CE."""

    def terms(self, student_hidden, teacher_hidden, labels, heads, cfg) -> tuple[LossTerms, Counts]:
        ce = F.cross_entropy(logits(student_hidden, heads.student_head), labels, reduction="sum")
        return LossTerms.of(ce, ce.new_zeros(())), Counts.lone_rows(ce.new_tensor(float(labels.numel())).detach())


class VanillaKD(Objective):
    """Logit KD on the shared vocabulary (the same tokenizer): the baseline."""

    def terms(self, student_hidden, teacher_hidden, labels, heads, cfg) -> tuple[LossTerms, Counts]:
        read = GoldAndTeacher.of(student_hidden, teacher_hidden, labels, heads)
        zero = student_hidden.new_zeros((), dtype=torch.float32)
        n_rows = zero.new_tensor(float(labels.numel()))
        vocab = min(heads.student_vocab, heads.teacher_vocab)
        kd = divergence(read.teacher_logits[:, :vocab], read.student_logits[:, :vocab], cfg.divergence).sum()
        sums = LossTerms(ce_loss=read.ce, t2s_ce_loss=zero, t2s_kd_loss=zero, s2t_kd_loss=zero, vanilla_kd_loss=kd)
        return sums, Counts.of({"n_tokens": n_rows, "n_pairs": n_rows, "n_valid": n_rows}, read.fit)


class DSKD(Objective):
    """DSKDv2's dual-space terms: the teacher projected into the student's space (t2s CE and
    KD, the student head detached) and the student into the teacher's (s2t KD)."""

    crosses_tokenizers = True
    trains_projector = True
    divides_by_pairs = True

    def own_metrics(self, terms: dict[str, float], count: dict[str, float]) -> dict[str, float]:
        n_tokens, n_pairs = max(count["n_tokens"], 1.0), max(count["n_pairs"], 1.0)
        return {name: terms[name] for name in ("t2s_ce_loss", "t2s_kd_loss", "s2t_kd_loss")} | {
            "t2s_agreement": count["n_agree"] / n_pairs,
            "t2s_acc": count["n_t2s_correct"] / n_pairs,
            "s2t_agreement": count["n_s2t_agree"] / n_pairs,
            "align_ratio": count["n_pairs"] / n_tokens,
        }

    def terms(self, student_hidden, teacher_hidden, labels, heads, cfg) -> tuple[LossTerms, Counts]:
        read = GoldAndTeacher.of(student_hidden, teacher_hidden, labels, heads)
        t2s_label = heads.t2s_label(read.teacher_pred)
        valid = t2s_label >= 0  # the teacher's prediction has a student token: otherwise skip the pair
        # student space: teacher hidden -> student hidden, decoded by the detached student head
        # fp32 projector, or bf16 when DeepSpeed's bf16 engine cast it with the student
        projected_teacher = F.linear(teacher_hidden.to(heads.t2s_weight.dtype), heads.t2s_weight).float()
        t2s_logits = logits(projected_teacher, heads.student_head.detach())
        t2s_ce = F.cross_entropy(t2s_logits, torch.where(valid, t2s_label, IGNORE_INDEX), reduction="sum")
        t2s_pred = t2s_logits[:, : heads.student_vocab].argmax(-1)
        agree = valid & (t2s_pred == t2s_label)
        t2s_kd_rows = divergence(t2s_logits.detach(), read.student_logits, cfg.divergence)
        t2s_kd = (t2s_kd_rows * (agree if cfg.agreement_mask else valid)).sum()
        # teacher space: student hidden -> teacher hidden, decoded by the frozen teacher head
        projected_student = F.linear(student_hidden.float(), heads.s2t_weight)
        s2t_logits = logits(projected_student, heads.teacher_head)
        s2t_kd = (divergence(read.teacher_logits, s2t_logits, cfg.divergence) * valid).sum()
        s2t_agree = s2t_logits[:, : heads.teacher_vocab].argmax(-1) == read.teacher_pred
        zero = student_hidden.new_zeros((), dtype=torch.float32)
        sums = LossTerms(
            ce_loss=read.ce, t2s_ce_loss=t2s_ce, t2s_kd_loss=t2s_kd, s2t_kd_loss=s2t_kd, vanilla_kd_loss=zero
        )
        return sums, Counts.of_pairs(valid, agree, t2s_pred == labels, s2t_agree, read.fit)

    def has_closed_form(self, cfg: LossConfig) -> bool:
        return closed_form.supports(cfg)


CE_ONLY = CEOnly()
# `dskd_method` -> its objective: the schema's choices are this registry's keys
OBJECTIVES: dict[str, Objective] = {"dskd": DSKD(), "vanilla_kd": VanillaKD()}


def objective(method: str) -> Objective:
    """The objective a `dskd_method` names."""
    return OBJECTIVES[method]
