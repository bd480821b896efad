"""Sample packing: several rows share one sequence, and each still sees only itself.

Axolotl's multipack sampler hands the collator bins (lists of rows) instead of rows. The
plugin's collators turn each bin into one packed row whose `position_ids` restart at 0 at
every row and which carries no `attention_mask`: transformers then builds the attention
from the position ids alone (a block-diagonal causal mask under sdpa, eager and flex; the
varlen kernels under flash-attention), so no token attends across a row boundary. The
first label of every packed row but the first is masked: it would otherwise be predicted
from the previous row's last token, a pair that unpacked training never scores.

Whether a batch is packed is decided by the collator alone, from what the sampler handed
it, and written into the batch (`PACKED`); later layers read that field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from axolotl_dskd.labels import IGNORE_INDEX

# attention implementations that isolate rows from position ids alone (transformers 5)
ISOLATING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
# batch field, one flag per batch row (so it splits and concatenates with the batch):
# True when the collator packed the batch's rows
PACKED = "dskd_packed"


def is_packed(features: Sequence[Any]) -> bool:
    """Whether the collator got bins of rows (the multipack sampler) rather than rows."""
    return bool(features) and isinstance(features[0], list)


def bins_of(features: Sequence[Any]) -> list[list[dict[str, Any]]]:
    """Every batch as bins: a packed batch's bins, or one bin per row of a plain batch."""
    return [list(group) for group in features] if is_packed(features) else [[row] for row in features]


def packed_row(rows: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """One bin as one row: ids and labels end to end, positions restarting per row, each
    later row's first label masked."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for row in rows:
        ids, row_labels = list(row["input_ids"]), list(row["labels"])[: len(row["input_ids"])]
        if input_ids and row_labels:
            row_labels[0] = IGNORE_INDEX
        input_ids += ids
        labels += row_labels
        position_ids += range(len(ids))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def packing_flags(packed: bool, batch_rows: int) -> dict[str, torch.Tensor]:
    """The collator's word on packing, as a batch field."""
    return {PACKED: torch.full((batch_rows,), packed, dtype=torch.bool)}


def batch_is_packed(batch: dict[str, torch.Tensor]) -> bool:
    """What the collator wrote: a batch from elsewhere is an error, not a guess."""
    if PACKED not in batch:
        raise KeyError(f"a batch without `{PACKED}`: batches must come from the plugin's collators")
    return bool(batch[PACKED][0])


def model_inputs(batch: dict[str, torch.Tensor], prefix: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The forward arguments of one side of a batch (prefix "" student, "teacher_" teacher):
    ids with the attention mask, or with the packed position ids."""
    mask_or_positions = "position_ids" if batch_is_packed(batch) else "attention_mask"
    return {
        "input_ids": batch[prefix + "input_ids"].to(device),
        mask_or_positions: batch[prefix + mask_or_positions].to(device),
    }


def sub_rows(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[start, end) of every row packed in each batch row; a padded tail (its positions
    restart too) comes back as rows as well."""
    spans = []
    for positions in position_ids.tolist():
        starts = [k for k, position in enumerate(positions) if position == 0] or [0]
        spans.append(list(zip(starts, [*starts[1:], len(positions)], strict=True)))
    return spans
