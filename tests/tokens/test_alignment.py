"""Exact byte-span alignment and the paper's greedy ETA, on real BPE tokenizations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axolotl_dskd.tokens.alignment import byte_spans
from axolotl_dskd.tokens.vocab import token_bytes_table
from tests.oracles.pairs import eta_strict_pairs, exact_pairs
from tests.oracles.reference_eta import paper_eta
from tests.tiny import build_tokenizer


def _oracle(student_ids, teacher_ids, student_table, teacher_table):
    """Every (s, t) whose tokens cover the same non-empty bytes, by a double loop."""
    s_starts, s_ends, _ = byte_spans(student_ids, student_table)
    t_starts, t_ends, _ = byte_spans(teacher_ids, teacher_table)
    return [
        (s, t)
        for s in range(len(student_ids))
        for t in range(len(teacher_ids))
        if s_ends[s] > s_starts[s] and (s_starts[s], s_ends[s]) == (t_starts[t], t_ends[t])
    ]


CORPUS = [
    "Janet has 3 apples and buys 12 more.\nHow many apples does she have?\n\n#### 15",
    "Le café coûte 4,50 € — très cher! Ça va?\tOui.",
    "def add(a, b):\n    return a + b  # 日本語のコメント 🎉",
] * 20


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    big = build_tokenizer(CORPUS, root / "big", vocab_size=500)
    small = build_tokenizer(CORPUS[::-1], root / "small", vocab_size=300)
    return big, small, token_bytes_table(big), token_bytes_table(small)


def test_token_bytes_table_round_trips_the_text(pair) -> None:
    big, _, big_table, _ = pair
    for text in ["  leading spaces\n\n", "é日本語🎉\t12", CORPUS[1]]:
        ids = big(text, add_special_tokens=False)["input_ids"]
        assert byte_spans(ids, big_table)[2] == text.encode()
    assert big_table[big.eos_token_id] is None


def test_sentencepiece_style_pieces_map_to_bytes() -> None:
    from axolotl_dskd.tokens.vocab import _token_bytes

    assert _token_bytes("▁Hello", byte_level=False) == b" Hello"
    assert _token_bytes("<0x0A>", byte_level=False) == b"\n"
    assert _token_bytes("é", byte_level=False) == "é".encode()
    assert _token_bytes("ĠHello", byte_level=True) == b" Hello"
    assert _token_bytes("Ċ", byte_level=True) == b"\n"
    assert _token_bytes("Ã©", byte_level=True) == "é".encode()


def test_sentencepiece_dummy_prefix_is_absorbed() -> None:
    student_table = [b"Hello", b" world", None]
    teacher_table = [b" Hello", b" wor", b"ld", None]  # SPM adds a leading space to the first piece
    pairs = exact_pairs([0, 1, 2], [0, 1, 2, 3], student_table, teacher_table, student_eos=2, teacher_eos=3)
    assert pairs.tolist() == [[0, 0], [2, 3]]


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_exact_finds_every_oracle_pair_and_nothing_else(pair, text: str) -> None:
    big, small, big_table, small_table = pair
    student_ids = big(text, add_special_tokens=False)["input_ids"] + [big.eos_token_id]
    teacher_ids = small(text, add_special_tokens=False)["input_ids"] + [small.eos_token_id]
    pairs = exact_pairs(student_ids, teacher_ids, big_table, small_table, big.eos_token_id, small.eos_token_id)
    eos_pair = (len(student_ids) - 1, len(teacher_ids) - 1)
    expected = _oracle(student_ids, teacher_ids, big_table, small_table) + [eos_pair]
    assert [tuple(p) for p in pairs.tolist()] == expected
    assert np.all(np.diff(pairs, axis=0) > 0)  # strictly increasing on both sides
    for s, t in pairs[:-1]:
        assert big_table[student_ids[s]] == small_table[teacher_ids[t]]  # identical bytes


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_eta_strict_matches_the_papers_algorithm(pair, text: str) -> None:
    big, small, _, _ = pair
    student_tokens = big.convert_ids_to_tokens(big(text, add_special_tokens=False)["input_ids"]) + [big.eos_token]
    teacher_tokens = small.convert_ids_to_tokens(small(text, add_special_tokens=False)["input_ids"]) + [small.eos_token]
    pairs = eta_strict_pairs(student_tokens, teacher_tokens, big.eos_token, small.eos_token)
    expected = paper_eta(teacher_tokens, student_tokens, small.eos_token, big.eos_token)
    assert [tuple(p) for p in pairs.tolist()] == [(s, t) for t, s in expected]
    assert np.all(np.diff(pairs, axis=0) > 0)


def test_exact_keeps_aligning_after_a_newline_where_eta_strict_stops() -> None:
    # byte-level student ('Ċ' = newline) vs SentencePiece teacher ('<0x0A>')
    student_tokens = ["Hi", "Ċ", "there", "Ġfriend", "</s>"]
    teacher_tokens = ["▁Hi", "<0x0A>", "there", "▁friend", "<eos>"]
    assert eta_strict_pairs(student_tokens, teacher_tokens, "</s>", "<eos>").tolist() == [[0, 0]]
    from axolotl_dskd.tokens.vocab import _token_bytes

    student_table = [_token_bytes(t, byte_level=True) for t in student_tokens[:-1]] + [None]
    teacher_table = [_token_bytes(t, byte_level=False) for t in teacher_tokens[:-1]] + [None]
    pairs = exact_pairs(range(5), range(5), student_table, teacher_table, student_eos=4, teacher_eos=4)
    assert pairs.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=6))
def test_batch_exact_equals_one_by_one(pair, texts: list[str]) -> None:
    from axolotl_dskd.tokens.alignment import ByteVocab
    from tests.oracles.pairs import exact_pairs_batch

    big, small, big_table, small_table = pair
    student = [big(text, add_special_tokens=False)["input_ids"] + [big.eos_token_id] for text in texts]
    teacher = [small(text, add_special_tokens=False)["input_ids"] + [small.eos_token_id] for text in texts]
    data = [text.encode() for text in texts]
    batch = exact_pairs_batch(
        student,
        teacher,
        data,
        ByteVocab.from_table(big_table),
        ByteVocab.from_table(small_table),
        big.eos_token_id,
        small.eos_token_id,
    )
    for s_ids, t_ids, text, got in zip(student, teacher, data, batch, strict=True):
        expected = exact_pairs(s_ids, t_ids, big_table, small_table, big.eos_token_id, small.eos_token_id, text)
        assert got.tolist() == expected.tolist()


def test_nothing_pairs_past_the_byte_where_a_stream_stops_spelling_the_text() -> None:
    from axolotl_dskd.tokens.alignment import ByteVocab
    from tests.oracles.pairs import exact_pairs_batch

    student_table = [b"ab", b"c", b"d", None]
    teacher_table = [b"a", b"b", b"cX", b"d", None]  # 'cX': a normalizer rewrote the text
    student, teacher = [[0, 1, 2, 3], [0, 1]], [[0, 1, 2, 3, 4], [0, 1]]
    texts = [b"abcd", b"abc"]
    got = exact_pairs_batch(
        student,
        teacher,
        texts,
        ByteVocab.from_table(student_table),
        ByteVocab.from_table(teacher_table),
        3,
        4,
    )
    assert got[0].tolist() == [[3, 4]]  # nothing pairs after the first differing byte; EOS still does
    assert got[1].tolist() == []  # 'ab' + 'c' vs 'a' + 'b': no identical span


BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]


def _byte_fallback_tokenizer(out_dir, registration: str):
    """A SentencePiece-style BPE (▁ for spaces, <0xNN> byte fallback) trained on Latin text
    only, so CJK and emoji fall back to bytes; its <0xNN> pieces are in the model's vocabulary
    and, as some conversions ship them, also listed as added or special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import EOS

    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS, *BYTE_TOKENS])
    spm = Tokenizer(models.BPE(byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # no dummy prefix: the oracle pairs 1:1
    spm.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="never"), decoders.ByteFallback()])
    spm.train_from_iterator([CORPUS[0], CORPUS[1]] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    if registration == "added":
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in BYTE_TOKENS])
    elif registration == "special":
        tokenizer.add_special_tokens({"additional_special_tokens": BYTE_TOKENS})
    tokenizer.save_pretrained(out_dir)
    return PreTrainedTokenizerFast.from_pretrained(out_dir)


@pytest.mark.parametrize("registration", ["added", "special"])
def test_byte_fallback_pieces_keep_their_bytes_however_they_are_registered(pair, tmp_path, registration) -> None:
    big, _, big_table, _ = pair
    spm = _byte_fallback_tokenizer(tmp_path / registration, registration)
    assert all(spm.convert_tokens_to_ids(token) in spm.added_tokens_decoder for token in BYTE_TOKENS)
    spm_table = token_bytes_table(spm)
    text = "家族 日本語 🎉 and more"
    ids = spm(text, add_special_tokens=False)["input_ids"]
    assert sum(spm.convert_ids_to_tokens(i) in BYTE_TOKENS for i in ids) >= 12  # CJK and emoji fell back to bytes
    assert byte_spans(ids, spm_table)[2] == text.encode()
    student_ids = big(text, add_special_tokens=False)["input_ids"] + [big.eos_token_id]
    teacher_ids = ids + [spm.eos_token_id]
    pairs = exact_pairs(student_ids, teacher_ids, big_table, spm_table, big.eos_token_id, spm.eos_token_id)
    expected = _oracle(student_ids, teacher_ids, big_table, spm_table)
    assert [tuple(p) for p in pairs.tolist()[:-1]] == expected
    assert len(expected) >= 4  # the byte pieces of 家 pair with the student's; none did when they lost their bytes
