"""Dataset type `axolotl_dskd.integration.chat_template`: each conversation rendered twice.

The student gets Axolotl's own `chat_template` tokenization (its template, its labels);
the teacher gets the same messages rendered with the teacher tokenizer's own chat
template, as `teacher_input_ids` / `teacher_labels`. The plugin switches `type:
chat_template` datasets to this type when `dskd_teacher_chat_template: true`.
"""

from __future__ import annotations

from typing import Any

from axolotl.prompt_strategies.chat_template import load as load_chat_template
from pydantic import BaseModel

from axolotl_dskd.teacher.tokenizer import teacher_tokenizer, teacher_tokenizer_path


class TwoTemplateStrategy:
    """Runs the student's and the teacher's chat_template strategies on the same rows."""

    def __init__(self, student: Any, teacher: Any) -> None:
        self.student, self.teacher = student, teacher

    @property
    def supports_batched(self) -> bool:
        return self.student.supports_batched and self.teacher.supports_batched

    def tokenize_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        rows = self.student.tokenize_prompt(prompt)
        teacher_rows = self.teacher.tokenize_prompt(prompt)
        return rows | {"teacher_input_ids": teacher_rows["input_ids"], "teacher_labels": teacher_rows["labels"]}


def load(tokenizer: Any, cfg: Any, ds_cfg: dict[str, Any] | None = None, processor: Any = None) -> TwoTemplateStrategy:
    teacher_vocab = teacher_tokenizer(cfg)
    if not teacher_vocab.chat_template:
        raise ValueError(
            f"dskd_teacher_chat_template: the teacher tokenizer {teacher_tokenizer_path(cfg)!r} has no chat template"
        )
    dataset_cfg = ds_cfg.model_dump() if isinstance(ds_cfg, BaseModel) else dict(ds_cfg or {})
    teacher_cfg = dataset_cfg | {"chat_template": "tokenizer_default", "chat_template_jinja": None}
    return TwoTemplateStrategy(
        load_chat_template(tokenizer, cfg, dataset_cfg, processor),
        load_chat_template(teacher_vocab, cfg, teacher_cfg, processor),
    )
