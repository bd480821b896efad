"""The teacher tokenizer an Axolotl config names (`dskd_teacher_tokenizer` or the
teacher model's own)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.tokens.vocab import load_tokenizer


def teacher_tokenizer_path(cfg: Any) -> str:
    return cfg.dskd_teacher_tokenizer or cfg.dskd_teacher_model


def teacher_tokenizer_revision(cfg: Any) -> str | None:
    """dskd_teacher_revision applies to the teacher model's own tokenizer only."""
    return None if cfg.dskd_teacher_tokenizer else cfg.dskd_teacher_revision


def teacher_tokenizer(settings: Any) -> PreTrainedTokenizerBase:
    """dskd_teacher_tokenizer, or the teacher model's own at dskd_teacher_revision, from an
    Axolotl config or the training arguments (both carry the dskd_* keys)."""
    path = teacher_tokenizer_path(settings)
    try:
        return load_tokenizer(path, teacher_tokenizer_revision(settings), bool(settings.dskd_teacher_trust_remote_code))
    except (OSError, ValueError) as error:
        key = "dskd_teacher_tokenizer" if settings.dskd_teacher_tokenizer else "dskd_teacher_model"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DSKDConfigError(f"{key}: cannot load a tokenizer from {path!r} ({first_line})") from error
