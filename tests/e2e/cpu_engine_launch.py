"""`torchrun --standalone --nproc_per_node 2 tests/e2e/cpu_engine_launch.py cfg.yml`: Axolotl training
with DDP, DeepSpeed or FSDP2 on a CPU-only machine (gloo), for the tests. What stands in
the way is worked around here, in the launcher only:

- Axolotl asks torch whether GPU 0 can reach GPU 1; a CUDA build of torch (the only one
  on PyPI for Python 3.12) raises "no NVIDIA driver" there instead of the AssertionError
  Axolotl catches from a CPU build;
- accelerate counts DeepSpeed ranks only when a process-group backend is named, which
  HF never does for DeepSpeed: without a GPU every rank would think it is alone;
- gloo's all_gather_into_tensor writes into views of a split output, which autograd
  refuses when ZeRO gathers its updated (grad-requiring) flat weights;
- accelerate enables FSDP only for accelerator process groups (never MULTI_CPU), and
  Axolotl builds FSDP's device mesh on "cuda" by name.
"""

import runpy
import sys

import torch
import torch.distributed as dist
from accelerate import state
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DistributedType

_partial_state_init = state.PartialState.__init__
_accelerator_state_init = state.AcceleratorState.__init__
_all_gather_into_tensor = dist.all_gather_into_tensor
_build_device_mesh = ParallelismConfig.build_device_mesh


def _init_with_gloo(self, cpu: bool = False, **kwargs) -> None:
    kwargs.setdefault("backend", "gloo")
    _partial_state_init(self, cpu, **kwargs)


def _init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


def _all_gather_without_grad(*args, **kwargs):
    with torch.no_grad():
        return _all_gather_into_tensor(*args, **kwargs)


def _no_peer_access(device: int, peer_device: int) -> bool:
    return False


def _cpu_device_mesh(self, device_type: str):
    return _build_device_mesh(self, "cpu")


if __name__ == "__main__":  # not in the dataset workers that re-import this file
    if not torch.cuda.is_available():
        torch.cuda.can_device_access_peer = _no_peer_access
    state.PartialState.__init__ = _init_with_gloo
    state.AcceleratorState.__init__ = _init_keeping_fsdp
    dist.all_gather_into_tensor = _all_gather_without_grad
    ParallelismConfig.build_device_mesh = _cpu_device_mesh
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
