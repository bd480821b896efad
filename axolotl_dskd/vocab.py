"""Compare the student's and the teacher's vocabularies before any model is loaded."""

from __future__ import annotations

from functools import lru_cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase


@lru_cache(maxsize=8)
def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def same_vocabulary(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> bool:
    """True when every token string has the same id on both sides.

    Head sizes are not compared: a model whose embedding is padded past its tokenizer
    (e.g. 151936 vs 152064 rows) still shares the vocabulary.
    """
    return student.get_vocab() == teacher.get_vocab()
