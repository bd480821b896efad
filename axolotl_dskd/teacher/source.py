"""Where the run's teacher rows come from, decided once from the settings: the teacher's
body run live on each batch, or the rows of a teacher cache read with each batch (then
only the teacher's head is loaded). Both hand the step the teacher's hidden rows it pairs,
never NaN or inf; the step asks, and never looks at which one it has."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from axolotl_dskd.engines.base import Engine
from axolotl_dskd.finite import bad_embedding_ids, non_finite_rows, teacher_rows_error
from axolotl_dskd.teacher.cache import CACHED_ROWS, TeacherCacheError, cached_teacher_rows, head_only_teacher
from axolotl_dskd.teacher.loading import TeacherSpec, last_hidden_state, load_teacher, output_head

LOG = logging.getLogger(__name__)


class LiveTeacher:
    """The teacher's body runs under no_grad on every batch."""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def collator_kwargs(self) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def rows(self, teacher: nn.Module, batch: dict[str, torch.Tensor], rows: Any, vocabulary: Any) -> torch.Tensor:
        """The teacher's hidden rows at `rows` (the step's LossPositions), from a forward pass over
        the vocabulary's teacher view of the batch."""
        teacher_inputs = vocabulary.teacher_inputs(batch, output_head(teacher).device)
        teacher_rows = rows.teacher_rows(last_hidden_state(teacher, teacher_inputs))
        bad = non_finite_rows(teacher_rows)
        if len(bad):
            embedding = teacher.get_input_embeddings().weight
            raise teacher_rows_error(
                len(bad), len(teacher_rows), "live", bad_embedding_ids(embedding, teacher_inputs["input_ids"])
            )
        return teacher_rows

    def load(
        self,
        dtype: torch.dtype,
        device: torch.device,
        engine: Engine,
        datasets: dict[str, Any],
        attn_implementation: str,
    ) -> torch.nn.Module:
        spec = TeacherSpec.from_settings(self.settings, dtype, attn_implementation=attn_implementation)
        teacher = load_teacher(spec, device, placed_on_load=engine.places_models_on_load)
        engine.prepare_teacher(teacher)
        return teacher


class CachedTeacher:
    """The collator adds each row's cached teacher rows to the batch; no teacher body loads."""

    def __init__(self, directory: str = "") -> None:
        self.directory = directory

    def collator_kwargs(self) -> dict[str, Any]:
        return {"teacher_cache": self.directory}

    def rows(self, teacher: nn.Module, batch: dict[str, torch.Tensor], rows: Any, vocabulary: Any) -> torch.Tensor:
        """The cached rows the collator added to the batch, checked against the rows this
        run pairs."""
        if CACHED_ROWS not in batch:
            raise TeacherCacheError("dskd_teacher_cache: a batch came without cached teacher rows")
        teacher_rows = cached_teacher_rows(batch, rows.teacher_index[0], output_head(teacher).dtype)
        bad = non_finite_rows(teacher_rows)
        if len(bad):
            raise teacher_rows_error(len(bad), len(teacher_rows), "cache", None)
        return teacher_rows

    def load(
        self,
        dtype: torch.dtype,
        device: torch.device,
        engine: Engine,
        datasets: dict[str, Any],
        attn_implementation: str,
    ) -> torch.nn.Module:
        LOG.info("dskd: training from the teacher cache %s (no teacher body loaded)", self.directory)
        return head_only_teacher(self.directory, dtype, device, datasets)


TeacherSource = LiveTeacher | CachedTeacher


def teacher_source(settings: Any) -> TeacherSource:
    """The run's teacher source, from `dskd_teacher_cache` (YAML config or training args)."""
    directory = getattr(settings, "dskd_teacher_cache", None)
    return CachedTeacher(directory) if directory else LiveTeacher(settings)
