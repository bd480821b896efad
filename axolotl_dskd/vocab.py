"""Compare the student's and the teacher's vocabularies before any model is loaded."""

from __future__ import annotations

import json
import re
from functools import lru_cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase


@lru_cache(maxsize=8)
def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def same_vocabulary(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> bool:
    """True when every token string has the same id on both sides.

    Head sizes are not compared: a model whose embedding is padded past its tokenizer
    (e.g. 151936 vs 152064 rows) still shares the vocabulary.
    """
    return student.get_vocab() == teacher.get_vocab()


def _bytes_to_unicode() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


BYTE_LEVEL_DECODER = _bytes_to_unicode()
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _uses_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def _token_bytes(token: str, byte_level: bool) -> bytes:
    fallback = BYTE_FALLBACK.fullmatch(token)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    if byte_level and all(char in BYTE_LEVEL_DECODER for char in token):
        return bytes(BYTE_LEVEL_DECODER[char] for char in token)
    return token.replace("▁", " ").encode("utf-8")


def token_bytes_table(tokenizer: PreTrainedTokenizerBase) -> list[bytes | None]:
    """For each id, the exact text bytes it stands for; None for special tokens.

    Byte-level BPE (Ġ, Ċ, Ã©) is mapped back through GPT-2's byte table; SentencePiece
    pieces get '▁' -> space and <0xNN> -> byte NN; added non-special tokens are literal.
    """
    byte_level = _uses_byte_level(tokenizer)
    table: list[bytes | None] = [None] * len(tokenizer)
    added = tokenizer.added_tokens_decoder
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in added:
            table[token_id] = None if added[token_id].special else added[token_id].content.encode("utf-8")
        else:
            table[token_id] = _token_bytes(token, byte_level)
    return table
