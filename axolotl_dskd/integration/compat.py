"""What differs between the Axolotl releases we support (0.19 to 0.21), in one place.

Everything else in the package is version-free: newer hooks (`post_lora_merge`,
`reports_token_perplexity`) are simply ignored by the releases that lack them.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

AXOLOTL_VERSION = Version(version("axolotl"))

# 0.20 removed FSDP1: an `fsdp_config` without `fsdp_version` now means FSDP2, and
# Axolotl itself rejects `fsdp_version: 1` before any plugin validator runs.
FSDP1_REMOVED = AXOLOTL_VERSION >= Version("0.20")
FSDP_VERSION_WHEN_UNSET = 2 if FSDP1_REMOVED else 1
