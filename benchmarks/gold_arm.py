"""The peer arm of benchmarks/quality.py: TRL's experimental GOLD trainer (cross-tokenizer
ULD with the hybrid loss), trained on the same chat rows, LoRA, steps, batch, learning rate
and seed as the Axolotl arms, with its CE weight matched to DSKD's `1 - dskd_kd_ratio`
(TRL pads each batch to its longest row). Checkpoints every `save_steps` and resumes from
the last one, as the Axolotl arms do.

Run by quality.py as `python benchmarks/gold_arm.py SPEC.json`; writes the LoRA adapter to
the spec's `output_dir` and the per-step log to `log_history.json` there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint


def teacher_model(path: str, adapter: str | None) -> torch.nn.Module:
    """The teacher in fp32; a stage-1 adapter merged in, as DSKD's full-precision path does."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload() if adapter else model


def main() -> int:
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    spec = json.loads(Path(sys.argv[1]).read_text())
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    student_tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    if student_tokenizer.pad_token is None:  # as Axolotl does for a tokenizer without one
        student_tokenizer.pad_token = student_tokenizer.eos_token
    config = GOLDConfig(
        output_dir=spec["output_dir"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["micro_batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=spec["warmup_steps"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=spec["save_steps"],
        save_total_limit=2,
        seed=spec["seed"],
        use_cpu=True,
        bf16=False,
        report_to=[],
        lmbda=0.0,  # off-policy: the gold responses only, like the off-policy DSKD arm
        beta=0.0,  # forward KL, DSKD's default divergence
        temperature=spec["temperature"],
        max_length=spec["sequence_len"],
        teacher_tokenizer_name_or_path=spec["teacher"],
        use_uld_loss=True,
        uld_use_hybrid_loss=True,
        uld_crossentropy_weight=1.0 - spec["kd_ratio"],
        uld_distillation_weight=spec["kd_ratio"],
        uld_student_temperature=spec["temperature"],
        uld_teacher_temperature=spec["temperature"],
    )
    lora = spec["lora"]
    trainer = GOLDTrainer(
        model=AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32),
        teacher_model=teacher_model(spec["teacher"], spec.get("teacher_adapter")),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=student_tokenizer,
        peft_config=LoraConfig(
            r=lora["lora_r"],
            lora_alpha=lora["lora_alpha"],
            lora_dropout=lora["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    output_dir = Path(spec["output_dir"])
    trainer.train(resume_from_checkpoint=get_last_checkpoint(output_dir) if output_dir.is_dir() else None)
    trainer.save_model(spec["output_dir"])
    history = Path(spec["output_dir"]) / "log_history.json"
    history.write_text(json.dumps(trainer.state.log_history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
