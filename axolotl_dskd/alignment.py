"""Pair student and teacher positions whose next tokens stand for the same text.

Both functions take the two *label* sequences of one response (token ids, EOS last) and
return an int array of (student index, teacher index) pairs, strictly increasing in both.

- `exact_pairs`: tokens are paired when they cover exactly the same bytes of the text
  (same start, same end), whatever the tokenizers' spelling (Ġ, ▁, <0x0A>, NFC). EOS
  pairs with EOS. Vectorized with numpy.
- `eta_strict_pairs`: the DSKDv2 paper's greedy exact token alignment on vocabulary
  strings with '▁'/'Ġ' removed, kept for reproducing the paper. It stops pairing for
  good once the two string histories differ (e.g. 'Ċ' vs '<0x0A>').
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


def byte_spans(ids: Sequence[int], table: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Start and end byte offsets of each token in the concatenated text, and that text.

    Special tokens (None in the table) have no bytes: an empty span.
    """
    pieces = [table[token] or b"" for token in ids]
    ends = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
    starts = ends - np.array([len(piece) for piece in pieces], dtype=np.int64)
    return starts, ends, b"".join(pieces)


def _text_spans(ids: Sequence[int], table: Sequence[bytes | None], text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Token spans expressed in `text`: a SentencePiece dummy-prefix space is absorbed
    into the first token, and tokens past the first byte where the tokenizer's bytes
    differ from the text (a normalizer rewrote it) get an empty, unpairable span."""
    starts, ends, stream = byte_spans(ids, table)
    shift = int(stream.startswith(b" ") and _common_prefix(stream[1:], text) > _common_prefix(stream, text))
    starts, ends, stream = np.maximum(starts - shift, 0), ends - shift, stream[shift:]
    agree = len(text) if stream == text else _common_prefix(stream, text)
    starts = np.where(ends <= agree, starts, ends)
    return starts, ends


def _common_prefix(a: bytes, b: bytes) -> int:
    length = min(len(a), len(b))
    differ = np.flatnonzero(np.frombuffer(a[:length], np.uint8) != np.frombuffer(b[:length], np.uint8))
    return int(differ[0]) if differ.size else length


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
    if text is None:
        text = byte_spans(student_ids, student_table)[2]
    student_starts, student_ends = _text_spans(student_ids, student_table, text)
    teacher_starts, teacher_ends = _text_spans(teacher_ids, teacher_table, text)
    student_keep = np.flatnonzero(student_ends > student_starts)
    teacher_keep = np.flatnonzero(teacher_ends > teacher_starts)
    # non-empty spans have strictly increasing ends, so an end identifies a span
    _, s_hit, t_hit = np.intersect1d(
        student_ends[student_keep], teacher_ends[teacher_keep], assume_unique=True, return_indices=True
    )
    s_index, t_index = student_keep[s_hit], teacher_keep[t_hit]
    same_start = student_starts[s_index] == teacher_starts[t_index]
    pairs = np.stack([s_index[same_start], t_index[same_start]], axis=1)
    if len(student_ids) and len(teacher_ids) and student_ids[-1] == student_eos and teacher_ids[-1] == teacher_eos:
        pairs = np.concatenate([pairs, [[len(student_ids) - 1, len(teacher_ids) - 1]]])
    return pairs.astype(np.int64)


def _strip_markers(tokens: Sequence[str]) -> list[str]:
    return [token.replace("▁", "").replace("Ġ", "") for token in tokens]


def eta_strict_pairs(
    student_tokens: Sequence[str],
    teacher_tokens: Sequence[str],
    student_eos: str,
    teacher_eos: str,
) -> np.ndarray:
    """The paper's greedy ETA on vocabulary strings (one pass, linear in the characters).

    The string histories are equal exactly when their lengths are equal and no
    character ever differed, so they are tracked as a length pair plus a flag.
    """
    student, teacher = _strip_markers(student_tokens), _strip_markers(teacher_tokens)
    student_eos, teacher_eos = _strip_markers([student_eos, teacher_eos])
    student_text, teacher_text = "".join(student), "".join(teacher)
    s_len = t_len = 0
    diverged = False
    pairs: list[tuple[int, int]] = []
    i = j = 0

    def check(new_end_t: int, new_end_s: int) -> bool:
        common = min(new_end_t, new_end_s)
        low = min(t_len, s_len)
        return teacher_text[low:common] != student_text[low:common]

    while i < len(teacher) and j < len(student):
        both_eos = teacher[i] == teacher_eos and student[j] == student_eos
        if not diverged and t_len == s_len and (teacher[i] == student[j] or both_eos):
            pairs.append((j, i))
            t_len, s_len = t_len + len(teacher[i]), s_len + len(student[j])
            diverged = diverged or (both_eos and teacher[i] != student[j])
            i, j = i + 1, j + 1
        elif t_len > s_len:
            diverged = diverged or check(t_len, s_len + len(student[j]))
            s_len, j = s_len + len(student[j]), j + 1
        elif t_len < s_len:
            diverged = diverged or check(t_len + len(teacher[i]), s_len)
            t_len, i = t_len + len(teacher[i]), i + 1
        else:  # same length, different text: advance both
            diverged = diverged or check(t_len + len(teacher[i]), s_len + len(student[j]))
            t_len, s_len, i, j = t_len + len(teacher[i]), s_len + len(student[j]), i + 1, j + 1
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)
