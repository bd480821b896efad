"""Compare the student's and the teacher's vocabularies before any model is loaded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from axolotl_dskd.tokens.alignment import marker_free


@lru_cache(maxsize=8)
def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class VocabularyComparison:
    """How the student's vocabulary, as Axolotl trains it, stands to the teacher's.

    Ids past the teacher tokenizer's length are the student's own (`tokens:`,
    `special_tokens`, a pad Axolotl added): the teacher has no row for them. Ids both have
    must stand for the same string (`added_tokens_overrides` renames some).
    """

    renamed: tuple[str, ...]  # student strings at ids where the teacher has another one
    added: tuple[str, ...]  # student tokens at ids past the teacher's vocabulary
    pad_token: str | None  # the student's pad token

    def listed(self) -> str:
        """The first few tokens the teacher cannot read, for a log or error line."""
        return ", ".join((self.renamed or self.added)[:5])

    @property
    def pad_only(self) -> bool:
        """The only addition is the pad token, which the teacher never needs to read."""
        return self.added == (self.pad_token,)

    @property
    def shared(self) -> bool:
        """The teacher can read every student id (its own pad in place of an added pad)."""
        return not self.renamed and (not self.added or self.pad_only)


def compare_vocabularies(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> VocabularyComparison:
    """Whether every id the student reads means the same to the teacher. A teacher with
    more tokens (or a padded head) is no mismatch: the student never emits those ids."""
    shared = min(len(student), len(teacher))
    student_strings = student.convert_ids_to_tokens(range(len(student)))
    teacher_strings = teacher.convert_ids_to_tokens(range(shared))
    renamed = tuple(s for s, t in zip(student_strings[:shared], teacher_strings, strict=True) if s != t)
    return VocabularyComparison(renamed, tuple(student_strings[shared:]), student.pad_token)


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
    pieces get '▁' -> space and <0xNN> -> byte NN, however the <0xNN> piece is registered
    (some conversions list them as added or even special tokens, yet the model's byte
    fallback still emits them for text); other added non-special tokens are literal.
    """
    byte_level = _uses_byte_level(tokenizer)
    table: list[bytes | None] = [None] * len(tokenizer)
    added = tokenizer.added_tokens_decoder
    for token, token_id in tokenizer.get_vocab().items():
        if BYTE_FALLBACK.fullmatch(token):
            table[token_id] = _token_bytes(token, byte_level)
        elif token_id in added:
            table[token_id] = None if added[token_id].special else added[token_id].content.encode("utf-8")
        else:
            table[token_id] = _token_bytes(token, byte_level)
    return table


def marker_free_table(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """For each id, its vocabulary string as the paper's ETA compares it ('▁', 'Ġ' removed)."""
    table = [b""] * len(tokenizer)
    for token, token_id in tokenizer.get_vocab().items():
        table[token_id] = marker_free(token)
    return table


def _bytes_to_id(tokenizer: PreTrainedTokenizerBase, table: list[bytes | None]) -> dict[bytes, int]:
    """Each byte string's id; a regular piece wins over a <0xNN> byte-fallback piece."""
    fallback = {token_id for token, token_id in tokenizer.get_vocab().items() if BYTE_FALLBACK.fullmatch(token)}
    order = sorted(range(len(table)), key=lambda token_id: (token_id in fallback, token_id))
    mapping: dict[bytes, int] = {}
    for token_id in order:
        piece = table[token_id]
        if piece is not None and piece not in mapping:
            mapping[piece] = token_id
    return mapping


@dataclass(frozen=True)
class VocabBridge:
    """Teacher <-> student id maps built by exact byte strings (not raw vocab strings).

    `teacher_to_student[t]` is the student id for the same bytes, or -1 when the student has
    no single token for them; the teachers' EOS maps to the student's EOS.
    """

    teacher_to_student: torch.Tensor  # [len(teacher tokenizer)]
    student_to_teacher: torch.Tensor  # [len(student tokenizer)]
    shared_student_ids: torch.Tensor  # overlap, in student id order
    shared_teacher_ids: torch.Tensor

    @classmethod
    def build(cls, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> VocabBridge:
        student_ids = _bytes_to_id(student, token_bytes_table(student))
        teacher_ids = _bytes_to_id(teacher, token_bytes_table(teacher))
        shared = sorted((student_ids[piece], teacher_ids[piece]) for piece in student_ids.keys() & teacher_ids.keys())
        teacher_to_student = torch.full((len(teacher),), -1, dtype=torch.long)
        student_to_teacher = torch.full((len(student),), -1, dtype=torch.long)
        for student_id, teacher_id in shared:
            teacher_to_student[teacher_id] = student_id
            student_to_teacher[student_id] = teacher_id
        teacher_to_student[teacher.eos_token_id] = student.eos_token_id
        student_to_teacher[student.eos_token_id] = teacher.eos_token_id
        pairs = torch.tensor(shared, dtype=torch.long).reshape(-1, 2)
        return cls(teacher_to_student, student_to_teacher, pairs[:, 0], pairs[:, 1])
