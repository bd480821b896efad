"""The label of a position no loss term reads (prompt, padding), as HF and Axolotl write it:
shared by the collators, the loss and the data checks, so it lives below all of them."""

IGNORE_INDEX = -100
