"""`axolotl-dskd demo`: a real distillation on the embedded default pair, on CPU, that ends
with a before/after table a newcomer can read.

Teacher Qwen2.5-Coder-0.5B-Instruct (Qwen2 BPE, 151,936 tokens), student
SmolLM2-135M-Instruct (49,152 tokens): two tokenizers, so the run takes the plugin's
cross-tokenizer path. The task is short arithmetic in chat turns, where the untrained
student is mostly wrong and the teacher mostly right, so 48 LoRA steps (about 10 CPU
minutes) move the student's held-out accuracy by tens of points.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.assets import arithmetic
from axolotl_dskd.assets import fetch as assets
from axolotl_dskd.teacher.fit_report import FIT_RECORD

# Axolotl settings a CPU run needs: no mixed precision, no Triton LoRA kernels, plain AdamW.
CPU_SETTINGS = {
    "optimizer": "adamw_torch",
    "bf16": False,
    "fp16": False,
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
}
# The demo's adapter: LoRA r 16 on every linear layer (the benchmarks train the same one).
LORA_SETTINGS = {"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True}
TRAIN_ROWS = 96  # half two-digit additions, half subtractions
ROWS_PER_STEP = 8
HELD_OUT_PER_KIND = 25
DATA_SEED = 2024  # the rows are fixed; --seed changes the training run only
MAX_NEW_TOKENS = 16


def demo_rows() -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Training rows (chat) and held-out rows (eval): disjoint draws of two-digit problems."""
    rng, seen = random.Random(DATA_SEED), set()
    train = arithmetic.problems("add", TRAIN_ROWS // 2, (2, 2), rng, seen)
    train += arithmetic.problems("sub", TRAIN_ROWS // 2, (2, 2), rng, seen)
    rng.shuffle(train)
    held_out = arithmetic.problems("add", HELD_OUT_PER_KIND, (2, 2), rng, seen)
    held_out += arithmetic.problems("sub", HELD_OUT_PER_KIND, (2, 2), rng, seen)
    return arithmetic.chat_rows(train), arithmetic.eval_rows(held_out)


def demo_config(out: Path, steps: int, seed: int = 42) -> dict[str, Any]:
    """LoRA student SmolLM2-135M-Instruct distilled from Qwen2.5-Coder-0.5B-Instruct (each
    reading its own chat template) with the plugin's defaults and CPU-safe settings."""
    train_rows, _ = demo_rows()
    data = assets.write_jsonl(train_rows, out / "arithmetic_train.jsonl")
    return {
        "base_model": str(assets.smollm2_instruct()),
        "plugins": ["axolotl_dskd.DSKDPlugin"],
        "dskd_teacher_model": str(assets.qwen_coder_instruct()),
        "dskd_teacher_chat_template": True,
        "dskd_kd_ratio": 0.5,
        "dskd_temperature": 2.0,
        "dskd_divergence": "forward_kl",
        "dskd_teacher_fit_rows": 64,
        "datasets": [
            {
                "path": str(data),
                "type": "chat_template",
                "ds_type": "json",
                "field_messages": "messages",
                "chat_template": "tokenizer_default",
            }
        ],
        "dataset_prepared_path": str(out / "prepared"),
        "output_dir": str(out / "run"),
        "sequence_len": 256,
        **LORA_SETTINGS,
        "micro_batch_size": ROWS_PER_STEP,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 5e-4,
        "lr_scheduler": "cosine",
        "warmup_steps": 3,
        "logging_steps": 1,
        "save_steps": steps,
        "val_set_size": 0,
        "seed": seed,
        **CPU_SETTINGS,
    }


def offline_env() -> dict[str, str]:
    """The environment for the Axolotl runs we start: nothing from the hub, no telemetry, no
    tokenizer threads across forks, and this venv's commands first on PATH."""
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    # fetching and converting the models: their loading bars and notes would bury the demo's lines
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    # the plugin's own lines (downloads, conversions) on the terminal, beside the demo's
    own_lines = logging.StreamHandler(sys.stdout)
    own_lines.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("axolotl_dskd").addHandler(own_lines)
    logging.getLogger("axolotl_dskd").propagate = False
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(out, args.steps, args.seed)
    config_path = out / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"axolotl-dskd demo: wrote {config_path}")
    _, held_out = demo_rows()
    held_out_chat = assets.write_jsonl(
        [arithmetic.chat(row["instruction"], row["output"]) for row in held_out], out / "held_out_chat.jsonl"
    )
    print(coverage_line(Path(config["datasets"][0]["path"])))
    if args.no_train:
        return 0
    log = out / "train.log"
    print(f"axolotl-dskd demo: training; Axolotl's and the libraries' output goes to {log}")
    trained = train_quietly(config_path, log, args.steps)
    if trained != 0:
        print(f"axolotl-dskd demo: training failed (exit {trained}); the end of {log}:")
        print("\n".join(log.read_text().splitlines()[-30:]))
        return trained
    print(fit_line(Path(config["output_dir"])))
    if args.held_out_rows:
        print(before_after(config, out, args.held_out_rows))
    print(
        "axolotl-dskd demo: does DSKD beat plain fine-tuning on these problems? "
        f"axolotl-dskd compare {config_path} --held-out {held_out_chat}"
    )
    return 0


# how often the terminal shows a training step's loss (every step goes to the log)
PROGRESS_EVERY = 8
# the plugin's lines whose content the demo prints itself, or that are tables for the log
QUIET_LINES = ("memory plan", "teacher fit before training")
LOSS_ENTRY = re.compile(r"\{'loss': '?([0-9.e+-]+|nan)'?.*?'kd_loss': '?([0-9.e+-]+|nan)'?")


def train_quietly(config_path: Path, log: Path, steps: int) -> int:
    """`axolotl train` with its whole output in `log`; the terminal keeps the plugin's own
    lines (`dskd: ...`, warnings included) and the loss every PROGRESS_EVERY steps."""
    command = ["axolotl", "train", str(config_path)]
    logged_steps, last_shown = 0, ""
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            handle.write(line)
            for piece in line.split("\r"):
                losses = LOSS_ENTRY.search(piece)
                if losses and "eval_" not in piece:
                    logged_steps += 1
                    if logged_steps % PROGRESS_EVERY == 0 or logged_steps == steps:
                        loss, kd_loss = losses.groups()
                        print(f"  step {logged_steps}/{steps}: loss {loss}, kd_loss {kd_loss}", flush=True)
                elif "] dskd: " in piece and not any(skip in piece for skip in QUIET_LINES):
                    level = "warning: " if "[WARNING]" in piece else ""
                    shown = level + piece.strip()[piece.strip().index("dskd: ") :]
                    if shown != last_shown:  # Axolotl runs its post-train hook twice
                        print("  " + shown, flush=True)
                    last_shown = shown
        return process.wait()


def coverage_line(train_data: Path) -> str:
    """How much of the training text the two tokenizers let DSKD pair up (`axolotl-dskd align`)."""
    from axolotl_dskd.commands.coverage import Aligner, summarize
    from axolotl_dskd.tokens.vocab import load_tokenizer

    student = load_tokenizer(str(assets.smollm2_instruct()))
    teacher = load_tokenizer(str(assets.qwen_coder_instruct()))
    texts = [turn["content"] for line in train_data.read_text().splitlines() for turn in json.loads(line)["messages"]]
    summary, _ = summarize(Aligner(student, teacher, "exact"), texts)
    return (
        f"axolotl-dskd demo: student and teacher tokenizers differ ({len(student):,} vs {len(teacher):,} tokens), "
        f"so DSKD runs across tokenizers; on the training text {summary['student_aligned_fraction']:.0%} of "
        f"student tokens have a teacher token covering the same bytes"
    )


def fit_line(run_dir: Path) -> str:
    """The pre-flight teacher-fit verdict the training run recorded."""
    fit = json.loads((run_dir / FIT_RECORD).read_text())
    verdict = "fits the data" if fit["fits"] else "does NOT fit the data (see the WARNING above)"
    return (
        f"\naxolotl-dskd demo: before training the teacher {verdict}: teacher_acc {fit['teacher_acc']:.2f}, "
        f"teacher_ce {fit['teacher_ce']:.3f} vs the untrained student's {fit['student_ce']:.3f} "
        f"({fit['rows']} training rows)"
    )


def before_after(config: dict[str, Any], out: Path, rows: int) -> str:
    """The student before and after, and the teacher, on held-out problems never trained
    on: greedy answers, accuracy % (the last number of the answer is the result)."""
    from axolotl_dskd.commands.evaluate import evaluate, greedy_settings

    _, held_out = demo_rows()
    data = assets.write_jsonl(held_out[:rows], out / "held_out.jsonl")
    models = {
        "student before (SmolLM2-135M-Instruct)": (config["base_model"], None),
        f"student after (DSKD, LoRA, {config['max_steps']} steps)": (config["base_model"], config["output_dir"]),
        "teacher (Qwen2.5-Coder-0.5B-Instruct)": (config["dskd_teacher_model"], None),
    }
    lines = [f"\nheld-out arithmetic ({min(rows, len(held_out))} problems never trained on), greedy, accuracy %:"]
    for label, (model, adapter) in models.items():
        settings = greedy_settings(
            model=model,
            adapter=adapter,
            data=str(data),
            task="gsm",
            prompt_format="chat",
            prompt_field="instruction",
            answer_field="answer",
            max_new_tokens=MAX_NEW_TOKENS,
            batch_size=25,
            predictions=str(out / f"held_out-{label.split(' (')[0].replace(' ', '_')}.jsonl"),
        )
        lines.append(f"  {label:<42} {evaluate(settings)['accuracy']:6.1f}")
    lines.append(
        "The student learned the task from the training rows and the teacher's distributions, across two\n"
        "tokenizers. Whether the teacher adds anything beyond the rows themselves (DSKD vs plain SFT on\n"
        "the same rows and seeds): the compare command below, and docs/results.md."
    )
    return "\n".join(lines)
