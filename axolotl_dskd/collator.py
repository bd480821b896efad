"""Cross-tokenizer collation: rebuild each row's text for the teacher and align the two.

Axolotl tokenized the row with the student tokenizer (any dataset type). The row is cut
into runs of masked (prompt, system, user turns) and trained (response) tokens; each run's
text is recovered exactly from the student's token bytes, re-tokenized with the teacher
tokenizer, and the trained runs are aligned token by token. The batch gains:

- `teacher_input_ids`, `teacher_attention_mask`, `teacher_labels` (teacher pad id / -100);
- `dskd_pairs` [pairs, 3]: (row, student label position, teacher label position), in
  the causal-shift coordinates of `labels[:, 1:]`.

Rows of an `axolotl_dskd.chat_template` dataset already carry the teacher's own rendering
(`teacher_input_ids`, `teacher_labels`); then only the alignment is done here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

from axolotl_dskd.alignment import ByteVocab, byte_spans, eta_strict_pairs, exact_pairs_batch
from axolotl_dskd.vocab import load_tokenizer, token_bytes_table

IGNORE_INDEX = -100
TEACHER_FIELDS = ("teacher_input_ids", "teacher_attention_mask", "teacher_labels", "dskd_pairs")
TEACHER_COLUMNS = ("teacher_input_ids", "teacher_labels")  # rows of an axolotl_dskd.chat_template dataset


@dataclass
class TeacherRow:
    input_ids: list[int]
    labels: list[int]
    pairs: np.ndarray  # [k, 2] student / teacher label positions


def _runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Maximal runs [start, end) of positions that are all masked or all trained."""
    trained = np.asarray(labels) != IGNORE_INDEX
    cuts = np.flatnonzero(np.diff(trained.astype(np.int8))) + 1
    bounds = [0, *cuts.tolist(), len(labels)]
    return [(start, end, bool(trained[start])) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the complete characters; return the bytes of a character cut at the end.

    Byte-level tokens can split one character across a mask boundary: its tail bytes
    move to the next run instead of being replaced or dropped.
    """
    for cut in range(len(data), max(len(data) - 4, 0) - 1, -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    raise ValueError(f"student tokens do not form UTF-8 text: {data[:40]!r}")


@dataclass
class DSKDCrossTokenizerCollator(DataCollatorForSeq2Seq):
    """Pads the student fields as Axolotl does, then adds the teacher's view of each row."""

    teacher_tokenizer_path: str = ""
    teacher_revision: str | None = None
    teacher_trust_remote_code: bool = False
    alignment: str = "exact"
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def _setup(self) -> dict[str, Any]:
        if not self._state:
            teacher = load_tokenizer(self.teacher_tokenizer_path, self.teacher_revision, self.teacher_trust_remote_code)
            probe = teacher("a")["input_ids"]
            student_table, teacher_table = token_bytes_table(self.tokenizer), token_bytes_table(teacher)
            self._state.update(
                teacher=teacher,
                student_table=student_table,
                student_vocab=ByteVocab.from_table(student_table),
                teacher_vocab=ByteVocab.from_table(teacher_table),
                teacher_prefix=probe[: probe.index(teacher("a", add_special_tokens=False)["input_ids"][0])],
                teacher_pad=teacher.pad_token_id if teacher.pad_token_id is not None else teacher.eos_token_id,
            )
        return self._state

    def _student_piece(self, token_id: int, table: list[bytes | None]) -> bytes:
        piece = table[token_id]
        return piece if piece is not None else self.tokenizer.convert_ids_to_tokens(token_id).encode("utf-8")

    def teacher_row(self, input_ids: list[int], labels: list[int]) -> TeacherRow:
        """The teacher's ids and labels for one student row, and the aligned positions."""
        state = self._setup()
        teacher = state["teacher"]
        student_eos, teacher_eos = self.tokenizer.eos_token_id, teacher.eos_token_id
        start = 1 if input_ids and input_ids[0] == self.tokenizer.bos_token_id else 0
        teacher_ids, teacher_labels = list(state["teacher_prefix"]), [IGNORE_INDEX] * len(state["teacher_prefix"])
        pairs, carry = [], b""
        for run_start, run_end, trained in _runs(labels[start:]):
            run = input_ids[start + run_start : start + run_end]
            ends_with_eos = trained and run[-1] == student_eos
            text_ids = run[:-1] if ends_with_eos else run
            text, carry = _split_utf8(
                carry + b"".join(self._student_piece(t, state["student_table"]) for t in text_ids)
            )
            run_teacher = teacher(text, add_special_tokens=False)["input_ids"]
            run_teacher = run_teacher + [teacher_eos] if ends_with_eos else run_teacher
            if trained:
                run_pairs = self._align(run, run_teacher, state) + [start + run_start, len(teacher_ids)] - 1
                pairs.append(run_pairs[(run_pairs >= 0).all(axis=1)])
            teacher_ids += run_teacher
            teacher_labels += run_teacher if trained else [IGNORE_INDEX] * len(run_teacher)
        all_pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
        return TeacherRow(teacher_ids, teacher_labels, all_pairs)

    def rendered_teacher_row(
        self, input_ids: list[int], labels: list[int], teacher_ids: list[int], teacher_labels: list[int]
    ) -> TeacherRow:
        """The teacher already tokenized the conversation with its own chat template: pair
        the k-th trained run (assistant turn) of each side and align inside it."""
        state = self._setup()
        student_runs = [run for run in _runs(labels) if run[2]]
        teacher_runs = [run for run in _runs(teacher_labels) if run[2]]
        if len(student_runs) != len(teacher_runs):
            raise ValueError(
                f"dskd_teacher_chat_template: the student's template trains {len(student_runs)} spans of this row "
                f"and the teacher's {len(teacher_runs)}; use templates that train the same assistant turns"
            )
        pairs = []
        for (s_start, s_end, _), (t_start, t_end, _) in zip(student_runs, teacher_runs, strict=True):
            run_pairs = self._align(input_ids[s_start:s_end], teacher_ids[t_start:t_end], state)
            run_pairs = run_pairs + [s_start, t_start] - 1
            pairs.append(run_pairs[(run_pairs >= 0).all(axis=1)])
        all_pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
        return TeacherRow(list(teacher_ids), list(teacher_labels), all_pairs)

    def _align(self, student_run: list[int], teacher_run: list[int], state: dict[str, Any]) -> np.ndarray:
        student_eos, teacher_eos = self.tokenizer.eos_token_id, state["teacher"].eos_token_id
        if self.alignment == "eta_strict":
            return eta_strict_pairs(
                self.tokenizer.convert_ids_to_tokens(student_run),
                state["teacher"].convert_ids_to_tokens(teacher_run),
                self.tokenizer.eos_token,
                state["teacher"].eos_token,
            )
        spelled = byte_spans(student_run, state["student_table"])[2]
        return exact_pairs_batch(
            [student_run],
            [teacher_run],
            [spelled],
            state["student_vocab"],
            state["teacher_vocab"],
            student_eos,
            teacher_eos,
        )[0]

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None) -> dict[str, Any]:
        if features and isinstance(features[0], list):
            raise ValueError("sample_packing: packed batches are not supported by axolotl_dskd; set it to false")
        if features and "teacher_input_ids" in features[0]:
            rows = [
                self.rendered_teacher_row(
                    list(f["input_ids"]), list(f["labels"]), list(f["teacher_input_ids"]), list(f["teacher_labels"])
                )
                for f in features
            ]
            features = [{k: v for k, v in f.items() if k not in TEACHER_COLUMNS} for f in features]
        else:
            rows = [self.teacher_row(list(f["input_ids"]), list(f["labels"])) for f in features]
        batch = super().__call__(features, return_tensors)
        width = max(len(row.input_ids) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self._state["teacher_pad"]
        batch["teacher_input_ids"] = torch.tensor([r.input_ids + [pad] * (width - len(r.input_ids)) for r in rows])
        batch["teacher_attention_mask"] = torch.tensor(
            [[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
        )
        batch["teacher_labels"] = torch.tensor([r.labels + [IGNORE_INDEX] * (width - len(r.labels)) for r in rows])
        pairs = [np.column_stack([np.full(len(r.pairs), index), r.pairs]) for index, r in enumerate(rows)]
        batch["dskd_pairs"] = torch.from_numpy(np.concatenate(pairs).astype(np.int64)).reshape(-1, 3)
        return batch
