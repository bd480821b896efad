"""DeepSpeed ZeRO-1 and ZeRO-2: the loss module joins the student like every owning engine."""

from __future__ import annotations

from axolotl_dskd.engines.owned_loss import OwnedLoss


class ZeRO(OwnedLoss):
    """DeepSpeed ZeRO-1 and ZeRO-2: whole parameters on every rank, split optimizer state."""

    name = "DeepSpeed ZeRO-1/2"
