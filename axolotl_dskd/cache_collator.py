"""Collation that adds each row's cached teacher rows (YAML: `dskd_teacher_cache`).

The row keys are taken from the features before padding, so the lookup sees each row as
the cache builder did, whatever the padding, sampler or rank split of this run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

from axolotl_dskd.distill.teacher_cache import TeacherCache, row_key


@dataclass
class DSKDCachedCollator(DataCollatorForSeq2Seq):
    """Axolotl's padding collator; with `teacher_cache` set, batches also carry the cached
    teacher rows of their rows (the step then runs no teacher)."""

    teacher_cache: str = ""
    _cache: dict[str, TeacherCache] = field(default_factory=dict, repr=False)

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None) -> dict[str, Any]:
        if features and isinstance(features[0], list):
            raise ValueError("sample_packing: packed batches are not supported by axolotl_dskd; set it to false")
        keys = [row_key(f["input_ids"], f["labels"]) for f in features] if self.teacher_cache else []
        batch = super().__call__(features, return_tensors)
        if self.teacher_cache:
            if not self._cache:  # opened on first use, in the process that collates
                self._cache["open"] = TeacherCache(self.teacher_cache)
            batch.update(self._cache["open"].rows(keys))
        return batch
