"""Named loss terms and counts: what a chunk of rows returns and what the weights scale.

The chunked loss adds them up as one stacked tensor per record (a single autograd output,
one all-reduce); everywhere else they are read and written by name, so adding a term
cannot shift another term's weight or metric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

Value = TypeVar("Value", torch.Tensor, float)


class _Stackable:
    """A frozen dataclass of same-typed values that converts to and from a 1-D tensor
    in field order."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.names())

    def stack(self, device: torch.device | None = None) -> torch.Tensor:
        """The values as one float32 tensor, in field order."""
        return torch.stack([torch.as_tensor(value, dtype=torch.float32, device=device) for value in self.values()])

    @classmethod
    def unstack(cls, stacked: torch.Tensor):
        return cls(*stacked.unbind(0))

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.names(), self.values(), strict=True)}

    def __add__(self, other):
        return type(self)(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))


@dataclass(frozen=True)
class LossTerms(_Stackable, Generic[Value]):
    """One value per loss term: summed over rows (the loss's output) or the weight that
    scales each sum. The names are the logged metric names."""

    ce_loss: Value
    t2s_ce_loss: Value
    t2s_kd_loss: Value
    s2t_kd_loss: Value
    vanilla_kd_loss: Value

    @classmethod
    def of(cls, ce_loss: Value, kd: Value) -> LossTerms:
        """The gold CE's value and one value for every KD term."""
        return cls(ce_loss, *(kd for _ in cls.names()[1:]))

    def kd_total(self) -> Value:
        """All KD terms together: every term but the gold CE."""
        return sum(self.values()[1:])

    def gold_only(self) -> LossTerms:
        """The same gold CE value, every KD term zero."""
        return LossTerms.of(self.ce_loss, self.ce_loss * 0.0)

    def kd_only(self) -> LossTerms:
        """The same KD values, the gold CE zero."""
        return dataclasses.replace(self, ce_loss=self.ce_loss * 0.0)


@dataclass(frozen=True)
class TeacherFitCounts(_Stackable):
    """How well the teacher predicts the gold tokens (teacher_fit.py)."""

    n_teacher_gold: torch.Tensor  # rows whose gold token the teacher has
    n_teacher_correct: torch.Tensor  # of those, rows where the teacher's argmax is it
    teacher_gold_nll: torch.Tensor  # the teacher's summed NLL of the gold token (T = 1)


@dataclass(frozen=True)
class Counts(_Stackable):
    """Non-differentiable counts over rows, for the metrics and the teacher-fit check."""

    n_tokens: torch.Tensor  # student response rows
    n_pairs: torch.Tensor  # rows paired with a teacher row
    n_valid: torch.Tensor  # pairs whose teacher prediction has a student token
    n_agree: torch.Tensor  # valid pairs where the projected teacher agrees with the teacher
    n_t2s_correct: torch.Tensor  # pairs where the projected teacher predicts the gold token
    n_s2t_agree: torch.Tensor  # pairs where the projected student agrees with the teacher
    n_teacher_gold: torch.Tensor
    n_teacher_correct: torch.Tensor
    teacher_gold_nll: torch.Tensor

    @classmethod
    def of(cls, rows: dict[str, torch.Tensor], fit: TeacherFitCounts) -> Counts:
        """Row counts by name, the teacher-fit counts, and zero for every count not given."""
        zero = fit.n_teacher_gold * 0.0
        given = rows | dict(zip(fit.names(), fit.values(), strict=True))
        return cls(**{name: given.get(name, zero) for name in cls.names()})

    @classmethod
    def of_pairs(
        cls,
        valid: torch.Tensor,
        agree: torch.Tensor,
        t2s_correct: torch.Tensor,
        s2t_agree: torch.Tensor,
        fit: TeacherFitCounts,
    ) -> Counts:
        """The counts of a chunk of aligned pairs, from its per-pair masks."""
        n_rows = valid.new_tensor(float(valid.numel()), dtype=torch.float32)
        masks = {"n_valid": valid, "n_agree": agree, "n_t2s_correct": t2s_correct, "n_s2t_agree": s2t_agree}
        rows = {"n_tokens": n_rows, "n_pairs": n_rows} | {name: mask.sum().float() for name, mask in masks.items()}
        return cls.of(rows, fit)

    @classmethod
    def lone_rows(cls, n_rows: torch.Tensor) -> Counts:
        """Rows without a teacher partner: only n_tokens counts them."""
        zero = n_rows * 0.0
        return cls.of({"n_tokens": n_rows}, TeacherFitCounts(zero, zero, zero))
