"""DeepSpeed ZeRO-3: every parameter, the teacher's included, is split across ranks.

A parameter is whole only while DeepSpeed has gathered it: inside the forward (and
backward) of a module that owns it or registered it as external, or inside
`GatheredParameters`. The teacher's body becomes a ZeRO-3 inference engine of its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from axolotl_dskd.engines.zero import ZeRO

LOG = logging.getLogger(__name__)

# stage-3 keys of the student's DeepSpeed config that also shape the teacher's partitioning
TEACHER_ZERO_KEYS = (
    "offload_param",
    "stage3_param_persistence_threshold",
    "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
)


def is_partitioned(tensor: torch.Tensor) -> bool:
    """Whether ZeRO-3 owns this parameter (it may hold only this rank's slice)."""
    return hasattr(tensor, "ds_id")


@contextlib.contextmanager
def gathered(*params: torch.Tensor) -> Iterator[None]:
    """Read-only: the ZeRO-3 parameters among `params` are whole inside the block."""
    partitioned = [p for p in params if is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with contextlib.ExitStack() as stack:
        # one at a time: DeepSpeed's coalesced gather waits only for its last transfer,
        # which on gloo (CPU) lets the first tensors be read before they arrive
        for param in partitioned:
            stack.enter_context(deepspeed.zero.GatheredParameters([param], modifier_rank=None))
        yield


def whole(param: torch.Tensor) -> torch.Tensor:
    """A full, detached copy of a (possibly partitioned) parameter; every rank must call it."""
    with gathered(param):
        return param.detach().clone()


def read_in_forward(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
    """Have ZeRO-3 gather `params` for `module`'s forward and backward (and reduce their
    gradients) although other modules own them."""
    import deepspeed

    for param in params:
        deepspeed.zero.register_external_parameter(module, param)


def _teacher_config(student_config: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """An inference-only stage-3 config for the teacher: no optimizer, the student's
    partitioning knobs where they are numbers, and the teacher's own dtype."""
    student_zero = student_config.get("zero_optimization") or {}
    zero = {"stage": 3} | {
        key: value for key in TEACHER_ZERO_KEYS if (value := student_zero.get(key)) is not None and value != "auto"
    }
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
    }


def partition_teacher(teacher: PreTrainedModel, student_config: dict[str, Any]) -> object:
    """Make the teacher's body a ZeRO-3 inference engine, so each rank keeps 1/N of it and
    layers are gathered one by one in forward; return the engine (it must stay alive).
    The body, not the whole model: the loss reads the head itself (via `gathered`)."""
    import deepspeed

    body = getattr(teacher, teacher.base_model_prefix)
    dtype = next(body.parameters()).dtype
    engine, *_ = deepspeed.initialize(model=body, config=_teacher_config(student_config, dtype))
    engine.eval()
    LOG.info("dskd: teacher partitioned by a ZeRO-3 inference engine (%s)", dtype)
    return engine


class ZeRO3(ZeRO):
    name = "DeepSpeed ZeRO-3"
    synced_generation = True
    places_models_on_load = True  # HF loads each rank's slice under ZeRO-3
    shards_student_weights = shards_teacher = True

    def __init__(self, world_size: int, deepspeed_config: dict[str, Any]) -> None:
        super().__init__(world_size, stage=3)
        self.deepspeed_config = deepspeed_config
        self._teacher_engine: object = None  # keeps the teacher's engine (and its gather hooks) alive

    def is_split(self, tensor: torch.Tensor) -> bool:
        return is_partitioned(tensor)

    def whole(self, tensor: torch.Tensor) -> torch.Tensor:
        return whole(tensor)

    def gathered(self, *params: torch.Tensor):
        return gathered(*params)

    def prepare_teacher(self, teacher: nn.Module) -> None:
        self._teacher_engine = partition_teacher(teacher, self.deepspeed_config)

    def attach_loss(self, student: nn.Module, head_loss: nn.Module, student_head: torch.Tensor) -> None:
        super().attach_loss(student, head_loss, student_head)
        # ZeRO-3 gathers parameters only for the forward of a module it wraps
        read_in_forward(head_loss, [student_head, *head_loss.parameters()])
