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
from dataclasses import dataclass

import numba
import numpy as np


def byte_spans(ids: Sequence[int], table: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Start and end byte offsets of each token in the concatenated text, and that text.

    Special tokens (None in the table) have no bytes: an empty span.
    """
    lengths = np.array([len(table[token] or b"") for token in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    return ends - lengths, ends, b"".join(table[token] or b"" for token in ids)


# Polynomial hashes of every token's bytes (two odd bases, arithmetic mod 2**64) let the
# kernel check in O(tokens) that a stream spells its text, together with its length;
# only streams that fail are walked byte by byte.
HASH_BASES = (np.uint64(1_000_003), np.uint64(0x100000001B3))


@numba.njit(cache=True)
def _token_hashes(data, offsets):
    """Per base and token: Horner hash of its bytes and base ** length, mod 2**64."""
    hashes = np.zeros((2, len(offsets) - 1), dtype=np.uint64)
    powers = np.ones((2, len(offsets) - 1), dtype=np.uint64)
    for h in range(2):
        base = HASH_BASES[h]
        for token in range(len(offsets) - 1):
            for k in range(offsets[token], offsets[token + 1]):
                hashes[h, token] = hashes[h, token] * base + np.uint64(data[k])
                powers[h, token] = powers[h, token] * base
    return hashes, powers


@dataclass(frozen=True)
class ByteVocab:
    """One tokenizer's token bytes laid end to end, plus their hashes, for the kernel."""

    data: np.ndarray  # uint8, every token's bytes concatenated
    offsets: np.ndarray  # int64 [V + 1]: token i is data[offsets[i]:offsets[i + 1]]
    hashes: np.ndarray  # uint64 [2, V]
    powers: np.ndarray  # uint64 [2, V]

    @classmethod
    def from_table(cls, table: Sequence[bytes | None]) -> ByteVocab:
        pieces = [piece or b"" for piece in table]
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(piece) for piece in pieces])
        data = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
        return cls(data, offsets, *_token_hashes(data, offsets))


@numba.njit(cache=True)
def _spelled_prefix(ids, vocab_data, vocab_offsets, text, shift):
    """How many text bytes the token stream spells, after dropping `shift` leading bytes."""
    matched, skipped = 0, 0
    for token in ids:
        for k in range(vocab_offsets[token], vocab_offsets[token + 1]):
            if skipped < shift:
                skipped += 1
                continue
            if matched >= len(text) or vocab_data[k] != text[matched]:
                return matched
            matched += 1
    return matched


@numba.njit(cache=True)
def _stream_shift(ids, vocab_data, vocab_offsets, text):
    """(shift, agree): a SentencePiece dummy-prefix space is dropped when that makes the
    stream spell more of the text; tokens past `agree` bytes cannot be paired."""
    agree = _spelled_prefix(ids, vocab_data, vocab_offsets, text, 0)
    if agree == len(text):
        return 0, agree
    first = -1
    for token in ids:
        if vocab_offsets[token + 1] > vocab_offsets[token]:
            first = vocab_data[vocab_offsets[token]]
            break
    if first == 32:
        agree_shifted = _spelled_prefix(ids, vocab_data, vocab_offsets, text, 1)
        if agree_shifted > agree:
            return 1, agree_shifted
    return 0, agree


@numba.njit(cache=True)
def _text_hash(text):
    """(hash, base ** length) of the text's bytes for both bases, as four scalars."""
    base_a, base_b = HASH_BASES
    hash_a, hash_b, power_a, power_b = np.uint64(0), np.uint64(0), np.uint64(1), np.uint64(1)
    for byte in text:
        hash_a, hash_b = hash_a * base_a + np.uint64(byte), hash_b * base_b + np.uint64(byte)
        power_a, power_b = power_a * base_a, power_b * base_b
    return hash_a, hash_b, power_a, power_b


@numba.njit(cache=True)
def _check_stream(ids, data, offsets, hashes, powers, text, text_hash):
    """(shift, agree) as `_stream_shift`, decided by hashes in O(tokens) when the stream
    spells the text exactly or after one dummy-prefix space."""
    hash_a, hash_b, power_a, power_b = text_hash
    stream_a, stream_b = np.uint64(0), np.uint64(0)
    length, first = 0, -1
    for token in ids:
        if first < 0 and offsets[token + 1] > offsets[token]:
            first = data[offsets[token]]
        length += offsets[token + 1] - offsets[token]
        stream_a = stream_a * powers[0, token] + hashes[0, token]
        stream_b = stream_b * powers[1, token] + hashes[1, token]
    if length == len(text) and stream_a == hash_a and stream_b == hash_b:
        return 0, len(text)
    space = np.uint64(32)
    if length == len(text) + 1 and first == 32:
        if stream_a == space * power_a + hash_a and stream_b == space * power_b + hash_b:
            return 1, len(text)
    return _stream_shift(ids, data, offsets, text)


@numba.njit(cache=True)
def _merge(
    s_ids, s_data, s_offsets, s_hashes, s_powers, t_ids, t_data, t_offsets, t_hashes, t_powers, text, s_eos, t_eos, out
):
    """Two-pointer merge of the two span streams; writes pairs to `out`, returns the count."""
    text_hash = _text_hash(text)
    s_shift, s_agree = _check_stream(s_ids, s_data, s_offsets, s_hashes, s_powers, text, text_hash)
    t_shift, t_agree = _check_stream(t_ids, t_data, t_offsets, t_hashes, t_powers, text, text_hash)
    n_pairs, i, j = 0, 0, 0
    s_end, t_end = -s_shift, -t_shift
    s_start, t_start = 0, 0
    if len(s_ids):
        s_start, s_end = s_end, s_end + s_offsets[s_ids[0] + 1] - s_offsets[s_ids[0]]
    if len(t_ids):
        t_start, t_end = t_end, t_end + t_offsets[t_ids[0] + 1] - t_offsets[t_ids[0]]
    while i < len(s_ids) and j < len(t_ids):
        s_live = s_end > max(s_start, 0) and s_end <= s_agree
        t_live = t_end > max(t_start, 0) and t_end <= t_agree
        if s_live and t_live and s_end == t_end and max(s_start, 0) == max(t_start, 0):
            out[n_pairs, 0], out[n_pairs, 1] = i, j
            n_pairs += 1
        advance_s, advance_t = s_end <= t_end, t_end <= s_end
        if advance_s:
            i += 1
            if i < len(s_ids):
                s_start, s_end = s_end, s_end + s_offsets[s_ids[i] + 1] - s_offsets[s_ids[i]]
        if advance_t:
            j += 1
            if j < len(t_ids):
                t_start, t_end = t_end, t_end + t_offsets[t_ids[j] + 1] - t_offsets[t_ids[j]]
    if len(s_ids) and len(t_ids) and s_ids[-1] == s_eos and t_ids[-1] == t_eos:
        out[n_pairs, 0], out[n_pairs, 1] = len(s_ids) - 1, len(t_ids) - 1
        n_pairs += 1
    return n_pairs


@numba.njit(cache=True)
def _merge_all(s_ids, s_bounds, s_vocab, t_ids, t_bounds, t_vocab, text, text_bounds, s_eos, t_eos, out, counts):
    """`_merge` for every sample of the flattened batch; pairs are written back to back."""
    written = 0
    for n in range(len(counts)):
        counts[n] = _merge(
            s_ids[s_bounds[n] : s_bounds[n + 1]],
            s_vocab[0],
            s_vocab[1],
            s_vocab[2],
            s_vocab[3],
            t_ids[t_bounds[n] : t_bounds[n + 1]],
            t_vocab[0],
            t_vocab[1],
            t_vocab[2],
            t_vocab[3],
            text[text_bounds[n] : text_bounds[n + 1]],
            s_eos,
            t_eos,
            out[written:],
        )
        written += counts[n]
    return written


def _kernel_vocab(vocab: ByteVocab) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return vocab.data, vocab.offsets, vocab.hashes, vocab.powers


def _flatten(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.zeros(len(sequences) + 1, dtype=np.int64)
    bounds[1:] = np.cumsum([len(ids) for ids in sequences])
    ids = np.concatenate(sequences).astype(np.int64, copy=False) if len(sequences) else bounds[:0]
    return ids, bounds


def exact_pairs_batch(
    student_sequences: Sequence[Sequence[int]],
    teacher_sequences: Sequence[Sequence[int]],
    texts: Sequence[bytes],
    student_vocab: ByteVocab,
    teacher_vocab: ByteVocab,
    student_eos: int,
    teacher_eos: int,
) -> list[np.ndarray]:
    """Exact alignment of many samples in one compiled, linear pass.

    Token spans are taken in each sample's text. A SentencePiece dummy-prefix space is
    absorbed into the first token, and tokens past the first byte where a stream stops
    spelling the text (a normalizer rewrote it) are never paired. EOS pairs with EOS.
    """
    s_ids, s_bounds = _flatten(student_sequences)
    t_ids, t_bounds = _flatten(teacher_sequences)
    text = np.frombuffer(b"".join(texts), dtype=np.uint8)
    text_bounds = np.zeros(len(texts) + 1, dtype=np.int64)
    text_bounds[1:] = np.cumsum([len(data) for data in texts])
    out = np.empty((min(len(s_ids), len(t_ids)) + len(texts), 2), dtype=np.int64)
    counts = np.zeros(len(texts), dtype=np.int64)
    written = _merge_all(
        s_ids,
        s_bounds,
        _kernel_vocab(student_vocab),
        t_ids,
        t_bounds,
        _kernel_vocab(teacher_vocab),
        text,
        text_bounds,
        student_eos,
        teacher_eos,
        out,
        counts,
    )
    return np.split(out[:written], np.cumsum(counts)[:-1])


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
    Convenience wrapper: hot paths build the ByteVocabs once and call exact_pairs_batch.
    """
    if text is None:
        text = byte_spans(student_ids, student_table)[2]
    student_vocab, teacher_vocab = ByteVocab.from_table(student_table), ByteVocab.from_table(teacher_table)
    return exact_pairs_batch(
        [student_ids], [teacher_ids], [text], student_vocab, teacher_vocab, student_eos, teacher_eos
    )[0]


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
