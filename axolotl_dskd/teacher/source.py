"""Where the run's teacher distributions come from, decided once from the settings: the
teacher's body run live on each batch, or the rows of a teacher cache read with each batch
(then only the teacher's head is loaded)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from axolotl_dskd.engines.base import Engine
from axolotl_dskd.teacher.cache import head_only_teacher
from axolotl_dskd.teacher.loading import TeacherSpec, load_teacher

LOG = logging.getLogger(__name__)


class LiveTeacher:
    """The teacher's body runs under no_grad on every batch."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def collator_kwargs(self) -> dict[str, Any]:
        return {}

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

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collator_kwargs(self) -> dict[str, Any]:
        return {"teacher_cache": self.directory}

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


def teacher_source(settings: Any) -> LiveTeacher | CachedTeacher:
    """The run's teacher source, from `dskd_teacher_cache` (YAML config or training args)."""
    directory = getattr(settings, "dskd_teacher_cache", None)
    return CachedTeacher(directory) if directory else LiveTeacher(settings)
