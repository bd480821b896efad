"""Plain data parallelism (DDP): the projector stays outside the wrapped student, so the
plugin averages its gradients over ranks itself, as DDP does for the student's."""

from __future__ import annotations

import torch
from torch import nn

from axolotl_dskd.engines.base import Engine


class DDP(Engine):
    name = "DDP"

    def sync_projector_grads(self, projector: nn.Module) -> None:
        grad = projector.weight.grad
        if grad is None:
            grad = projector.weight.grad = torch.zeros_like(projector.weight)
        torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
        grad.div_(self.world_size)
