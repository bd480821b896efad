"""Alignment of single sequences and plain lists of them: the kernel in
axolotl_dskd.tokens.alignment as the tests and benchmarks call it (training aligns flattened
batches in the collator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from axolotl_dskd.tokens.alignment import ByteVocab, FlatSequences, align_flat, marker_free, per_sample


def exact_pairs_batch(
    student_sequences: Sequence[Sequence[int]],
    teacher_sequences: Sequence[Sequence[int]],
    texts: Sequence[bytes],
    student_vocab: ByteVocab,
    teacher_vocab: ByteVocab,
    student_eos: int,
    teacher_eos: int,
) -> list[np.ndarray]:
    """Exact alignment of many samples, each against its own text.

    A SentencePiece dummy-prefix space is absorbed into the first token, and tokens past
    the first byte where a stream stops spelling the text (a normalizer rewrote it) are
    never paired. EOS pairs with EOS.
    """
    rows = align_flat(
        "exact",
        FlatSequences.from_lists(student_sequences),
        FlatSequences.from_lists(teacher_sequences),
        FlatSequences.from_bytes(texts),
        student_vocab,
        teacher_vocab,
        student_eos,
        teacher_eos,
    )
    return per_sample(rows, len(texts))


def exact_pairs(
    student_ids: Sequence[int],
    teacher_ids: Sequence[int],
    student_table: Sequence[bytes | None],
    teacher_table: Sequence[bytes | None],
    student_eos: int,
    teacher_eos: int,
    text: bytes | None = None,
) -> np.ndarray:
    """Pairs of positions whose tokens cover identical, non-empty byte spans; EOS with EOS.

    Spans are taken in `text` (the original text both tokenized); by default the text the
    student's tokens spell, as when the teacher tokenized the student's recovered text.
    """
    student_vocab, teacher_vocab = ByteVocab.from_table(student_table), ByteVocab.from_table(teacher_table)
    text = student_vocab.spell(list(student_ids)) if text is None else text
    return exact_pairs_batch(
        [list(student_ids)], [list(teacher_ids)], [text], student_vocab, teacher_vocab, student_eos, teacher_eos
    )[0]


def eta_strict_pairs(
    student_tokens: Sequence[str],
    teacher_tokens: Sequence[str],
    student_eos: str,
    teacher_eos: str,
) -> np.ndarray:
    """The paper's greedy ETA on one pair of token-string sequences (tests, reports)."""
    strings = sorted({*student_tokens, *teacher_tokens, student_eos, teacher_eos})
    index = {token: n for n, token in enumerate(strings)}
    vocab = ByteVocab.from_table([marker_free(token) for token in strings])
    rows = align_flat(
        "eta_strict",
        FlatSequences.from_lists([[index[token] for token in student_tokens]]),
        FlatSequences.from_lists([[index[token] for token in teacher_tokens]]),
        None,
        vocab,
        vocab,
        index[student_eos],
        index[teacher_eos],
    )
    return rows[:, 1:]
