"""Sample packing on tiny real models: a packed batch gives every loss term and gradient of
the same rows unpacked, and rows packed together never see each other."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from axolotl_dskd.collate.packing import model_inputs, packed_row, packing_flags, sub_rows
from axolotl_dskd.distill.on_policy import prompts
from axolotl_dskd.distill.positions import LossPositions
from axolotl_dskd.teacher.cache import HeadOnlyTeacher, TeacherCache
from axolotl_dskd.teacher.loading import last_hidden_state
from tests.teacher.test_cache import CROSS, _build, _collator, _features, _loss_and_grads, _step, _teacher_dir

ATTENTION = ("sdpa", "eager")


def _models(tiny, cross: bool, attention: str):
    teacher = AutoModelForCausalLM.from_pretrained(
        _teacher_dir(tiny, cross), dtype=torch.float32, attn_implementation=attention
    )
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32, attn_implementation=attention)
    return student, teacher.eval().requires_grad_(False)


def test_a_bin_becomes_one_row_with_restarting_positions_and_no_label_across_rows() -> None:
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8, 9], "labels": [8, 9]},
    ]
    assert packed_row(rows) == {
        "input_ids": [5, 6, 7, 8, 9],
        "labels": [-100, 6, 7, -100, 9],  # 8 would be predicted from the first row's last token
        "position_ids": [0, 1, 2, 0, 1],
    }


def test_on_policy_prompts_are_cut_per_packed_row_and_skip_the_padded_tail() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9, 4, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 7, -100, -100, 4, -100, -100]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]]),
    } | packing_flags(True, 1)
    assert sub_rows(batch["position_ids"]) == [[(0, 3), (3, 6), (6, 8)]]
    assert prompts(batch) == [[5, 6], [8, 9]]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("teacher_kind", [*CROSS, "vanilla_kd"])
def test_packed_rows_give_every_loss_term_and_gradient_of_the_unpacked_rows(tiny, teacher_kind, attention) -> None:
    cross = teacher_kind == "cross_tokenizer"
    method = "vanilla_kd" if teacher_kind == "vanilla_kd" else "dskd"
    student, teacher = _models(tiny, cross, attention)
    features = _features(tiny.tokenizer, tiny.data, rows=5)  # five different lengths
    collate = _collator(tiny, cross)
    plain = collate(copy.deepcopy(features))
    packed = collate([copy.deepcopy(features[:3]), copy.deepcopy(features[3:])])
    assert packed["input_ids"].shape[0] == 2 and "attention_mask" not in packed
    if cross:
        assert "teacher_attention_mask" not in packed and packed["teacher_position_ids"].shape[0] == 2
    step = _step(tiny, student, teacher, cross, method)
    plain_sums, plain_counts = step.score(student, plain)
    packed_sums, packed_counts = step.score(student, packed)
    assert packed_counts.as_dict() == plain_counts.as_dict()
    for name, value in plain_sums.as_dict().items():
        assert packed_sums.as_dict()[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    plain_loss, plain_grads = _loss_and_grads(step, student, plain)
    packed_loss, packed_grads = _loss_and_grads(step, student, packed)
    torch.testing.assert_close(packed_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert len(packed_grads) == len(plain_grads)
    for packed_grad, plain_grad in zip(packed_grads, plain_grads, strict=True):
        torch.testing.assert_close(packed_grad, plain_grad, rtol=1e-5, atol=1e-5)


def _later_rows_outputs(student, teacher, batch, first_row_length: int, cross: bool):
    """Student and teacher hidden rows of every scored token after the first packed row:
    all a token's loss terms are functions of these two rows, its label and the projector."""
    rows = LossPositions.build(batch["labels"], batch["dskd_pairs"] if cross else None)
    with torch.no_grad():
        student_hidden = student(
            **model_inputs(batch, "", student.device), output_hidden_states=True, use_cache=False
        ).hidden_states[-1]
        teacher_hidden = last_hidden_state(teacher, model_inputs(batch, "teacher_" if cross else "", teacher.device))
    later_tokens = rows.student_index[1] >= first_row_length
    later_pairs = rows.student_index[1][: rows.teacher_index[1].numel()] >= first_row_length
    return rows.student_rows(student_hidden)[later_tokens], rows.teacher_rows(teacher_hidden)[later_pairs]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("teacher_kind", CROSS)
def test_changing_one_packed_row_leaves_the_other_rows_untouched(tiny, teacher_kind, attention) -> None:
    cross = teacher_kind == "cross_tokenizer"
    student, teacher = _models(tiny, cross, attention)
    features = _features(tiny.tokenizer, tiny.data, rows=3)
    changed = copy.deepcopy(features)
    prompt_length = changed[0]["labels"].count(-100)
    changed[0]["input_ids"][:prompt_length] = changed[0]["input_ids"][:prompt_length][::-1]
    collate = _collator(tiny, cross)
    first_row_length = len(features[0]["input_ids"])
    before = collate([copy.deepcopy(features)])
    after = collate([copy.deepcopy(changed)])
    assert not torch.equal(before["input_ids"], after["input_ids"])
    for ours, theirs in zip(
        _later_rows_outputs(student, teacher, before, first_row_length, cross),
        _later_rows_outputs(student, teacher, after, first_row_length, cross),
        strict=True,
    ):
        assert ours.shape[0] > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # the check can fail: the same rows with one attention mask over the whole pack do see row 0
    leaking = {key: value for key, value in after.items() if key != "position_ids"}
    leaking |= packing_flags(False, after["input_ids"].shape[0]) | {
        "attention_mask": torch.ones_like(after["input_ids"])
    }
    with torch.no_grad():
        leaked = student(
            **model_inputs(leaking, "", student.device), output_hidden_states=True, use_cache=False
        ).hidden_states[-1]
        isolated = student(
            **model_inputs(after, "", student.device), output_hidden_states=True, use_cache=False
        ).hidden_states[-1]
    assert not torch.allclose(leaked[0, first_row_length:], isolated[0, first_row_length:], atol=1e-3)


@pytest.mark.parametrize("teacher_kind", CROSS)
def test_a_teacher_cache_serves_packed_rows(tiny, tmp_path, teacher_kind) -> None:
    """The cache holds rows built unpacked; a packed batch reads each packed row's share."""
    cross = teacher_kind == "cross_tokenizer"
    student, teacher = _models(tiny, cross, "sdpa")
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    _build(tiny, teacher, copy.deepcopy(features), tmp_path, cross)
    bins = [copy.deepcopy(features[:2]), copy.deepcopy(features[2:])]
    live_loss, live_grads = _loss_and_grads(_step(tiny, student, teacher, cross), student, _collator(tiny, cross)(bins))
    cached_step = _step(tiny, student, HeadOnlyTeacher(TeacherCache(tmp_path).head()), cross, cached=True)
    bins = [copy.deepcopy(features[:2]), copy.deepcopy(features[2:])]
    cached_loss, cached_grads = _loss_and_grads(cached_step, student, _collator(tiny, cross, str(tmp_path))(bins))
    torch.testing.assert_close(cached_loss, live_loss, rtol=1e-5, atol=1e-6)
    for cached_grad, live_grad in zip(cached_grads, live_grads, strict=True):
        torch.testing.assert_close(cached_grad, live_grad, rtol=1e-4, atol=1e-5)
