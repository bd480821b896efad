"""Dual-Space Knowledge Distillation (DSKD / DSKDv2) for Axolotl.

`DSKDPlugin` is imported on first use, so that the loss, alignment and distillation layers
import without Axolotl (benchmarks/gpu_step.py runs them on a GPU machine that has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from axolotl_dskd.integration.plugin import DSKDPlugin

__version__ = "0.1.0"
__all__ = ["DSKDPlugin", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "DSKDPlugin":
        from axolotl_dskd.integration.plugin import DSKDPlugin

        return DSKDPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
