"""Pure math (no Axolotl, HF Trainer or engine imports): named terms and counts,
chunking, the closed form, divergences, projectors."""

# The label of a position no loss term reads (prompt, padding), as HF and Axolotl write it.
IGNORE_INDEX = -100
