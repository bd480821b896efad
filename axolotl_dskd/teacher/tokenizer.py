"""The teacher tokenizer an Axolotl config names (`dskd_teacher_tokenizer` or the
teacher model's own)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hub_constants
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
    key = "dskd_teacher_tokenizer" if settings.dskd_teacher_tokenizer else "dskd_teacher_model"
    try:
        return load_tokenizer(path, teacher_tokenizer_revision(settings), bool(settings.dskd_teacher_trust_remote_code))
    except (OSError, ValueError) as error:
        raise DSKDConfigError(f"{key}: {unloadable_reason(path, error)}") from error


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def unloadable_reason(path: str, error: Exception) -> str:
    """Why a model or tokenizer named by a local path or hub id did not load, in words a
    user acts on (Hugging Face's own message calls a missing folder a bad repo id)."""
    if not Path(path).is_dir() and not HUB_ID.fullmatch(path):
        return f"{path!r} is not a directory, and not a hub id (org/name); check the path"
    if not Path(path).exists() and hub_constants.HF_HUB_OFFLINE:
        return (
            f"{path!r} is not a local directory, and the hub id cannot be reached offline (HF_HUB_OFFLINE=1); "
            "download it first or give a local folder"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"cannot load a tokenizer from {path!r} ({first_line})"
