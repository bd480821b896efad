"""Whether a YAML lists the plugin, and which of its `plugins:` entries set a flag.

Axolotl loads no plugin a YAML does not list and drops keys no loaded schema knows, so a
config with `dskd_*` keys but no DSKD entry trains plain SFT with exit 0. The plugin
cannot see such a run; the commands read the raw YAML and say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# the modules a `plugins:` entry may name DSKDPlugin through (`module.Class` or `module:Class`)
PLUGIN_MODULES = ("axolotl_dskd", "dskd")
PLUGIN_CLASS = "DSKDPlugin"


def names_dskd_plugin(entry: str) -> bool:
    module, _, name = entry.strip().replace(":", ".").rpartition(".")
    return name == PLUGIN_CLASS and module in PLUGIN_MODULES


def missing_plugin_entry(raw: dict[str, Any]) -> str | None:
    """Why a raw YAML with `dskd_*` keys would not distil (None: it would, or has none)."""
    keys = sorted(key for key in raw if isinstance(key, str) and key.startswith("dskd_"))
    if not keys or any(names_dskd_plugin(str(entry)) for entry in raw.get("plugins") or []):
        return None
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return (
        f"it sets {shown} but its `plugins:` has no axolotl_dskd.DSKDPlugin entry, so `axolotl train` would run "
        "plain SFT and ignore every dskd_ key; add `plugins: [axolotl_dskd.DSKDPlugin]`"
    )


def entry_setting(plugins: list[str] | None, flag: str) -> str | None:
    """The `plugins:` entry whose module is named after `flag`'s feature (the entry that set
    it, e.g. ...cut_cross_entropy.CutCrossEntropyPlugin for `cut_cross_entropy`)."""
    feature = flag.split("_fused_")[0]  # liger_fused_linear_cross_entropy -> liger
    return next((entry for entry in plugins or [] if feature in entry.lower()), None)


def plugin_problem_in(config: str) -> str | None:
    """`missing_plugin_entry` of a YAML file, read as written (before Axolotl drops keys)."""
    raw = yaml.safe_load(Path(config).read_text())
    return missing_plugin_entry(raw) if isinstance(raw, dict) else None
