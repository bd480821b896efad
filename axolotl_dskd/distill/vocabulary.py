"""Same or different tokenizers, as one object decided once.

The YAML validation compares the student's vocabulary, as Axolotl trains it (tokens the
config adds included), with the teacher's and stores the answer as `dskd_cross_tokenizer`;
`vocabulary` turns it into a `SharedVocabulary` or a `CrossVocabulary`, and the step and
the cache builder ask that object which ids are real tokens on each head, which rows
pair, what the teacher reads and how the projector starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from axolotl_dskd.collate.packing import model_inputs
from axolotl_dskd.distill.positions import LossPositions
from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.loss.projectors import TokenPairs
from axolotl_dskd.teacher.tokenizer import teacher_tokenizer
from axolotl_dskd.tokens.vocab import VocabBridge, VocabularyComparison, compare_vocabularies


@dataclass(frozen=True)
class SharedVocabulary:
    """One vocabulary: the teacher reads the student's tokens and every response row pairs
    with itself. An id is a real token only if both sides have it (a padded head or a pad
    token Axolotl added is not). A pad token the config added past the teacher's
    vocabulary reaches the teacher as the teacher's own pad: padding is never attended."""

    size: int  # the student tokenizer's length
    teacher_size: int | None = None  # the teacher tokenizer's, when it is known and differs
    teacher_pad_id: int | None = None  # set when the student's pad is past the teacher's vocabulary

    cross: ClassVar[bool] = False
    id_maps: ClassVar[None] = None  # no id translation between the heads
    # DSKDv2's `paper` criterion divides the t2s CE and s2t KD by valid pairs only across tokenizers
    paper_divides_by_valid_pairs: ClassVar[bool] = False

    def describe(self) -> str:
        if self.teacher_pad_id is None:
            return "teacher and student share one vocabulary"
        return (
            "teacher and student share one vocabulary; the pad token the config added is past the teacher's "
            f"vocabulary, so the teacher reads its own pad (id {self.teacher_pad_id}) at padded positions"
        )

    def teacher_inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """The teacher's forward arguments: the student's own (one masked_fill when the
        config added a pad token the teacher lacks)."""
        inputs = model_inputs(batch, "", device)
        if self.teacher_pad_id is not None:
            ids = inputs["input_ids"]
            inputs["input_ids"] = ids.masked_fill(ids >= self.teacher_size, self.teacher_pad_id)
        return inputs

    def head_vocab(self, student_head_rows: int, teacher_head_rows: int) -> tuple[int, int]:
        shared = min(self.size, self.teacher_size or self.size, student_head_rows, teacher_head_rows)
        return shared, shared

    def projector_vocab(self, topk: int | None, head_vocab: tuple[int, int]) -> TokenPairs:
        """The first `topk` ids (all shared ones by default) for the pinv init."""
        return TokenPairs.first_ids(min(topk or head_vocab[0], head_vocab[0]))

    def rows(self, batch: dict[str, torch.Tensor]) -> LossPositions:
        return LossPositions.build(batch["labels"])


@dataclass(frozen=True)
class CrossVocabulary:
    """Different tokenizers: the teacher reads its own tokenization of each row (the
    collator's `teacher_*` fields), rows pair by the collator's byte alignment
    (`dskd_pairs`), and the heads meet on the tokens whose bytes are identical."""

    student: PreTrainedTokenizerBase
    teacher: PreTrainedTokenizerBase
    comparison: VocabularyComparison | None = None  # why the teacher cannot read the student's ids

    cross: ClassVar[bool] = True
    paper_divides_by_valid_pairs: ClassVar[bool] = True

    def describe(self) -> str:
        if self.comparison and self.comparison.added and not self.comparison.renamed:
            return (
                f"{len(self.comparison.added)} token(s) added by the config ({self.comparison.listed()}); the "
                "teacher reads them as text: cross-tokenizer DSKD"
            )
        return "teacher and student tokenizers differ: cross-tokenizer DSKD"

    def teacher_inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """The teacher's forward arguments: its own tokenization of the rows (the collator's)."""
        return model_inputs(batch, "teacher_", device)

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

    def projector_vocab(self, topk: int | None, head_vocab: tuple[int, int]) -> TokenPairs:
        """The first `topk` byte-identical pairs (all by default) for the pinv init."""
        return TokenPairs(self.bridge.shared_student_ids[:topk], self.bridge.shared_teacher_ids[:topk])

    def rows(self, batch: dict[str, torch.Tensor]) -> LossPositions:
        return LossPositions.build(batch["labels"], batch["dskd_pairs"])


Vocabulary = SharedVocabulary | CrossVocabulary


def vocabulary(settings: Any, student: PreTrainedTokenizerBase) -> Vocabulary:
    """The run's vocabulary mode from `dskd_cross_tokenizer` (YAML config or training args;
    the validation set it) and the student tokenizer Axolotl trains with; the teacher
    tokenizer loads once per process."""
    teacher = teacher_tokenizer(settings)
    comparison = compare_vocabularies(student, teacher)
    if settings.dskd_cross_tokenizer:
        return CrossVocabulary(student, teacher, comparison)
    if not comparison.shared:  # the validation saw another student tokenizer than the trainer has
        raise DSKDConfigError(
            "dskd_cross_tokenizer: validated as one vocabulary, but the student tokenizer being trained has "
            f"tokens the teacher cannot read ({comparison.listed()})"
        )
    if not comparison.pad_only:
        return SharedVocabulary(len(student), len(teacher))
    pad = next((i for i in (teacher.pad_token_id, teacher.eos_token_id) if i is not None), 0)  # never attended
    return SharedVocabulary(len(student), len(teacher), pad)
