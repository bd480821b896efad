"""DSKDPlugin: wires the DSKD schema, trainer and artifacts into Axolotl's hooks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin

from axolotl_dskd.integration.args import DSKD_KEYS

LOG = logging.getLogger(__name__)


def log_memory_plan(cfg: Any, processes: int) -> None:
    """The `axolotl-dskd plan` table, once, as training starts."""
    from axolotl_dskd.planning.memory import plan

    try:
        estimate = plan(cfg, gpus=processes)
    except Exception as error:  # a model whose config cannot be built on the meta device
        LOG.warning("dskd: no memory plan for this run (%s)", error)
        return
    LOG.info(
        "dskd: memory plan per GPU (estimates; `axolotl-dskd plan cfg.yml` prints it before a run):\n%s",
        estimate.table(),
    )


class DSKDPlugin(BasePlugin):
    """Dual-Space Knowledge Distillation. YAML: `plugins: [axolotl_dskd.DSKDPlugin]`."""

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Any = None
        self._lock: Any = None  # the output_dir's run lock, held while this process lives

    def register(self, cfg: Any) -> None:
        """Show this package's INFO logs at Axolotl's level (its loggers sit outside the
        `axolotl` hierarchy), and with dskd_teacher_chat_template make chat_template
        datasets also render the teacher's view."""
        logging.getLogger("axolotl_dskd").setLevel(logging.getLogger("axolotl").getEffectiveLevel())
        if not cfg.get("dskd_teacher_chat_template"):
            return
        for index, dataset in enumerate(cfg.get("datasets") or []):
            if dataset.get("type") != "chat_template":
                raise ValueError(
                    f"dskd_teacher_chat_template: needs `type: chat_template` datasets; "
                    f"datasets[{index}] has type {dataset.get('type')!r}"
                )
            dataset["type"] = "axolotl_dskd.integration.chat_template"

    def get_input_args(self) -> str:
        return "axolotl_dskd.integration.args.DSKDArgs"

    def get_training_args_mixin(self) -> str:
        return "axolotl_dskd.integration.args.DSKDTrainingArgsMixin"

    def get_training_args(self, cfg: Any) -> dict[str, Any]:
        return {key: cfg[key] for key in DSKD_KEYS if cfg[key] is not None} | {"dskd_sequence_len": cfg.sequence_len}

    def get_trainer_cls(self, cfg: Any) -> type:
        from axolotl_dskd.integration.trainer import DSKDTrainer

        return DSKDTrainer

    def get_collator_cls_and_kwargs(self, cfg: Any, is_eval: bool = False) -> tuple[type, dict[str, Any]]:
        """The plugin's collators pad as Axolotl does and pack multipack bins so packed rows
        stay apart; cross-tokenizer runs also need the teacher's tokenization of each row,
        cached runs the cached teacher rows of each row."""
        from axolotl_dskd.teacher.loading import teacher_context
        from axolotl_dskd.teacher.source import teacher_source
        from axolotl_dskd.teacher.tokenizer import teacher_tokenizer_path, teacher_tokenizer_revision

        cache = teacher_source(cfg).collator_kwargs()
        if not cfg.dskd_cross_tokenizer:
            from axolotl_dskd.collate.rows import DSKDRowCollator

            return DSKDRowCollator, cache
        from axolotl_dskd.collate.cross_tokenizer import DSKDCrossTokenizerCollator

        return DSKDCrossTokenizerCollator, cache | {
            "teacher_tokenizer_path": teacher_tokenizer_path(cfg),
            "teacher_revision": teacher_tokenizer_revision(cfg),
            "teacher_trust_remote_code": bool(cfg.dskd_teacher_trust_remote_code),
            "alignment": cfg.dskd_alignment,
            "teacher_max_length": teacher_context(cfg),
        }

    def pre_model_load(self, cfg: Any) -> None:
        """Before the student loads: one live run per output_dir, and never a resume from a
        checkpoint missing its projector or trained with another setup."""
        from axolotl_dskd.integration.resume import choose_checkpoint
        from axolotl_dskd.integration.run_lock import hold_output_dir

        if cfg.get("output_dir") and self._lock is None:
            self._lock = hold_output_dir(cfg["output_dir"])
        choose_checkpoint(cfg)

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        self._trainer = trainer
        if trainer.is_world_process_zero():
            log_memory_plan(cfg, trainer.accelerator.num_processes)

    def post_train(self, cfg: Any, model: Any) -> None:
        """Write the projector next to the final model (runs twice in Axolotl; idempotent)."""
        if self._trainer is not None and self._trainer.args.should_save:
            self._trainer.projector.save(cfg.output_dir)

    def post_lora_merge(self, cfg: Any, adapter_path: str, output_path: str) -> None:
        """`axolotl merge-lora` (0.21+): the merged folder keeps every artifact of the run,
        the t2s projector included, as the adapter folder did."""
        from axolotl_dskd.integration.resume import PROJECTOR_FILE

        projector = Path(adapter_path) / PROJECTOR_FILE
        if projector.exists():
            shutil.copy2(projector, Path(output_path) / PROJECTOR_FILE)
            LOG.info("dskd: copied the t2s projector to %s", output_path)

    def post_train_unload(self, cfg: Any) -> None:
        self._trainer = None
