"""Pure math (no Axolotl, HF Trainer or engine imports): named terms and counts,
chunking, the closed form, divergences, projectors."""
