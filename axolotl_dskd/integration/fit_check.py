"""The pre-flight teacher-fit check, run through the trainer: teacher and student scored on
the first training rows, collated as training collates them (also `axolotl-dskd teacher-fit`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from axolotl_dskd.distill.eval_mode import eval_mode_keeping_4bit
from axolotl_dskd.teacher.fit_report import FIT_RECORD, TeacherFit

LOG = logging.getLogger(__name__)


def measure_teacher_fit(trainer: Any, model: torch.nn.Module, rows: int) -> TeacherFit:
    """Teacher and student on the first `rows` training rows of a DSKDTrainer, in eval mode
    and without gradients."""
    dataset = trainer._remove_unused_columns(trainer.train_dataset, description="teacher fit")
    dataset = dataset.select(range(min(rows, len(dataset))))
    batch_size = trainer.args.per_device_train_batch_size
    sums = counts = None
    with eval_mode_keeping_4bit(model):
        for start in range(0, len(dataset), batch_size):
            batch = trainer.data_collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch_sums, batch_counts = trainer.distill.score(model, trainer._prepare_inputs(batch))
            sums = batch_sums if sums is None else sums + batch_sums
            counts = batch_counts if counts is None else counts + batch_counts
    metrics = trainer.distill.metrics(sums, counts)
    return TeacherFit(
        rows=len(dataset),
        response_tokens=int(counts.n_tokens.item()),
        teacher_acc=metrics["teacher_acc"],
        teacher_ce=metrics["teacher_ce"],
        student_ce=metrics["ce_loss"],
        align_ratio=metrics.get("align_ratio", 1.0),
    )


class TeacherFitCheck(TrainerCallback):
    """Before the first step of a fresh run (the model is wrapped by then, so every engine
    can run it), score teacher and student on the first training rows and warn when the
    teacher does not fit the data."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step > 0:  # resumed: checked when the run started
            return
        trainer = self.trainer
        fit = measure_teacher_fit(trainer, trainer.model_wrapped, args.dskd_teacher_fit_rows)
        if trainer.is_world_process_zero():
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / FIT_RECORD).write_text(fit.to_json() + "\n")
            LOG.info("dskd: teacher fit before training:\n%s", fit.table())
            if fit.warning():
                LOG.warning(fit.warning())
            elif fit.note():
                LOG.info(fit.note())
