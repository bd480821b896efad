"""Same or different tokenizers, as one object decided once.

The YAML validation compares the two vocabularies and stores the answer as
`dskd_cross_tokenizer`; `vocabulary` turns it into a `SharedVocabulary` or a
`CrossVocabulary`, and the step and the cache builder ask that object which ids are real
tokens on each head, which rows pair, what the teacher reads and how the projector starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from axolotl_dskd.distill.rows import Rows
from axolotl_dskd.loss.projectors import SharedVocab
from axolotl_dskd.teacher.tokenizer import teacher_tokenizer
from axolotl_dskd.tokens.vocab import VocabBridge


@dataclass(frozen=True)
class SharedVocabulary:
    """One vocabulary: the teacher reads the student's tokens and every response row pairs
    with itself. An id is a real token only if both sides have it (a padded head or a pad
    token Axolotl added is not)."""

    size: int  # the student tokenizer's length
    teacher_size: int | None = None  # the teacher tokenizer's, when it is known and differs

    cross: ClassVar[bool] = False
    teacher_prefix: ClassVar[str] = ""  # the batch fields the teacher's forward reads
    id_maps: ClassVar[None] = None  # no id translation between the heads

    def head_vocab(self, student_head_rows: int, teacher_head_rows: int) -> tuple[int, int]:
        shared = min(self.size, self.teacher_size or self.size, student_head_rows, teacher_head_rows)
        return shared, shared

    def projector_vocab(self, topk: int | None, head_vocab: tuple[int, int]) -> SharedVocab:
        """The first `topk` ids (all shared ones by default) for the pinv init."""
        return SharedVocab.first_ids(min(topk or head_vocab[0], head_vocab[0]))

    def rows(self, batch: dict[str, torch.Tensor]) -> Rows:
        return Rows.build(batch["labels"])


@dataclass(frozen=True)
class CrossVocabulary:
    """Different tokenizers: the teacher reads its own tokenization of each row (the
    collator's `teacher_*` fields), rows pair by the collator's byte alignment
    (`dskd_pairs`), and the heads meet on the tokens whose bytes are identical."""

    student: PreTrainedTokenizerBase
    teacher: PreTrainedTokenizerBase

    cross: ClassVar[bool] = True
    teacher_prefix: ClassVar[str] = "teacher_"

    @cached_property
    def bridge(self) -> VocabBridge:
        """Built on first use: the cache builder never needs it."""
        return VocabBridge.build(self.student, self.teacher)

    @property
    def id_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher id -> student id, student id -> teacher id) of identical bytes."""
        return self.bridge.teacher_to_student, self.bridge.student_to_teacher

    def head_vocab(self, student_head_rows: int, teacher_head_rows: int) -> tuple[int, int]:
        return min(len(self.student), student_head_rows), min(len(self.teacher), teacher_head_rows)

    def projector_vocab(self, topk: int | None, head_vocab: tuple[int, int]) -> SharedVocab:
        """The first `topk` byte-identical pairs (all by default) for the pinv init."""
        return SharedVocab(self.bridge.shared_student_ids[:topk], self.bridge.shared_teacher_ids[:topk])

    def rows(self, batch: dict[str, torch.Tensor]) -> Rows:
        return Rows.build(batch["labels"], batch["dskd_pairs"])


Vocabulary = SharedVocabulary | CrossVocabulary


def vocabulary(settings: Any, student: PreTrainedTokenizerBase) -> Vocabulary:
    """The run's vocabulary mode from `dskd_cross_tokenizer` (YAML config or training args;
    the validation set it); the teacher tokenizer loads once per process."""
    teacher = teacher_tokenizer(settings)
    if settings.dskd_cross_tokenizer:
        return CrossVocabulary(student, teacher)
    return SharedVocabulary(len(student), len(teacher))
