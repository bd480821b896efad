"""DeepSpeed ZeRO-1 and ZeRO-2: the loss module joins the student like every owning engine."""

from __future__ import annotations

from axolotl_dskd.engines.owned_loss import OwnedLoss


class ZeRO(OwnedLoss):
    """DeepSpeed ZeRO-1 and ZeRO-2: whole parameters on every rank, the optimizer states
    split (and from stage 2 the gradients too)."""

    name = "DeepSpeed ZeRO-1/2"
    shards_optimizer_states = True

    def __init__(self, world_size: int = 1, stage: int = 2) -> None:
        super().__init__(world_size)
        self.shards_gradients = stage >= 2
