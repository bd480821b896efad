"""What names a teacher: where it comes from, its adapter, and its weight files.

Both the teacher cache (is this cache still the teacher's?) and each checkpoint's run
record (is this resume still against the same teacher?) compare this identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_dskd.teacher.cache import weights_identity


def local_path(value: str | None) -> str | None:
    """A local folder as its absolute path (a cache built from `./teacher` serves
    `/abs/teacher`); hub ids as written."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def teacher_identity(settings: Any) -> dict[str, Any]:
    """The teacher and its adapter by path or hub id, revision and weight files (dskd_*
    keys of an Axolotl config or of the training arguments)."""
    return {
        "dskd_teacher_model": local_path(settings.dskd_teacher_model),
        "dskd_teacher_revision": settings.dskd_teacher_revision,
        "dskd_teacher_adapter": local_path(settings.dskd_teacher_adapter),
        "dskd_teacher_adapter_revision": settings.dskd_teacher_adapter_revision,
        "teacher_weights": weights_identity(settings.dskd_teacher_model),
        "teacher_adapter_weights": weights_identity(settings.dskd_teacher_adapter),
    }
