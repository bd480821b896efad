"""The engine a YAML selects, read from the YAML alone (the validator and `axolotl-dskd
plan` run before any engine exists): the ZeRO stage of its `deepspeed` setting, FSDP2
from its `fsdp_config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axolotl_dskd.engines.base import Engine
from axolotl_dskd.engines.ddp import DDP
from axolotl_dskd.engines.fsdp2 import FSDP2
from axolotl_dskd.engines.zero import ZeRO
from axolotl_dskd.engines.zero3 import ZeRO3
from axolotl_dskd.errors import DSKDConfigError


def deepspeed_config(cfg: Any) -> dict[str, Any] | None:
    """The `deepspeed` setting (a dict or a JSON file) as a dict; None without it."""
    setting = getattr(cfg, "deepspeed", None)
    if not setting:
        return None
    if isinstance(setting, dict):
        return setting
    try:
        return json.loads(Path(setting).read_text())
    except (OSError, ValueError) as error:
        raise DSKDConfigError(f"deepspeed: cannot read {setting!r} as a DeepSpeed JSON config ({error})") from None


def deepspeed_stage(cfg: Any) -> int | None:
    """The ZeRO stage of the `deepspeed` setting; None without it."""
    config = deepspeed_config(cfg)
    return None if config is None else int((config.get("zero_optimization") or {}).get("stage", 0))


def engine_for_config(cfg: Any, world_size: int) -> Engine:
    """The engine adapter this YAML would run under on `world_size` GPUs."""
    stage = deepspeed_stage(cfg)
    if stage == 3:
        return ZeRO3(world_size, deepspeed_config(cfg))
    if stage is not None:
        return ZeRO(world_size, stage)
    if getattr(cfg, "fsdp", None) or getattr(cfg, "fsdp_config", None):
        return FSDP2(world_size)
    return DDP(world_size) if world_size > 1 else Engine(world_size)
