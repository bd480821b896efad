"""The engine adapter: one object, chosen once from the accelerator's state, that knows
how the running engine holds the student and the projector (see base.Engine)."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType

from axolotl_dskd.engines.base import LOSS_MODULE, Engine
from axolotl_dskd.engines.ddp import DDP
from axolotl_dskd.engines.fsdp2 import FSDP2
from axolotl_dskd.engines.zero import ZeRO
from axolotl_dskd.engines.zero3 import ZeRO3

__all__ = ["LOSS_MODULE", "Engine", "select"]


def select(accelerator: Accelerator) -> Engine:
    """Single process, DDP, DeepSpeed ZeRO-1/2, ZeRO-3 or FSDP2 (the YAML validation has
    already rejected the rest: DeepSpeed without ZeRO, FSDP1)."""
    world_size = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.zero_stage == 3:
            return ZeRO3(world_size, plugin.deepspeed_config)
        return ZeRO(world_size, plugin.zero_stage)
    if accelerator.distributed_type == DistributedType.FSDP:
        return FSDP2(world_size)
    return DDP(world_size) if world_size > 1 else Engine()
