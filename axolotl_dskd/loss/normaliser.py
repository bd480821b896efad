"""What each loss term's sum is divided by, decided in one place.

`dskd_normalization: global` divides every term by the response tokens of the global batch
(gradient accumulation and several processes then equal one big batch); `paper` divides
DSKD's terms by the micro-batch's pair counts, as DSKDv2's criterion does, which are known
only once the teacher rows are decoded (`pair_counts`). A `Normaliser` holds a batch's
weights and divisors until those counts are known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.objectives import logits, objective
from axolotl_dskd.loss.terms import LossTerms


@torch.no_grad()
def pair_counts(teacher_hidden: torch.Tensor, heads: Heads, chunk_size: int) -> tuple[int, int]:
    """(pairs whose teacher prediction has a student token, of those the ones where the
    projected teacher agrees): the per-micro-batch divisors of the `paper` normalisation,
    known only once the teacher rows are decoded."""
    n_valid = n_agree = 0
    for start in range(0, teacher_hidden.shape[0], chunk_size):
        rows = teacher_hidden[start : start + chunk_size]
        t2s_label = heads.t2s_label(logits(rows, heads.teacher_head)[:, : heads.teacher_vocab].argmax(-1))
        projected = F.linear(rows.to(heads.t2s_weight.dtype), heads.t2s_weight).float()
        t2s_pred = logits(projected, heads.student_head.detach())[:, : heads.student_vocab].argmax(-1)
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
    by_valid_pairs: bool,
) -> LossTerms[float]:
    """Each term's weight divided by what its sum is normalised by, so sum(weights * sums)
    is the loss. `global` (`counts` None): the gold CE by `gold_divisor`, every KD term by
    `kd_divisor`. `paper` (DSKDv2's criterion, `counts` from `pair_counts`): the student-space KD by the
    micro-batch's agreeing pairs and, with two tokenizers (`by_valid_pairs`), the t2s CE and
    s2t KD by its valid pairs, each times `local_divisor` (micro-batches per step x processes), so a step
    averages its micro-batches' ratios."""
    divisors = LossTerms.of(float(gold_divisor), float(kd_divisor))
    if counts is not None:
        n_valid, n_agree = counts
        by_pairs = ["t2s_ce_loss", "s2t_kd_loss"] if by_valid_pairs else []
        by_agreement = []
        if cfg.agreement_mask:
            by_agreement.append("t2s_kd_loss")
        elif by_valid_pairs:
            by_pairs.append("t2s_kd_loss")
        divisors = dataclasses.replace(
            divisors,
            **{term: max(n_valid, 1) * local_divisor for term in by_pairs},
            **{term: max(n_agree, 1) * local_divisor for term in by_agreement},
        )
    return LossTerms(*(weight / divisor for weight, divisor in zip(weights.values(), divisors.values(), strict=True)))


@dataclass(frozen=True)
class Normaliser:
    """A scored batch's term weights and what their sums are divided by.

    `total_rows`: response tokens of the global batch (None: the scored batch's own rows);
    `per_step`: micro-batches per optimizer step x processes; `kd_by_batch_rows`: the KD
    terms of an on-policy batch, divided by its own rows x `per_step` (so a step's KD is
    the mean over its on-policy micro-batches)."""

    cfg: LossConfig
    weights: LossTerms[float]
    total_rows: int | None = None
    per_step: float = 1.0
    kd_by_batch_rows: bool = False
    by_valid_pairs: bool = False  # the vocabulary's answer: `paper` divides by valid pairs across tokenizers

    @property
    def needs_pair_counts(self) -> bool:
        """`paper` divides DSKD's terms by the micro-batch's pair counts (vanilla KD has no pairs to count)."""
        return self.cfg.normalization == "paper" and objective(self.cfg.method).divides_by_pairs

    def divided(self, n_rows: int, counts: tuple[int, int] | None) -> LossTerms[float]:
        """The weights for a batch of `n_rows` response rows; `counts` from `pair_counts`
        when `needs_pair_counts`. A step whose rows were all cut to their prompts has no
        response token: its sums are 0, so any divisor gives loss 0 (as plain Axolotl logs)."""
        if self.kd_by_batch_rows:
            gold, kd = 1.0, max(n_rows, 1) * self.per_step
        else:
            gold = kd = float(max(n_rows if self.total_rows is None else self.total_rows, 1))
        return divided_weights(self.cfg, self.weights, gold, kd, self.per_step, counts, self.by_valid_pairs)
