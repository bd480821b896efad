"""The vocabulary mode is one object, decided once from the validated settings; packing is
the collator's word, written into the batch."""

from __future__ import annotations

import copy

import pytest
import torch

from axolotl_dskd.collate.packing import PACKED, batch_is_packed
from axolotl_dskd.distill.vocabulary import CrossVocabulary, SharedVocabulary, vocabulary
from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.integration.args import DSKDTrainingArgsMixin
from axolotl_dskd.tokens.vocab import VocabBridge, load_tokenizer
from tests.teacher.test_cache import _collator, _features


def _settings(tiny, cross: bool) -> DSKDTrainingArgsMixin:
    teacher = tiny.cross_teacher if cross else tiny.teacher
    return DSKDTrainingArgsMixin(dskd_teacher_model=str(teacher), dskd_cross_tokenizer=cross)


def test_the_validated_flag_picks_the_mode_and_the_teacher_tokenizer_loads_once(tiny) -> None:
    shared = vocabulary(_settings(tiny, cross=False), tiny.tokenizer)
    assert isinstance(shared, SharedVocabulary)
    assert (shared.cross, shared.id_maps, shared.teacher_pad_id) == (False, None, None)
    cross = vocabulary(_settings(tiny, cross=True), tiny.tokenizer)
    assert isinstance(cross, CrossVocabulary)
    assert cross.cross
    assert vocabulary(_settings(tiny, cross=True), tiny.tokenizer).teacher is cross.teacher  # one copy per process


def test_one_vocabulary_keeps_only_ids_both_heads_have() -> None:
    """A padded teacher head (or a pad token added to the student) is no shared token."""
    assert SharedVocabulary(100, 96).head_vocab(112, 128) == (96, 96)
    assert SharedVocabulary(100).head_vocab(112, 98) == (98, 98)
    vocab = SharedVocabulary(100).projector_vocab(10, (98, 98))
    assert vocab.student_ids.tolist() == vocab.teacher_ids.tolist() == list(range(10))


def test_across_tokenizers_each_head_keeps_its_own_size_and_the_init_uses_identical_bytes(tiny) -> None:
    teacher = load_tokenizer(str(tiny.cross_teacher))
    cross = CrossVocabulary(tiny.tokenizer, teacher)
    assert cross.head_vocab(len(tiny.tokenizer) + 8, len(teacher) + 16) == (len(tiny.tokenizer), len(teacher))
    bridge = VocabBridge.build(tiny.tokenizer, teacher)
    vocab = cross.projector_vocab(5, cross.head_vocab(10**6, 10**6))
    assert vocab.student_ids.tolist() == bridge.shared_student_ids[:5].tolist()
    assert vocab.teacher_ids.tolist() == bridge.shared_teacher_ids[:5].tolist()
    to_student, to_teacher = cross.id_maps
    assert torch.equal(to_student, bridge.teacher_to_student) and torch.equal(to_teacher, bridge.student_to_teacher)


@pytest.mark.parametrize("cross", [False, True])
def test_rows_pair_as_the_mode_says(tiny, cross: bool) -> None:
    features = _features(tiny.tokenizer, tiny.data, rows=2)
    batch = _collator(tiny, cross)(features)
    mode = vocabulary(_settings(tiny, cross), tiny.tokenizer)
    rows = mode.rows(batch)
    if cross:
        assert torch.equal(rows.teacher_index[1], batch["dskd_pairs"][:, 2])
    else:
        assert all(torch.equal(s, t) for s, t in zip(rows.student_index, rows.teacher_index, strict=True))


@pytest.mark.parametrize("cross", [False, True])
def test_the_collator_writes_whether_it_packed(tiny, cross: bool) -> None:
    features = _features(tiny.tokenizer, tiny.data, rows=3)
    collate = _collator(tiny, cross)
    plain, packed = collate([dict(row) for row in features]), collate([[dict(row) for row in features]])
    assert plain[PACKED].tolist() == [False] * 3 and not batch_is_packed(plain)
    assert packed[PACKED].tolist() == [True] and batch_is_packed(packed)
    assert "attention_mask" in plain and "position_ids" in packed and "attention_mask" not in packed


def test_a_batch_that_did_not_come_from_the_plugins_collators_is_refused() -> None:
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "position_ids": torch.arange(3)[None]}
    with pytest.raises(KeyError, match="batches must come from the plugin's collators"):
        batch_is_packed(batch)


@pytest.mark.parametrize("cross", [False, True])
def test_the_teacher_reads_its_own_side_of_the_batch(tiny, cross: bool) -> None:
    batch = _collator(tiny, cross)(_features(tiny.tokenizer, tiny.data, rows=2))
    inputs = vocabulary(_settings(tiny, cross), tiny.tokenizer).teacher_inputs(batch, torch.device("cpu"))
    prefix = "teacher_" if cross else ""
    assert torch.equal(inputs["input_ids"], batch[prefix + "input_ids"])
    assert torch.equal(inputs["attention_mask"], batch[prefix + "attention_mask"])


def test_a_pad_token_the_config_added_reaches_the_teacher_as_its_own_pad(tiny) -> None:
    """Only padded positions carry it, and the teacher's embedding has no row for it."""
    student = copy.deepcopy(tiny.tokenizer)
    student.add_special_tokens({"pad_token": "<|end_of_text|>"})
    shared = vocabulary(_settings(tiny, cross=False), student)
    assert shared.teacher_pad_id == tiny.tokenizer.pad_token_id and "reads its own pad" in shared.describe()
    ids = torch.tensor([[5, 6, 7, len(tiny.tokenizer)]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]]), PACKED: torch.tensor([False])}
    teacher_ids = shared.teacher_inputs(batch, torch.device("cpu"))["input_ids"]
    assert teacher_ids.tolist() == [[5, 6, 7, tiny.tokenizer.pad_token_id]]
    assert batch["input_ids"][0, -1] == len(tiny.tokenizer)  # the student's batch is left as it was


def test_a_student_tokenizer_the_validation_did_not_see_is_refused(tiny) -> None:
    student = copy.deepcopy(tiny.tokenizer)
    student.add_tokens(["<think>"])
    with pytest.raises(DSKDConfigError, match=r"has tokens the teacher cannot read \(<think>\)"):
        vocabulary(_settings(tiny, cross=False), student)
    as_validated = DSKDTrainingArgsMixin(dskd_teacher_model=str(tiny.teacher), dskd_cross_tokenizer=True)
    assert "1 token(s) added by the config (<think>); the teacher reads them as text" in (
        vocabulary(as_validated, student).describe()
    )
