"""What a checkpoint was trained with, so that a resume cannot silently change it.

The t2s projector in a checkpoint was fitted to one teacher, one vocabulary mode and one
alignment; resumed against another teacher it goes on training against the wrong one. Each
checkpoint gets `dskd_run.json` (written before the projector, which stays the mark of a
complete checkpoint), and a resume compares it with the config before any model loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from axolotl_dskd.teacher.identity import teacher_identity

RECORD_FILE = "dskd_run.json"
ACCEPT_KEY = "dskd_resume_with_changes"


def run_record(settings: Any) -> dict[str, Any]:
    """The teacher's identity, the method, the vocabulary mode and the alignment of a run
    (dskd_* keys of an Axolotl config or of the training arguments)."""
    cross = bool(settings.dskd_cross_tokenizer)
    return teacher_identity(settings) | {
        "dskd_method": settings.dskd_method,
        "vocabulary": "cross-tokenizer" if cross else "shared",
        "dskd_alignment": settings.dskd_alignment if cross else None,
    }


def write_record(checkpoint_dir: str, record: dict[str, Any]) -> None:
    """Written whole or not at all (temp file, then rename)."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    temporary = os.path.join(checkpoint_dir, f".{RECORD_FILE}.{os.getpid()}")
    Path(temporary).write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(temporary, os.path.join(checkpoint_dir, RECORD_FILE))


def read_record(checkpoint: Path) -> dict[str, Any] | None:
    path = checkpoint / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs, as `key: checkpoint's -> this run's` (None: same)."""
    for key in sorted(recorded.keys() | current.keys()):
        if recorded.get(key) != current.get(key):
            if key.endswith("_weights"):
                return f"{key}: the weight files differ from the checkpoint's"
            return f"{key}: {recorded.get(key)!r} in the checkpoint, {current.get(key)!r} in this run"
    return None
