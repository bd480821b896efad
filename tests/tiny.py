"""Tiny local models over a real-text BPE tokenizer, built in seconds, no hub access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from axolotl_dskd.assets.fetch import gsm_symbolic_rows, write_jsonl

EOS = "<|endoftext|>"
STUDENT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### User:\n{{ m['content'] }}\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
)
TEACHER_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]\n"
    "{% else %}{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
)


def build_tokenizer(
    texts: list[str], out_dir: Path, vocab_size: int = 800, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, saved as a normal HF tokenizer folder."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_llama(
    out_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    hidden: int,
    layers: int,
    seed: int,
    extra_rows: int = 0,
    train_on: list[str] | None = None,
    context: int = 1024,
) -> LlamaForCausalLM:
    """A Llama with an untied head (so head and body gradients can be told apart),
    random or briefly trained on `train_on`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    if train_on:
        pretrain(model, tokenizer, train_on, steps=2 * len(train_on))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: list[str], steps: int) -> None:
    """A few hundred milliseconds of LM training, so the teacher has real, peaked predictions."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    encoded = [tokenizer(text, return_tensors="pt")["input_ids"][:, :128] for text in texts]
    model.train()
    for step in range(steps):
        ids = encoded[step % len(encoded)]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def base_config(student: Path, teacher: Path, data: Path, out: Path) -> dict[str, Any]:
    """A CPU Axolotl config for the tiny pair; tests override what they exercise."""
    return {
        "base_model": str(student),
        "plugins": ["axolotl_dskd.DSKDPlugin"],
        "dskd_teacher_model": str(teacher),
        "datasets": [{"path": str(data), "type": "alpaca", "ds_type": "json"}],
        "dataset_prepared_path": str(out / "prepared"),
        "output_dir": str(out / "run"),
        "sequence_len": 512,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 8,
        "learning_rate": 0.002,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch",
        "logging_steps": 1,
        "save_steps": 4,
        "val_set_size": 0,
        "seed": 7,
        "bf16": False,
        "fp16": False,
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "dataloader_num_workers": 0,
        "save_safetensors": True,
    }


def lora(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg | {"adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_linear": True}


def run_cli(args: list[str], cfg: dict[str, Any], workdir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Write `cfg` to workdir/cfg.yml and run `args + [cfg.yml]` (e.g. ['axolotl', 'train'])."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [*args, str(path)], cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def train(args: list[str], cfg: dict[str, Any], workdir: Path) -> Path:
    """Run `args` on `cfg` (which must succeed) and return its output_dir."""
    result = run_cli(args, cfg, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return Path(cfg["output_dir"])


def refused(args: list[str], cfg: dict[str, Any], workdir: Path) -> str:
    """Run `args` on `cfg`, which must fail; return what it wrote to stderr."""
    result = run_cli(args, cfg, workdir)
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stderr


def log_history(run_dir: Path) -> list[dict]:
    """The trainer's log history, from the run's last checkpoint."""
    last = max(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def gsm_texts_and_data(out_dir: Path, size: int) -> tuple[list[str], Path, Path]:
    """Texts for tokenizer training, an alpaca file and a chat (messages) file of the same rows."""
    rows = gsm_symbolic_rows(size=size, seed=1234)
    texts = [row["instruction"] + "\n" + row["output"] for row in rows]
    chats = [
        {"messages": [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]}
        for row in rows
    ]
    return texts, write_jsonl(rows, out_dir / "gsm.jsonl"), write_jsonl(chats, out_dir / "gsm_chat.jsonl")


def build_lora(base: Path, out_dir: Path, target_modules: list[str], seed: int) -> Path:
    """A LoRA adapter saved like a stage-1 run's output_dir, with random (non-zero) B
    matrices so that it visibly changes the model it adapts."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir
