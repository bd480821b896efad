"""Loss terms and counts are read by name; the stacked form keeps the field order."""

from __future__ import annotations

import torch

from axolotl_dskd.loss.terms import Counts, LossTerms, TeacherFitCounts


def test_loss_terms_stack_in_field_order_and_back() -> None:
    terms = LossTerms(*(torch.tensor(float(n)) for n in range(5)))
    assert terms.stack().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert LossTerms.unstack(terms.stack()).as_dict() == terms.as_dict()
    assert terms.as_dict()["s2t_kd_loss"] == 3.0
    assert float(terms.kd_total()) == 1.0 + 2.0 + 3.0 + 4.0


def test_weights_split_into_gold_and_kd_parts() -> None:
    weights = LossTerms.of(0.25, 0.75)
    assert weights.gold_only().as_dict() == {"ce_loss": 0.25} | dict.fromkeys(LossTerms.names()[1:], 0.0)
    assert weights.kd_only().as_dict() == {"ce_loss": 0.0} | dict.fromkeys(LossTerms.names()[1:], 0.75)
    assert (weights.gold_only() + weights.kd_only()).as_dict() == weights.as_dict()


def test_pair_counts_come_from_masks_and_lone_rows_count_only_tokens() -> None:
    fit = TeacherFitCounts(torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.5))
    valid = torch.tensor([True, True, False, True])
    agree = torch.tensor([True, False, False, True])
    counts = Counts.of_pairs(valid, agree, torch.tensor([True, False, False, False]), valid, fit)
    assert counts.as_dict() == {
        "n_tokens": 4.0,
        "n_pairs": 4.0,
        "n_valid": 3.0,
        "n_agree": 2.0,
        "n_t2s_correct": 1.0,
        "n_s2t_agree": 3.0,
        "n_teacher_gold": 3.0,
        "n_teacher_correct": 2.0,
        "teacher_gold_nll": 1.5,
    }
    lone = Counts.lone_rows(torch.tensor(5.0)).as_dict()
    assert lone["n_tokens"] == 5.0 and sum(lone.values()) == 5.0
