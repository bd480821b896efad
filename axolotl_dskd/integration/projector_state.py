"""The t2s projector's life beside the student: its optimizer group, its gradients (synced
over ranks, reset after each step), the rank check, and its file in every checkpoint.

Vanilla KD trains no projector: `NoProjector` answers each call with nothing to do, so the
trainer never asks which method runs."""

from __future__ import annotations

import logging
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from axolotl_dskd.engines.base import Engine
from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.integration.resume import PROJECTOR_FILE
from axolotl_dskd.loss.projectors import T2SProjector

LOG = logging.getLogger(__name__)


def write(output_dir: str, tensors: dict[str, torch.Tensor]) -> None:
    """The projector file in `output_dir`, written whole or not at all (a kill leaves no half file)."""
    os.makedirs(output_dir, exist_ok=True)
    temporary = os.path.join(output_dir, f".{PROJECTOR_FILE}.{os.getpid()}")
    save_file(tensors, temporary)
    os.replace(temporary, os.path.join(output_dir, PROJECTOR_FILE))


class NoProjector:
    """No projector to train, sync, check or save (vanilla KD)."""

    def callbacks(self) -> list[TrainerCallback]:
        return []

    def add_param_group(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
        """Nothing to add."""

    def sync_grads(self, global_step: int) -> None:
        """Nothing to sync."""

    def check_in_sync(self) -> None:
        """Nothing to compare."""

    def save(self, output_dir: str) -> None:
        """Nothing to write."""

    def save_checkpoint(self, checkpoint_dir: str, should_save: bool) -> None:
        """Nothing to write."""

    def restore(self, checkpoint_dir: str) -> None:
        """Nothing to read."""


class ProjectorGradReset(TrainerCallback):
    """The projector lives outside the student, so HF's model.zero_grad() never reaches it."""

    def __init__(self, projector: torch.nn.Module) -> None:
        self.projector = projector

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.projector.zero_grad(set_to_none=True)


class TrainedProjector(NoProjector):
    """DSKD's t2s projector, trained with the student and saved with every checkpoint."""

    def __init__(self, projector: T2SProjector, engine: Engine) -> None:
        self.projector = projector
        self.engine = engine
        self._synced_at = -1
        engine.start_in_sync(projector)

    def callbacks(self) -> list[TrainerCallback]:
        return [ProjectorGradReset(self.projector)]

    def add_param_group(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
        """The projector in a group of its own at `lr` (moved out of the student's groups
        when DeepSpeed or FSDP made it part of the student)."""
        if any(group.get("dskd_projector") for group in optimizer.param_groups):
            return
        own = {id(p) for p in self.projector.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in own]
        params = list(self.projector.parameters())
        optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": weight_decay, "dskd_projector": True})

    def sync_grads(self, global_step: int) -> None:
        """Once per optimizer step, let the engine average the projector's gradients over
        ranks where it does not own the projector (DDP)."""
        if self._synced_at == global_step:
            return
        self._synced_at = global_step
        self.engine.sync_projector_grads(self.projector)

    def check_in_sync(self) -> None:
        """Fail loudly if ranks ever hold different projectors (a checkpoint would keep
        only rank 0's). FSDP and ZeRO-3 hold one split copy: nothing to compare."""
        difference = self.engine.check_in_sync(self.projector)
        if difference is None:
            return
        if difference > 0:
            raise RuntimeError(f"dskd: the t2s projector differs across ranks by up to {difference:.3e}")
        LOG.info("dskd: t2s projector identical on %d ranks", self.engine.world_size)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The projector's tensors, whole, on the CPU. Under FSDP and ZeRO-3 this gathers
        the slices: every rank must call it."""
        parameters = self.projector.named_parameters()
        return {name: self.engine.whole(tensor).cpu().contiguous() for name, tensor in parameters}

    def save(self, output_dir: str) -> None:
        """Write the projector next to the final model or adapter in `output_dir`."""
        write(output_dir, self.tensors())
        LOG.info("dskd: wrote the t2s projector to %s", output_dir)

    def save_checkpoint(self, checkpoint_dir: str, should_save: bool) -> None:
        """Every rank gathers (a collective); the saving rank writes."""
        tensors = self.tensors()
        if should_save:
            write(checkpoint_dir, tensors)

    def restore(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, PROJECTOR_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resume_from_checkpoint: {checkpoint_dir} has no {PROJECTOR_FILE}; "
                "it was not written by a DSKD run, so the projector cannot be restored"
            )
        saved = load_file(path)
        expected = (self.projector.out_features, self.projector.in_features)
        if tuple(saved["weight"].shape) != expected:
            raise DSKDConfigError(
                f"resume_from_checkpoint: the t2s projector in {checkpoint_dir} maps hidden size "
                f"{saved['weight'].shape[1]} to {saved['weight'].shape[0]}, this run's teacher and student need "
                f"{expected[1]} to {expected[0]}: it was trained with another model; start afresh with a new output_dir"
            )
        device = self.projector.weight.device
        self.engine.restore_projector(self.projector, {k: v.to(device) for k, v in saved.items()})
        LOG.info("dskd: restored the t2s projector from %s", path)


def projector_state(projector: T2SProjector | None, engine: Engine) -> NoProjector:
    """The projector's state object: a trained one for DSKD, the null one for vanilla KD."""
    return NoProjector() if projector is None else TrainedProjector(projector, engine)
