"""NaN and inf stop the run where they enter, with one line naming what and where."""

from __future__ import annotations

import pytest
import torch

from axolotl_dskd.errors import NonFiniteError
from axolotl_dskd.finite import (
    bad_embedding_ids,
    check_head,
    check_metrics,
    check_projector_init,
    non_finite_rows,
    teacher_rows_error,
)


def test_a_head_with_non_finite_rows_is_refused_naming_them() -> None:
    head = torch.randn(10, 4)
    check_head(head, "teacher")
    head[3, 1], head[7, 0] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"output head has NaN or inf in the rows of token ids 3, 7;"):
        check_head(head, "teacher")


def test_a_non_finite_projector_init_is_refused() -> None:
    check_projector_init(torch.ones(2, 2), 0.5)
    with pytest.raises(NonFiniteError, match="pinv init is not finite"):
        check_projector_init(torch.ones(2, 2), float("nan"))
    with pytest.raises(NonFiniteError, match="pinv init is not finite"):
        check_projector_init(torch.tensor([[float("inf")]]), 0.5)


def test_non_finite_teacher_rows_are_found_and_the_embedding_rows_named() -> None:
    rows = torch.zeros(5, 3)
    assert len(non_finite_rows(rows)) == 0
    rows[1, 2], rows[4, 0] = float("nan"), float("-inf")
    assert non_finite_rows(rows).tolist() == [1, 4]
    embedding = torch.zeros(8, 3)
    embedding[6, 1] = float("nan")
    ids = bad_embedding_ids(embedding, torch.tensor([[1, 6, 6, 2]]))
    assert ids.tolist() == [6]
    assert bad_embedding_ids(torch.empty(0), torch.tensor([[1]])) is None  # partitioned: not readable here
    message = str(teacher_rows_error(2, 5, "live", ids))
    assert message.startswith("dskd: the teacher's hidden states are NaN or inf at 2 of 5 response positions")
    assert "token ids 6" in message
    assert "Rebuild it" in str(teacher_rows_error(2, 5, "cache", None))


def test_a_non_finite_loss_term_stops_the_micro_batch() -> None:
    check_metrics({"ce_loss": 1.0, "kd_loss": 0.0})
    with pytest.raises(NonFiniteError, match=r"the loss is NaN or inf in this micro-batch \(ce_loss nan\)"):
        check_metrics({"ce_loss": float("nan"), "kd_loss": 0.5})
