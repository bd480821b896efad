"""Eval mode for a student that trains again right after (sampling, the teacher-fit check)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _four_bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [module for module in model.modules() if isinstance(module, Linear4bit)]


@contextmanager
def eval_mode_keeping_4bit(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the block, the model's own mode restored after it.

    bitsandbytes repacks a 4-bit weight for CPU inference the first time an eval-mode layer
    runs without grad; that repacking fails on small shapes and is not meant for weights
    that train next. Those layers have no dropout, so they stay in train mode."""
    was_training = model.training
    model.eval()
    for layer in _four_bit_layers(model):
        layer.train()
    try:
        yield
    finally:
        model.train(was_training)
