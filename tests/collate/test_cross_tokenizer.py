"""Cross-tokenizer collation: teacher rows and the batch's aligned pairs, checked against
the one-sample alignment wrappers on each trained run."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from axolotl_dskd.collate.cross_tokenizer import IGNORE_INDEX, DSKDCrossTokenizerCollator
from axolotl_dskd.tokens.vocab import token_bytes_table
from tests.oracles.pairs import eta_strict_pairs, exact_pairs

PROMPTS = ["Q: Janet has 3 apples.\nA:", "Q: Le café coûte 4,50 €?\nA:", "Q: 日本語 🎉\tok\nA:"]
ANSWERS = [" She has 15 apples.\n#### 15", " Ça coûte cher.", " def f(x):\n    return x"]


def _row(tokenizer, prompt: str, answer: str) -> dict[str, list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


@pytest.mark.parametrize("alignment", ["exact", "eta_strict"])
def test_batch_pairs_are_each_runs_pairs_in_label_coordinates(tiny, alignment: str) -> None:
    student, teacher = tiny.tokenizer, tiny.teacher_tokenizer
    collator = DSKDCrossTokenizerCollator(
        student, padding=True, return_tensors="pt", teacher_tokenizer_path=str(tiny.cross_teacher), alignment=alignment
    )
    batch = collator([_row(student, p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True)])
    expected = []
    for index, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        teacher_ids = batch["teacher_input_ids"][index].tolist()
        teacher_labels = batch["teacher_labels"][index].tolist()
        t_start = next(k for k, label in enumerate(teacher_labels) if label != IGNORE_INDEX)
        t_run = [t for t, label in zip(teacher_ids, teacher_labels, strict=True) if label != IGNORE_INDEX]
        assert teacher.decode(t_run[:-1]) == answer and t_run[-1] == teacher.eos_token_id
        assert teacher.decode(teacher_ids[:t_start], skip_special_tokens=True) == prompt
        s_labels = batch["labels"][index].tolist()
        s_start = next(k for k, label in enumerate(s_labels) if label != IGNORE_INDEX)
        s_run = [s for s in s_labels if s != IGNORE_INDEX]
        if alignment == "exact":
            run_pairs = exact_pairs(
                s_run,
                t_run,
                token_bytes_table(student),
                token_bytes_table(teacher),
                student.eos_token_id,
                teacher.eos_token_id,
            )
        else:
            run_pairs = eta_strict_pairs(
                student.convert_ids_to_tokens(s_run),
                teacher.convert_ids_to_tokens(t_run),
                student.eos_token,
                teacher.eos_token,
            )
        expected += [(index, s + s_start - 1, t + t_start - 1) for s, t in run_pairs.tolist()]
    assert [tuple(p) for p in batch["dskd_pairs"].tolist()] == expected
    assert len(expected) > len(PROMPTS)  # more than the EOS pairs
    pairs = np.array(expected)
    assert (batch["labels"][pairs[:, 0], pairs[:, 1] + 1] != IGNORE_INDEX).all()
    assert (batch["teacher_labels"][pairs[:, 0], pairs[:, 2] + 1] != IGNORE_INDEX).all()


def test_a_batch_without_trained_tokens_has_no_pairs(tiny) -> None:
    collator = DSKDCrossTokenizerCollator(
        tiny.tokenizer, padding=True, return_tensors="pt", teacher_tokenizer_path=str(tiny.cross_teacher)
    )
    row = _row(tiny.tokenizer, PROMPTS[0], ANSWERS[0])
    row["labels"] = [IGNORE_INDEX] * len(row["labels"])
    assert collator([row])["dskd_pairs"].shape == (0, 3)


def test_utf8_split_carries_a_cut_character_and_replaces_invalid_bytes() -> None:
    from axolotl_dskd.collate.cross_tokenizer import _split_utf8

    e_acute, han = "é".encode(), "日".encode()
    assert _split_utf8(b"caf" + e_acute[:1]) == ("caf", e_acute[:1])
    assert _split_utf8(b"x" + han[:2]) == ("x", han[:2])
    assert _split_utf8(b"x" + han) == ("x日", b"")
    assert _split_utf8(b"ab") == ("ab", b"")
    assert _split_utf8(b"") == ("", b"")
    assert _split_utf8(b"a\xc7b\xc0c") == ("a\ufffdb\ufffdc", b"")  # sampled garbage, not a cut character


@pytest.mark.parametrize("packed", [False, True])
def test_teacher_rows_longer_than_the_teachers_context_are_cut_to_it(tiny, caplog, packed: bool) -> None:
    """Never fed past max_position_embeddings: each row cut to it, padding too, pairs past
    the cut dropped (those response tokens keep the gold CE), and the cut counted in the log."""
    from tests.teacher.test_cache import _features

    features = _features(tiny.tokenizer, tiny.data, rows=3)

    def collate(limit: int | None, as_bin: bool):
        collator = DSKDCrossTokenizerCollator(
            tiny.tokenizer,
            padding=True,
            return_tensors="pt",
            pad_to_multiple_of=64,
            teacher_tokenizer_path=str(tiny.cross_teacher),
            teacher_max_length=limit,
        )
        return collator([[dict(row) for row in features]] if as_bin else [dict(row) for row in features])

    lengths = collate(None, as_bin=False)["teacher_attention_mask"].sum(1)
    limit = int(lengths.max()) - 6  # the longest row loses its last response tokens
    full = collate(None, packed)
    with caplog.at_level(logging.WARNING):
        cut = collate(limit, packed)
    if packed:
        assert int(cut["teacher_position_ids"].max()) < limit
    else:
        assert cut["teacher_input_ids"].shape[1] == limit
        assert bool((cut["dskd_pairs"][:, 2] < limit).all())
    kept, expected = cut["dskd_pairs"][:, :2].tolist(), full["dskd_pairs"][:, :2].tolist()
    assert 0 < len(kept) < len(expected) and {tuple(pair) for pair in kept} <= {tuple(pair) for pair in expected}
    assert f"1 teacher row(s) so far were longer than the teacher's context (max_position_embeddings {limit};" in (
        caplog.text
    )
