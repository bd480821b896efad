"""What names a teacher (where it comes from, its adapter, its weight files) and what a
teacher cache depends on beyond it.

Both the teacher cache (is this cache still the teacher's?) and each checkpoint's run
record (is this resume still against the same teacher?) compare this identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_dskd.teacher.cache import weights_identity
from axolotl_dskd.teacher.tokenizer import teacher_tokenizer_path


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


def teacher_cache_settings(cfg: Any) -> dict[str, Any]:
    """Everything a teacher cache depends on besides the rows themselves: the teacher and
    how it is held, both tokenizers, the teacher's rendering and the alignment."""
    cross = bool(cfg.dskd_cross_tokenizer)
    return teacher_identity(cfg) | {
        "dskd_teacher_dtype": cfg.dskd_teacher_dtype,
        "dskd_teacher_load_in_8bit": bool(cfg.dskd_teacher_load_in_8bit),
        "dskd_teacher_load_in_4bit": bool(cfg.dskd_teacher_load_in_4bit),
        "student_tokenizer": local_path(getattr(cfg, "tokenizer_config", None) or getattr(cfg, "base_model", None)),
        "teacher_tokenizer": local_path(teacher_tokenizer_path(cfg)),
        "dskd_teacher_chat_template": bool(cfg.dskd_teacher_chat_template),
        "sequence_len": getattr(cfg, "sequence_len", None),
        "dskd_cross_tokenizer": cross,
        "dskd_alignment": cfg.dskd_alignment if cross else None,
    }
