"""Dual-Space Knowledge Distillation (DSKD / DSKDv2) for Axolotl."""

from axolotl_dskd.integration.plugin import DSKDPlugin

__version__ = "0.1.0"
__all__ = ["DSKDPlugin", "__version__"]
