"""Pair student and teacher positions whose next tokens stand for the same text.

Alignments take the two *label* sequences of a response (token ids, EOS last) and give
(student index, teacher index) pairs, strictly increasing in both.

- `exact`: tokens are paired when they cover exactly the same bytes of the text (same
  start, same end), whatever the tokenizers' spelling (Ġ, ▁, <0x0A>, NFC). EOS pairs
  with EOS.
- `eta_strict`: the DSKDv2 paper's greedy exact token alignment on vocabulary strings
  with '▁'/'Ġ' removed, kept for reproducing the paper. It stops pairing for good once
  the two string histories differ (e.g. 'Ċ' vs '<0x0A>').

Both are compiled kernels that walk a whole flattened batch in one call (`align_flat`),
linear in its bytes (tests/pairs.py wraps them for single sequences).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

EXACT, ETA_STRICT = 0, 1
ALIGNMENT_MODES = {"exact": EXACT, "eta_strict": ETA_STRICT}


def byte_spans(ids: Sequence[int], table: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Start and end byte offsets of each token in the concatenated text, and that text.

    Special tokens (None in the table) have no bytes: an empty span.
    """
    lengths = np.array([len(table[token] or b"") for token in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    return ends - lengths, ends, b"".join(table[token] or b"" for token in ids)


# A polynomial hash of every token's bytes (odd base, arithmetic mod 2**64) lets the exact
# kernel check in O(tokens) that a stream spells its text; only streams that fail (a
# normalizer rewrote the text, or a dummy-prefix space) are walked byte by byte. Lengths
# are compared too; a different text of the same length passing the check would need a
# 64-bit hash collision, which crafted strings can cause but tokenizer output does not.
HASH_BASE = np.uint64(0x100000001B3)


@numba.njit(cache=True)
def _token_hashes(data, offsets):
    """Per token: Horner hash of its bytes, mod 2**64."""
    hashes = np.zeros(len(offsets) - 1, dtype=np.uint64)
    for token in range(len(offsets) - 1):
        for k in range(offsets[token], offsets[token + 1]):
            hashes[token] = hashes[token] * HASH_BASE + np.uint64(data[k])
    return hashes


@dataclass(frozen=True)
class ByteVocab:
    """One tokenizer's token strings as bytes laid end to end, for the kernels, plus the
    compact per-token tables the exact kernel reads (kept small to stay in cache)."""

    data: np.ndarray  # uint8, every token's bytes concatenated
    offsets: np.ndarray  # int64 [V + 1]: token i is data[offsets[i]:offsets[i + 1]]
    hashes: np.ndarray  # uint64 [V]: see _token_hashes
    lengths: np.ndarray  # int32 [V]: bytes per token
    powers: np.ndarray  # uint64 [longest token + 1]: HASH_BASE ** length

    @classmethod
    def from_table(cls, table: Sequence[bytes | None]) -> ByteVocab:
        pieces = [piece or b"" for piece in table]
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(piece) for piece in pieces])
        data = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
        lengths = np.diff(offsets).astype(np.int32)
        powers = np.ones(int(lengths.max(initial=0)) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):  # arithmetic mod 2**64 by design
            for length in range(1, len(powers)):
                powers[length] = powers[length - 1] * HASH_BASE
        return cls(data, offsets, _token_hashes(data, offsets), lengths, powers)

    def kernel_tables(self) -> tuple[np.ndarray, ...]:
        return self.data, self.offsets, self.hashes, self.lengths, self.powers

    def spell(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes of a token sequence, gathered without a Python loop over tokens."""
        ids = np.asarray(ids, dtype=np.int64)
        starts, lengths = self.offsets[ids], self.offsets[ids + 1] - self.offsets[ids]
        ends = np.cumsum(lengths)
        index = np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
        return self.data[index].tobytes()


@numba.njit(cache=True, inline="always")
def _token_length(ids, offsets, i):
    return offsets[ids[i] + 1] - offsets[ids[i]]


@numba.njit(cache=True)
def _spelled_prefix(ids, data, offsets, text, shift):
    """How many text bytes the token stream spells, after dropping `shift` leading bytes."""
    matched, skipped = 0, 0
    for token in ids:
        for k in range(offsets[token], offsets[token + 1]):
            if skipped < shift:
                skipped += 1
                continue
            if matched >= len(text) or data[k] != text[matched]:
                return matched
            matched += 1
    return matched


@numba.njit(cache=True)
def _walk_stream(ids, data, offsets, text):
    """(shift, agree) the slow way: a SentencePiece dummy-prefix space is dropped when that
    makes the stream spell more of the text; tokens past `agree` bytes cannot be paired."""
    agree = _spelled_prefix(ids, data, offsets, text, 0)
    if agree == len(text):
        return 0, agree
    first = -1
    for token in ids:
        if offsets[token + 1] > offsets[token]:
            first = data[offsets[token]]
            break
    if first == 32:
        agree_shifted = _spelled_prefix(ids, data, offsets, text, 1)
        if agree_shifted > agree:
            return 1, agree_shifted
    return 0, agree


@numba.njit(cache=True)
def _text_hash(text):
    """(hash, base ** length) of the text's bytes; Horner's rule four bytes per step, so
    the multiply chain is a quarter as long."""
    base2 = HASH_BASE * HASH_BASE
    base3, base4 = base2 * HASH_BASE, base2 * base2
    text_hash, power, k = np.uint64(0), np.uint64(1), 0
    while k + 4 <= len(text):
        group = np.uint64(text[k]) * base3 + np.uint64(text[k + 1]) * base2
        group += np.uint64(text[k + 2]) * HASH_BASE + np.uint64(text[k + 3])
        text_hash, power, k = text_hash * base4 + group, power * base4, k + 4
    while k < len(text):
        text_hash, power, k = text_hash * HASH_BASE + np.uint64(text[k]), power * HASH_BASE, k + 1
    return text_hash, power


@numba.njit(cache=True)
def _likely_shift(ids, data, offsets, text):
    """1 when the stream opens with a space the text lacks (a SentencePiece dummy prefix)."""
    for token in ids:
        if offsets[token + 1] > offsets[token]:
            return 1 if data[offsets[token]] == 32 and (len(text) == 0 or text[0] != 32) else 0
    return 0


@numba.njit(cache=True)
def _spans_pass(ids, vocab, shift, agree, at_end, stamp, out, sample):
    """One walk over a stream: its hash and byte length, and its non-empty spans ending
    within `agree` either filed under their end in `at_end` (out is None: the teacher) or
    looked up there and written to `out` as pairs (the student). Returns (hash, length,
    pairs)."""
    hashes, lengths, powers = vocab[2], vocab[3], vocab[4]
    stream_hash, n_pairs, end = np.uint64(0), 0, -shift
    for i in range(len(ids)):
        token = ids[i]
        length = lengths[token]
        stream_hash = stream_hash * powers[length] + hashes[token]
        start, end = max(end, 0), end + length
        if start < end <= agree:
            if out is None:
                at_end[end, 0], at_end[end, 1], at_end[end, 2] = stamp, i, start
            elif at_end[end, 0] == stamp and at_end[end, 2] == start:
                out[n_pairs, 0], out[n_pairs, 1], out[n_pairs, 2] = sample, i, at_end[end, 1]
                n_pairs += 1
    return stream_hash, end + shift, n_pairs


@numba.njit(cache=True)
def _spells_text(stream_hash, stream_length, shift, text, text_hash):
    """Whether a stream spells the text after dropping `shift` leading spaces."""
    if stream_length != len(text) + shift:
        return False
    return stream_hash == text_hash[0] + np.uint64(32 * shift) * text_hash[1]


@numba.njit(cache=True)
def _exact(s_ids, s_vocab, t_ids, t_vocab, text, s_eos, t_eos, out, sample, at_end):
    """Pairs tokens with the same (start, end) byte span: teacher spans are filed under
    their end offset in `at_end`, then each student span looks its end up. Each stream is
    walked once when its hash shows it spells the text (the usual case), and walked again
    up to the byte where it stops spelling it otherwise. Writes (sample, s, t) rows to
    `out`, returns their count."""
    text_hash, stamp = _text_hash(text), 2 * sample
    shift = _likely_shift(t_ids, t_vocab[0], t_vocab[1], text)
    t_hash, t_length, _ = _spans_pass(t_ids, t_vocab, shift, len(text), at_end, stamp, None, sample)
    if not _spells_text(t_hash, t_length, shift, text, text_hash):
        shift, agree = _walk_stream(t_ids, t_vocab[0], t_vocab[1], text)
        stamp += 1
        _spans_pass(t_ids, t_vocab, shift, agree, at_end, stamp, None, sample)
    shift = _likely_shift(s_ids, s_vocab[0], s_vocab[1], text)
    s_hash, s_length, n_pairs = _spans_pass(s_ids, s_vocab, shift, len(text), at_end, stamp, out, sample)
    if not _spells_text(s_hash, s_length, shift, text, text_hash):
        shift, agree = _walk_stream(s_ids, s_vocab[0], s_vocab[1], text)
        n_pairs = _spans_pass(s_ids, s_vocab, shift, agree, at_end, stamp, out, sample)[2]
    if len(s_ids) and len(t_ids) and s_ids[-1] == s_eos and t_ids[-1] == t_eos:
        out[n_pairs, 0], out[n_pairs, 1], out[n_pairs, 2] = sample, len(s_ids) - 1, len(t_ids) - 1
        n_pairs += 1
    return n_pairs


@numba.njit(cache=True)
def _eta_strict(s_ids, s_data, s_offsets, t_ids, t_data, t_offsets, s_eos, t_eos, out, sample):
    """The paper's greedy ETA on marker-free token strings.

    Its string histories stay equal exactly while the shorter one is a prefix of the
    longer; once they differ nothing can pair again, so the walk stops there. The common
    prefix is compared byte by byte with one cursor per side, each byte once."""
    n_pairs, i, j, s_len, t_len, checked = 0, 0, 0, 0, 0, 0
    s_tok, s_pos, t_tok, t_pos = 0, 0, 0, 0  # cursors at history byte `checked`
    while i < len(s_ids) and j < len(t_ids):
        s_n, t_n = _token_length(s_ids, s_offsets, i), _token_length(t_ids, t_offsets, j)
        if s_len == t_len:
            same = s_n == t_n
            k = 0
            while same and k < s_n:
                same = s_data[s_offsets[s_ids[i]] + k] == t_data[t_offsets[t_ids[j]] + k]
                k += 1
            both_eos = s_ids[i] == s_eos and t_ids[j] == t_eos
            if same or both_eos:
                out[n_pairs, 0], out[n_pairs, 1], out[n_pairs, 2] = sample, i, j
                n_pairs += 1
                if not same:  # two EOS spelled differently end the shared history
                    return n_pairs
            s_len, t_len, i, j = s_len + s_n, t_len + t_n, i + 1, j + 1
        elif t_len > s_len:
            s_len, i = s_len + s_n, i + 1
        else:
            t_len, j = t_len + t_n, j + 1
        while checked < min(s_len, t_len):
            while s_pos >= _token_length(s_ids, s_offsets, s_tok):
                s_tok, s_pos = s_tok + 1, 0
            while t_pos >= _token_length(t_ids, t_offsets, t_tok):
                t_tok, t_pos = t_tok + 1, 0
            if s_data[s_offsets[s_ids[s_tok]] + s_pos] != t_data[t_offsets[t_ids[t_tok]] + t_pos]:
                return n_pairs
            s_pos, t_pos, checked = s_pos + 1, t_pos + 1, checked + 1
    return n_pairs


@numba.njit(cache=True)
def _align_all(mode, s_ids, s_bounds, s_vocab, t_ids, t_bounds, t_vocab, text, text_bounds, s_eos, t_eos, out):
    """Every sample of the flattened batch; pair rows are written back to back."""
    written = 0
    at_end = np.full((np.max(np.diff(text_bounds)) + 1 if len(text_bounds) > 1 else 1, 3), -1, dtype=np.int64)
    for n in range(len(s_bounds) - 1):
        s_sample, t_sample = s_ids[s_bounds[n] : s_bounds[n + 1]], t_ids[t_bounds[n] : t_bounds[n + 1]]
        if mode == EXACT:
            sample_text = text[text_bounds[n] : text_bounds[n + 1]]
            written += _exact(s_sample, s_vocab, t_sample, t_vocab, sample_text, s_eos, t_eos, out[written:], n, at_end)
        else:
            written += _eta_strict(
                s_sample, s_vocab[0], s_vocab[1], t_sample, t_vocab[0], t_vocab[1], s_eos, t_eos, out[written:], n
            )
    return written


@dataclass(frozen=True)
class FlatSequences:
    """Many token sequences (or texts) end to end: item n is values[bounds[n]:bounds[n + 1]]."""

    values: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> FlatSequences:
        bounds = np.zeros(len(sequences) + 1, dtype=np.int64)
        bounds[1:] = np.cumsum([len(ids) for ids in sequences])
        values = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=bounds[-1])
        return cls(values, bounds)

    @classmethod
    def from_bytes(cls, texts: Sequence[bytes]) -> FlatSequences:
        bounds = np.zeros(len(texts) + 1, dtype=np.int64)
        bounds[1:] = np.cumsum([len(text) for text in texts])
        return cls(np.frombuffer(b"".join(texts), dtype=np.uint8), bounds)


def align_flat(
    mode: str,
    student: FlatSequences,
    teacher: FlatSequences,
    texts: FlatSequences | None,
    student_vocab: ByteVocab,
    teacher_vocab: ByteVocab,
    student_eos: int,
    teacher_eos: int,
) -> np.ndarray:
    """(sample, student index, teacher index) rows for a whole batch, in one compiled call.

    `exact` takes token bytes (`token_bytes_table`) and each sample's text; `eta_strict`
    takes marker-free vocabulary strings (`marker_free_table`) and no texts.
    """
    if texts is None:
        texts = FlatSequences.from_bytes([b""] * (len(student.bounds) - 1))
    out = np.empty((min(len(student.values), len(teacher.values)) + len(texts.bounds), 3), dtype=np.int64)
    written = _align_all(
        ALIGNMENT_MODES[mode],
        student.values,
        student.bounds,
        student_vocab.kernel_tables(),
        teacher.values,
        teacher.bounds,
        teacher_vocab.kernel_tables(),
        texts.values,
        texts.bounds,
        student_eos,
        teacher_eos,
        out,
    )
    return out[:written]


def per_sample(rows: np.ndarray, n_samples: int) -> list[np.ndarray]:
    """`align_flat` rows split into one [pairs, 2] array per sample."""
    cuts = np.searchsorted(rows[:, 0], np.arange(1, n_samples))
    return [pairs[:, 1:] for pairs in np.split(rows, cuts)]


def marker_free(token: str) -> bytes:
    """A vocabulary string as the paper's ETA compares it: '▁' and 'Ġ' removed."""
    return token.replace("▁", "").replace("Ġ", "").encode("utf-8")
