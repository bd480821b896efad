"""The engine contract: what the plugin asks of whatever runs the student.

A single process needs none of it, so this base class is that engine: every hook is a
no-op or the plain answer. Each multi-process engine (DDP, DeepSpeed ZeRO-1/2, ZeRO-3,
FSDP2) overrides what it changes; the trainer, the distillation step, the loss module,
on-policy sampling and teacher loading only ever ask an `Engine`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import nn

LOSS_MODULE = "dskd_head_loss"  # the loss module's name inside the student, where an engine needs it there


class Engine:
    """One process, no engine: the projector lives beside the student and is never split."""

    name = "single process"
    # the engine must own the loss module (and the t2s projector in it) as part of the
    # student: it reduces, clips, shards and steps only what the module it wraps holds
    owns_loss = False
    # ranks must keep stepping through `generate` together (every rank gathers each layer)
    synced_generation = False
    # the engine placed each rank's slice of a model while it loaded (ZeRO-3)
    places_models_on_load = False
    # what the engine divides across ranks (the memory plan asks these)
    shards_student_weights = False
    shards_gradients = False
    shards_optimizer_states = False
    shards_teacher = False

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size

    # -- parameters the engine may hold in slices ------------------------------------
    def is_split(self, tensor: torch.Tensor) -> bool:
        """Whether this rank holds only a slice of `tensor`."""
        return False

    def whole(self, tensor: torch.Tensor) -> torch.Tensor:
        """A detached full copy of `tensor` (every rank must call it when it is split)."""
        return tensor.detach().clone()

    @contextlib.contextmanager
    def gathered(self, *params: torch.Tensor) -> Iterator[None]:
        """Read-only: `params` are whole inside the block."""
        yield

    # -- the loss module and the teacher --------------------------------------------
    def prepare_teacher(self, teacher: nn.Module) -> None:
        """Anything the engine does to the frozen teacher once it has loaded."""

    def attach_loss(self, student: nn.Module, head_loss: nn.Module, student_head: torch.Tensor) -> None:
        """Make the loss module part of the student where the engine must own it."""

    def detach_loss(self, student: nn.Module, projector: nn.Module | None) -> None:
        """Undo `attach_loss` after training, leaving a whole projector on every rank."""

    def model_state(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's state without the loss module's tensors."""
        return state_dict

    def before_loss(self, model: nn.Module) -> None:
        """Called after the student's forward, before the loss reads its head."""

    # -- the loss across ranks ------------------------------------------------------
    def global_items(
        self, local_items: torch.Tensor | int | None, device: torch.device
    ) -> tuple[torch.Tensor | int | None, int]:
        """The response tokens of the global batch, and the factor for the loss: every rank
        divides by the tokens of all ranks (Axolotl turns HF's average_tokens_across_devices
        off) and gradients are then averaged over ranks, so the loss is scaled back up by
        their number."""
        if self.world_size == 1 or local_items is None:
            return local_items, 1
        total = torch.as_tensor(local_items, device=device).clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total, self.world_size

    # -- the projector across ranks -------------------------------------------------
    def start_in_sync(self, projector: nn.Module) -> None:
        """Every rank starts from rank 0's projector (a random init differs per rank)."""
        if self.world_size > 1:
            torch.distributed.broadcast(projector.weight.data, src=0)

    def sync_projector_grads(self, projector: nn.Module) -> None:
        """Average the projector's gradients over ranks where nothing else does."""

    def clipped_parameters(self, model: nn.Module, loss_module: nn.Module) -> Iterable[torch.Tensor]:
        """What one global gradient norm covers: the student and the projector."""
        if self.owns_loss:
            return model.parameters()
        return itertools.chain(model.parameters(), loss_module.parameters())

    def check_in_sync(self, projector: nn.Module) -> float | None:
        """The largest difference between the ranks' projectors, or None when there is a
        single copy (one process, or one split copy)."""
        if self.world_size == 1 or self.is_split(projector.weight):
            return None
        weight = projector.weight.detach()
        highest, lowest = weight.clone(), weight.clone()
        torch.distributed.all_reduce(highest, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(lowest, op=torch.distributed.ReduceOp.MIN)
        return (highest - lowest).abs().max().item()

    def restore_projector(self, projector: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a whole saved projector (each rank keeps its share where it is split)."""
        projector.load_state_dict(state)
