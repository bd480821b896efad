"""Finite or loud: NaN and inf are stopped where they enter, before an optimizer step.

A teacher with one NaN embedding row (a broken checkpoint, an fp16 overflow) would
otherwise turn every later step into NaN while Hugging Face logs the loss as 0. The
heads and the projector init are checked once; the teacher's rows and the loss terms
once per micro-batch, with one reduction over what the loss reads anyway.
"""

from __future__ import annotations

import math

import torch

from axolotl_dskd.errors import NonFiniteError

WHAT_TO_DO = (
    "A broken checkpoint or an fp16 overflow gives this: check the teacher's weight files, or load it in "
    "bfloat16 or float32 (dskd_teacher_dtype)"
)


def _first(ids: torch.Tensor, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit].tolist())
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_head(head: torch.Tensor, name: str) -> None:
    """Every row of an output head is finite (checked once, when the step is built)."""
    bad = (~torch.isfinite(head)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise NonFiniteError(
            f"dskd: the {name}'s output head has NaN or inf in the rows of token ids {_first(bad)}; stopping before "
            f"training. {WHAT_TO_DO}"
        )


def check_projector_init(weight: torch.Tensor, rel_error: float) -> None:
    if not (math.isfinite(rel_error) and bool(torch.isfinite(weight).all())):
        raise NonFiniteError(
            f"dskd: the t2s projector's pinv init is not finite (relative error {rel_error}); the two heads it is "
            "fitted from hold NaN or inf. Check both models' output heads, or set dskd_projector_init: random"
        )


def non_finite_rows(teacher_rows: torch.Tensor) -> torch.Tensor:
    """Indices of the teacher rows that hold a NaN or inf (empty: all finite)."""
    return (~torch.isfinite(teacher_rows)).any(dim=-1).nonzero().flatten()


def teacher_rows_error(bad: int, total: int, source: str, embedding_ids: torch.Tensor | None) -> NonFiniteError:
    """The one line for non-finite teacher rows: how many, from where, and what to do."""
    where = f"at {bad} of {total} response positions of this batch"
    if embedding_ids is not None and len(embedding_ids):
        where += f" (its input embedding has NaN or inf for token ids {_first(embedding_ids)})"
    if source == "cache":
        return NonFiniteError(
            f"dskd: the teacher cache's rows are NaN or inf {where}; stopping before the optimizer steps on them. "
            "Rebuild it (`axolotl-dskd cache-teacher`) from a teacher whose outputs are finite"
        )
    return NonFiniteError(
        f"dskd: the teacher's hidden states are NaN or inf {where}; stopping before the optimizer steps on them. "
        f"{WHAT_TO_DO}"
    )


def bad_embedding_ids(embedding: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Which of the batch's token ids have a non-finite embedding row (None when the
    embedding is not readable here, e.g. partitioned by ZeRO-3)."""
    if embedding.numel() == 0:
        return None
    ids = input_ids.unique()
    ids = ids[(ids >= 0) & (ids < embedding.shape[0])].to(embedding.device)
    return ids[(~torch.isfinite(embedding[ids])).any(dim=-1)].cpu()


def check_metrics(metrics: dict[str, float]) -> None:
    """The micro-batch's loss terms are finite (a student that overflowed)."""
    bad = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise NonFiniteError(
            f"dskd: the loss is NaN or inf in this micro-batch ({terms}); stopping before the optimizer steps on it. "
            "The teacher's rows were finite, so the student overflowed: lower the learning rate, or train in bf16 "
            "rather than fp16"
        )
