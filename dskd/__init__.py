"""Short alias so a YAML can say `plugins: [dskd.DSKDPlugin]`.

Axolotl 0.19 splits each plugin entry at its last dot into module and class, so a bare
`dskd` (no class part) cannot load; this module makes the two-part short form work.
"""

from axolotl_dskd import DSKDPlugin

__all__ = ["DSKDPlugin"]
