"""The engine adapter: chosen once from the accelerator, and who owns the loss module.

The multi-process engines run for real in tests/e2e/test_e2e.py (2 CPU ranks each)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from axolotl_dskd import engines
from axolotl_dskd.engines.ddp import DDP
from axolotl_dskd.engines.zero import ZeRO


class _Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)


def test_one_process_gets_the_plain_engine() -> None:
    engine = engines.select(Accelerator(cpu=True))
    assert type(engine) is engines.Engine and engine.world_size == 1
    assert not engine.owns_loss and not engine.synced_generation and not engine.places_models_on_load


def test_plain_and_ddp_clip_the_projector_beside_the_student() -> None:
    student, loss_module = _Student(), nn.Linear(3, 2, bias=False)
    for engine in (engines.Engine(), DDP(world_size=2)):
        engine.attach_loss(student, loss_module, student.body.weight)
        assert engines.LOSS_MODULE not in dict(student.named_children())
        clipped = list(engine.clipped_parameters(student, loss_module))
        assert any(p is loss_module.weight for p in clipped) and len(clipped) == 3


def test_engines_that_own_the_loss_hold_it_in_the_student_only_while_training() -> None:
    student, loss_module = _Student(), nn.Linear(3, 2, bias=False)
    engine = ZeRO(world_size=2)
    engine.attach_loss(student, loss_module, student.body.weight)
    assert dict(student.named_children())[engines.LOSS_MODULE] is loss_module
    clipped = list(engine.clipped_parameters(student, loss_module))
    assert sum(p is loss_module.weight for p in clipped) == 1  # once, as part of the student
    assert set(engine.model_state(student.state_dict())) == {"body.weight", "body.bias"}
    engine.detach_loss(student, loss_module)
    assert engines.LOSS_MODULE not in dict(student.named_children())
    assert torch.equal(engine.whole(loss_module.weight), loss_module.weight)
