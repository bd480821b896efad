"""The two tokenizers an Axolotl config names, and whether their vocabularies differ.

The YAML validation decides "same or different tokenizers" once and stores the answer
as `dskd_cross_tokenizer`; the collator choice reads it, and `distill.vocabulary` turns
it into the mode object the step and the cache builder ask.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.tokens.vocab import load_tokenizer, same_vocabulary


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


def student_tokenizer(cfg: Any) -> PreTrainedTokenizerBase:
    """tokenizer_config, else base_model's tokenizer."""
    path = getattr(cfg, "tokenizer_config", None) or cfg.base_model
    return load_tokenizer(path, None, bool(getattr(cfg, "trust_remote_code", False)))


def vocabularies_differ(cfg: Any) -> bool:
    """True when the teacher's vocabulary differs from the student's (validation only)."""
    return not same_vocabulary(student_tokenizer(cfg), teacher_tokenizer(cfg))
