"""Engines that own the loss module: DeepSpeed and FSDP2 reduce, clip, shard and step only
the parameters of the module they wrap, so the loss module (holding the t2s projector)
joins the student for the length of training and leaves it before the final save."""

from __future__ import annotations

import torch
from torch import nn

from axolotl_dskd.engines.base import LOSS_MODULE, Engine


class OwnedLoss(Engine):
    owns_loss = True

    def attach_loss(self, student: nn.Module, head_loss: nn.Module, student_head: torch.Tensor) -> None:
        student.add_module(LOSS_MODULE, head_loss)

    def detach_loss(self, student: nn.Module, projector: nn.Module | None) -> None:
        student._modules.pop(LOSS_MODULE, None)
        if projector is not None and self.is_split(projector.weight):
            # the engine left a slice of the projector: every rank takes the whole of it back
            projector.weight = nn.Parameter(self.whole(projector.weight))

    def model_state(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in state_dict.items() if f"{LOSS_MODULE}." not in key}
