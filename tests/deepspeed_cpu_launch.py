"""`torchrun --nproc_per_node 2 tests/deepspeed_cpu_launch.py cfg.yml`: Axolotl training
with DeepSpeed on a CPU-only machine (gloo), for the tests. Two things stand in the way
and are worked around here, in the launcher only:

- accelerate counts DeepSpeed ranks only when a process-group backend is named, which
  HF never does for DeepSpeed: without a GPU every rank would think it is alone;
- gloo's all_gather_into_tensor writes into views of a split output, which autograd
  refuses when ZeRO gathers its updated (grad-requiring) flat weights.
"""

import runpy
import sys

import torch
import torch.distributed as dist
from accelerate import state

_partial_state_init = state.PartialState.__init__
_all_gather_into_tensor = dist.all_gather_into_tensor


def _init_with_gloo(self, cpu: bool = False, **kwargs) -> None:
    kwargs.setdefault("backend", "gloo")
    _partial_state_init(self, cpu, **kwargs)


def _all_gather_without_grad(*args, **kwargs):
    with torch.no_grad():
        return _all_gather_into_tensor(*args, **kwargs)


if __name__ == "__main__":  # not in the dataset workers that re-import this file
    state.PartialState.__init__ = _init_with_gloo
    dist.all_gather_into_tensor = _all_gather_without_grad
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
