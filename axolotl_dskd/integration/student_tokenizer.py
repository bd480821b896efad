"""The student tokenizer exactly as Axolotl will train it, before any model loads.

A config's `special_tokens`, `tokens` and `added_tokens_overrides` give the student ids
(or strings) its base tokenizer lacks; the vocabulary mode must be decided from those,
so this asks Axolotl's own tokenizer loader rather than repeating its rules.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase


def axolotl_student_tokenizer(settings: dict[str, Any]) -> PreTrainedTokenizerBase:
    """Axolotl's `load_tokenizer` on a validated config's settings, with the tokenizer
    path defaulted as `normalize_config` does."""
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.dict import DictDefault

    normalised = DictDefault(settings)
    normalised.tokenizer_config = normalised.tokenizer_config or normalised.base_model_config or normalised.base_model
    return load_tokenizer(normalised)
