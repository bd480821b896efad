"""Cross-tokenizer collation: rebuild each row's text for the teacher and align the two.

Axolotl tokenized the row with the student tokenizer (any dataset type). The row is cut
into runs of masked (prompt, system, user turns) and trained (response) tokens; each run's
text is recovered exactly from the student's token bytes, re-tokenized with the teacher
tokenizer, and the trained runs are aligned token by token. The batch gains:

- `teacher_input_ids`, `teacher_labels` (teacher pad id / -100), and
  `teacher_attention_mask`, or `teacher_position_ids` when the student's rows are packed:
  the teacher's rows are then packed in the same order, each restarting its positions;
- `dskd_pairs` [pairs, 3]: (row, student label position, teacher label position), in
  the causal-shift coordinates of `labels[:, 1:]`; rows are aligned one by one, so no
  pair crosses a packed row's boundary.

Rows of an `axolotl_dskd.integration.chat_template` dataset already carry the teacher's own rendering
(`teacher_input_ids`, `teacher_labels`); then only the alignment is done here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from axolotl_dskd.collate.packing import bins_of, is_packed, packed_row
from axolotl_dskd.collate.rows import DSKDRowCollator
from axolotl_dskd.labels import IGNORE_INDEX
from axolotl_dskd.tokens.alignment import ByteVocab, FlatSequences, align_flat
from axolotl_dskd.tokens.vocab import load_tokenizer, marker_free_table, token_bytes_table

LOG = logging.getLogger(__name__)
TEACHER_COLUMNS = ("teacher_input_ids", "teacher_labels")  # rows of an axolotl_dskd.integration.chat_template dataset


@dataclass
class TrainedRun:
    """One trained span of a row on both sides, where it starts in each row, and the
    text it spells (the student's token bytes)."""

    student_ids: list[int]
    teacher_ids: list[int]
    text: bytes
    student_start: int
    teacher_start: int


@dataclass
class TeacherRow:
    input_ids: list[int]
    labels: list[int]
    runs: list[TrainedRun]


def _runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Maximal runs [start, end) of positions that are all masked or all trained."""
    trained = np.asarray(labels) != IGNORE_INDEX
    cuts = np.flatnonzero(np.diff(trained.astype(np.int8))) + 1
    bounds = [0, *cuts.tolist(), len(labels)]
    return [(start, end, bool(trained[start])) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the complete characters; return the bytes of a character cut at the end.

    Byte-level tokens can split one character across a mask boundary: its tail bytes
    move to the next run instead of being replaced or dropped. Bytes that are not UTF-8
    anywhere else (a sampled on-policy response can hold them) reach the teacher as
    U+FFFD; exact alignment then pairs nothing past that byte of the run.
    """
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 == 0x80:  # continuation byte: look further back for its lead byte
            continue
        width = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1
        cut = len(data) - back if width > back else len(data)
        return data[:cut].decode("utf-8", errors="replace"), data[cut:]
    return data.decode("utf-8", errors="replace"), b""


@dataclass
class DSKDCrossTokenizerCollator(DSKDRowCollator):
    """Pads the student fields as Axolotl does (adding cached teacher rows when there is a
    cache), then adds the teacher's view of each row."""

    teacher_tokenizer_path: str = ""
    teacher_revision: str | None = None
    teacher_trust_remote_code: bool = False
    alignment: str = "exact"
    teacher_max_length: int | None = None  # the teacher's context (max_position_embeddings)
    _state: dict[str, Any] = field(default_factory=dict, repr=False)
    # teacher rows cut to the teacher's context so far, and the count that is logged next
    _cuts: dict[str, int] = field(default_factory=lambda: {"rows": 0, "next_report": 1}, repr=False)

    def _setup(self) -> dict[str, Any]:
        if not self._state:
            teacher = load_tokenizer(self.teacher_tokenizer_path, self.teacher_revision, self.teacher_trust_remote_code)
            probe = teacher("a")["input_ids"]
            student_table = token_bytes_table(self.tokenizer)
            special_strings = self.tokenizer.convert_ids_to_tokens(range(len(student_table)))
            if self.alignment == "eta_strict":
                student_vocab = ByteVocab.from_table(marker_free_table(self.tokenizer))
                teacher_vocab = ByteVocab.from_table(marker_free_table(teacher))
            else:
                student_vocab, teacher_vocab = (
                    ByteVocab.from_table(student_table),
                    ByteVocab.from_table(token_bytes_table(teacher)),
                )
            self._state.update(
                teacher=teacher,
                student_bytes=ByteVocab.from_table(student_table),
                # special tokens spelled as their strings, so the teacher sees '<|im_end|>' as text
                student_spelling=ByteVocab.from_table(
                    [
                        piece if piece is not None else token.encode()
                        for piece, token in zip(student_table, special_strings, strict=True)
                    ]
                ),
                student_vocab=student_vocab,
                teacher_vocab=teacher_vocab,
                teacher_prefix=probe[: probe.index(teacher("a", add_special_tokens=False)["input_ids"][0])],
                teacher_pad=teacher.pad_token_id if teacher.pad_token_id is not None else teacher.eos_token_id,
            )
        return self._state

    def teacher_row(self, input_ids: list[int], labels: list[int]) -> TeacherRow:
        """The teacher's ids and labels for one student row, and its trained runs."""
        state = self._setup()
        teacher = state["teacher"]
        student_eos, teacher_eos = self.tokenizer.eos_token_id, teacher.eos_token_id
        start = 1 if input_ids and input_ids[0] == self.tokenizer.bos_token_id else 0
        teacher_ids, teacher_labels = list(state["teacher_prefix"]), [IGNORE_INDEX] * len(state["teacher_prefix"])
        runs, carry = [], b""
        for run_start, run_end, trained in _runs(labels[start:]):
            run = input_ids[start + run_start : start + run_end]
            ends_with_eos = trained and run[-1] == student_eos
            text_ids = run[:-1] if ends_with_eos else run
            text, carry = _split_utf8(carry + state["student_spelling"].spell(text_ids))
            run_teacher = teacher(text, add_special_tokens=False)["input_ids"]
            run_teacher = run_teacher + [teacher_eos] if ends_with_eos else run_teacher
            if trained:
                spelled = state["student_bytes"].spell(run)
                runs.append(TrainedRun(run, run_teacher, spelled, start + run_start, len(teacher_ids)))
            teacher_ids += run_teacher
            teacher_labels += run_teacher if trained else [IGNORE_INDEX] * len(run_teacher)
        return TeacherRow(teacher_ids, teacher_labels, runs)

    def rendered_teacher_row(
        self, input_ids: list[int], labels: list[int], teacher_ids: list[int], teacher_labels: list[int]
    ) -> TeacherRow:
        """The teacher already tokenized the conversation with its own chat template: the
        k-th trained run (assistant turn) of each side are aligned together."""
        state = self._setup()
        student_runs = [run for run in _runs(labels) if run[2]]
        teacher_runs = [run for run in _runs(teacher_labels) if run[2]]
        if len(student_runs) != len(teacher_runs):
            raise ValueError(
                f"dskd_teacher_chat_template: the student's template trains {len(student_runs)} spans of this row "
                f"and the teacher's {len(teacher_runs)}; use templates that train the same assistant turns"
            )
        runs = [
            TrainedRun(
                input_ids[s_start:s_end],
                teacher_ids[t_start:t_end],
                state["student_bytes"].spell(input_ids[s_start:s_end]),
                s_start,
                t_start,
            )
            for (s_start, s_end, _), (t_start, t_end, _) in zip(student_runs, teacher_runs, strict=True)
        ]
        return TeacherRow(list(teacher_ids), list(teacher_labels), runs)

    def aligned_pairs(self, rows: list[TeacherRow]) -> np.ndarray:
        """[pairs, 3] (row, student label position, teacher label position) for every
        trained run of the batch, aligned in one compiled call."""
        state = self._setup()
        runs = [run for row in rows for run in row.runs]
        run_rows = np.array([index for index, row in enumerate(rows) for _ in row.runs], dtype=np.int64)
        pairs = align_flat(
            self.alignment,
            FlatSequences.from_lists([run.student_ids for run in runs]),
            FlatSequences.from_lists([run.teacher_ids for run in runs]),
            FlatSequences.from_bytes([run.text for run in runs]),
            state["student_vocab"],
            state["teacher_vocab"],
            self.tokenizer.eos_token_id,
            state["teacher"].eos_token_id,
        )
        run_of_pair = pairs[:, 0]
        student_starts = np.array([run.student_start for run in runs], dtype=np.int64)
        teacher_starts = np.array([run.teacher_start for run in runs], dtype=np.int64)
        # label positions in the causal-shift coordinates of labels[:, 1:]
        shifted = np.column_stack(
            [
                run_rows[run_of_pair],
                pairs[:, 1] + student_starts[run_of_pair] - 1,
                pairs[:, 2] + teacher_starts[run_of_pair] - 1,
            ]
        )
        return shifted[(shifted[:, 1:] >= 0).all(axis=1)]

    def teacher_view(self, row: dict[str, Any]) -> TeacherRow:
        """The teacher's row for one student row: its own rendering when the dataset carries
        one (`dskd_teacher_chat_template`), else re-tokenized from the student's bytes."""
        if "teacher_input_ids" in row:
            return self.rendered_teacher_row(
                list(row["input_ids"]), list(row["labels"]), list(row["teacher_input_ids"]), list(row["teacher_labels"])
            )
        return self.teacher_row(list(row["input_ids"]), list(row["labels"]))

    def teacher_fields(
        self, teacher_bins: list[list[TeacherRow]], student_lengths: list[list[int]], packed: bool
    ) -> dict[str, torch.Tensor]:
        """The teacher's side of the batch: each bin's teacher rows laid end to end in the
        student's order (one row per bin when unpacked), padded, and the pairs moved from
        each row's own coordinates to its place in the batch, so none crosses a row."""
        flat_rows = [row for rows in teacher_bins for row in rows]
        pairs = self.aligned_pairs(flat_rows)
        if self.teacher_max_length is not None:
            pairs = self._cut_to_context(flat_rows, pairs, self.teacher_max_length)
        batch_row, student_offset, teacher_offset = [], [], []
        for index, (rows, lengths) in enumerate(zip(teacher_bins, student_lengths, strict=True)):
            batch_row += [index] * len(rows)
            student_offset += np.cumsum([0, *lengths[:-1]]).tolist()
            teacher_offset += np.cumsum([0, *(len(row.input_ids) for row in rows[:-1])]).tolist()
        row_of_pair = pairs[:, 0]
        pairs = np.column_stack(
            [
                np.asarray(batch_row, dtype=np.int64)[row_of_pair],
                pairs[:, 1] + np.asarray(student_offset, dtype=np.int64)[row_of_pair],
                pairs[:, 2] + np.asarray(teacher_offset, dtype=np.int64)[row_of_pair],
            ]
        )
        laid = [packed_row([vars(row) for row in rows]) for rows in teacher_bins]
        width = max(len(row["input_ids"]) for row in laid)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if self.teacher_max_length is not None and not packed:  # padding never reaches past the context either
            width = max(min(width, self.teacher_max_length), max(len(row["input_ids"]) for row in laid))
        pad = self._state["teacher_pad"]
        fields = {
            "teacher_input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in laid]),
            "teacher_labels": torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in laid]),
            "dskd_pairs": torch.from_numpy(pairs),
        }
        if packed:  # the padded tail restarts its positions too, as Axolotl pads them (within the context)
            tail = self.teacher_max_length or width
            positions = [r["position_ids"] + [k % tail for k in range(width - len(r["position_ids"]))] for r in laid]
            fields["teacher_position_ids"] = torch.tensor(positions)
        else:
            fields["teacher_attention_mask"] = torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in laid]
            )
        return fields

    def _cut_to_context(self, rows: list[TeacherRow], pairs: np.ndarray, limit: int) -> np.ndarray:
        """The rule for a teacher row longer than the teacher can read: cut it to `limit`
        tokens (in place); its response tokens past the cut lose their teacher partner and
        train on the gold CE alone. Never fed past the teacher's context."""
        long_rows = [index for index, row in enumerate(rows) if len(row.input_ids) > limit]
        if not long_rows:
            return pairs
        longest = max(len(rows[index].input_ids) for index in long_rows)
        for index in long_rows:
            rows[index].input_ids, rows[index].labels = rows[index].input_ids[:limit], rows[index].labels[:limit]
        self._cuts["rows"] += len(long_rows)
        if self._cuts["rows"] >= self._cuts["next_report"]:  # the first cut, then at each doubling
            self._cuts["next_report"] = 2 * self._cuts["rows"]
            LOG.warning(
                "dskd: %d teacher row(s) so far were longer than the teacher's context (max_position_embeddings %d; "
                "longest %d tokens): each is cut to %d tokens, and its response tokens past the cut train on the "
                "gold CE alone (a shorter sequence_len or a teacher with a longer context avoids this)",
                self._cuts["rows"],
                limit,
                longest,
                limit,
            )
        return pairs[pairs[:, 2] < limit]

    def __call__(self, features: list[Any], return_tensors: str | None = None) -> dict[str, Any]:
        bins = bins_of(features)
        teacher_bins = [[self.teacher_view(row) for row in rows] for rows in bins]
        student_lengths = [[len(row["input_ids"]) for row in rows] for rows in bins]
        student_bins = [[{k: v for k, v in row.items() if k not in TEACHER_COLUMNS} for row in rows] for rows in bins]
        packed = is_packed(features)
        batch = super().__call__(student_bins if packed else [rows[0] for rows in student_bins], return_tensors)
        batch.update(self.teacher_fields(teacher_bins, student_lengths, packed))
        return batch
