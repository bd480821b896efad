"""FSDP2: the student's parameters (and the projector, in its root module) are DTensor
shards; the root is unsharded for the loss, which reads the head outside forward."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from axolotl_dskd.engines.owned_loss import OwnedLoss


class FSDP2(OwnedLoss):
    name = "FSDP2"
    synced_generation = True
    # the student (and the projector with it) is sharded; the teacher stays whole on each rank
    shards_student_weights = shards_gradients = shards_optimizer_states = True

    def is_split(self, tensor: torch.Tensor) -> bool:
        return isinstance(tensor, DTensor)

    def whole(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.full_tensor().detach() if isinstance(tensor, DTensor) else super().whole(tensor)

    def before_loss(self, model: nn.Module) -> None:
        # gather the head and the projector for the loss; FSDP's backward reduces their
        # gradients and reshards them
        model.unshard()

    def restore_projector(self, projector: nn.Module, state: dict[str, torch.Tensor]) -> None:
        weight = projector.weight
        if isinstance(weight, DTensor):  # each rank keeps its shard of the saved tensor
            state = {
                key: distribute_tensor(value, weight.device_mesh, weight.placements) for key, value in state.items()
            }
        projector.load_state_dict(state)
