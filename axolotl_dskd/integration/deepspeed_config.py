"""The ZeRO stage a YAML's `deepspeed` setting asks for: read by the validator and by
`axolotl-dskd plan`, which must run without Axolotl's own modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axolotl_dskd.errors import DSKDConfigError


def deepspeed_stage(cfg: Any) -> int | None:
    """The ZeRO stage of the `deepspeed` setting (a dict or a JSON file); None without it."""
    setting = getattr(cfg, "deepspeed", None)
    if not setting:
        return None
    if isinstance(setting, dict):
        config = setting
    else:
        try:
            config = json.loads(Path(setting).read_text())
        except (OSError, ValueError) as error:
            raise DSKDConfigError(f"deepspeed: cannot read {setting!r} as a DeepSpeed JSON config ({error})") from None
    return int((config.get("zero_optimization") or {}).get("stage", 0))
