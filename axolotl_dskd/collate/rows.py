"""The plugin's collation of student rows: padding as Axolotl pads, packing bins of rows
(`sample_packing`, see `packing.py`), and each row's cached teacher rows
(`dskd_teacher_cache`).

The row keys are taken from the features before padding or packing, so the cache lookup
sees each row as the cache builder did, whatever the padding, packing, sampler or rank
split of this run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

from axolotl_dskd.collate.packing import bins_of, is_packed, packed_row, packing_flags
from axolotl_dskd.teacher.cache import CACHED_COUNTS, TeacherCache, row_key


def _with_attention_mask(row: dict[str, Any]) -> dict[str, Any]:
    """A plain row keeps or regains its attention mask (Axolotl drops that column from
    datasets it packs, and rows of such a dataset can still be collated one by one)."""
    return row if "attention_mask" in row else row | {"attention_mask": [1] * len(row["input_ids"])}


@dataclass
class DSKDRowCollator(DataCollatorForSeq2Seq):
    """Axolotl's padding collator that also packs multipack bins (and says so in the batch's
    `PACKED` field); with `teacher_cache` set, batches also carry the cached teacher rows of
    their rows (the step then runs no teacher)."""

    teacher_cache: str = ""
    _cache: dict[str, TeacherCache] = field(default_factory=dict, repr=False)

    def __call__(self, features: list[Any], return_tensors: str | None = None) -> dict[str, Any]:
        bins = bins_of(features)
        keys = [[row_key(row["input_ids"], row["labels"]) for row in rows] for rows in bins if self.teacher_cache]
        packed = is_packed(features)
        if packed:
            batch = super().__call__([packed_row(rows) for rows in bins], return_tensors)
        else:
            batch = super().__call__([_with_attention_mask(row) for row in features], return_tensors)
        batch.update(packing_flags(packed, len(bins)))
        if self.teacher_cache:
            if not self._cache:  # opened on first use, in the process that collates
                self._cache["open"] = TeacherCache(self.teacher_cache)
            cached = self._cache["open"].rows([key for row_keys in keys for key in row_keys])
            per_row = cached[CACHED_COUNTS].split([len(row_keys) for row_keys in keys])
            cached[CACHED_COUNTS] = torch.stack([counts.sum() for counts in per_row])
            batch.update(cached)
        return batch
