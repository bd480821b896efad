"""The `plugins:` spellings that load DSKDPlugin, per Axolotl release (README table)."""

from __future__ import annotations

import pytest
from axolotl.integrations import base

from axolotl_dskd import DSKDPlugin

COLON_FORM_SUPPORTED = hasattr(base, "normalize_plugin_name")  # Axolotl 0.21+


@pytest.mark.parametrize("name", ["axolotl_dskd.DSKDPlugin", "dskd.DSKDPlugin"])
def test_dotted_names_load_on_every_release(name: str) -> None:
    assert isinstance(base.load_plugin(name), DSKDPlugin)


def test_module_colon_class_loads_from_axolotl_0_21_and_fails_loudly_before() -> None:
    if COLON_FORM_SUPPORTED:
        assert isinstance(base.load_plugin("dskd:DSKDPlugin"), DSKDPlugin)
    else:  # 0.19/0.20 split at the last dot: no dot, no module
        with pytest.raises(ValueError):
            base.load_plugin("dskd:DSKDPlugin")
