"""The dataset formats users start from (Axolotl's own examples and format docs), each an
`axolotl train` with the plugin on the tiny pair: every run distils (the DSKD terms are
logged and finite) and reports which vocabulary mode it chose.

Tokens a config adds (`tokens:`, `special_tokens`) give the student ids the teacher's
embedding does not have: such runs go the cross-tokenizer way (the teacher reads the
added tokens as text), except a pad token alone, which the teacher reads as its own pad.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from axolotl_dskd.assets.fetch import gsm_symbolic_rows, write_jsonl
from tests.tiny import base_config, log_history, lora, run_cli

pytestmark = pytest.mark.e2e

THINK = ["<think>", "</think>"]
# Axolotl needs the embeddings trained when a LoRA run adds tokens
ADDS_TOKENS = {"lora_modules_to_save": ["embed_tokens", "lm_head"]}
SHARED = "dskd: teacher and student share one vocabulary"
ADDED_AS_TEXT = "added by the config ({}); the teacher reads them as text: cross-tokenizer DSKD"
CROSS = "dskd: teacher and student tokenizers differ: cross-tokenizer DSKD"


def _rows() -> list[dict[str, str]]:
    return gsm_symbolic_rows(size=24, seed=99)


def _write(rows: list[dict[str, Any]], folder: Path, name: str) -> str:
    return str(write_jsonl(rows, folder / f"{name}.jsonl"))


def _messages(row: dict[str, str], think: bool = False) -> list[dict[str, str]]:
    reply = f"<think>{row['output'][:40]}</think>{row['output']}" if think else row["output"]
    return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": reply}]


def alpaca(folder: Path) -> tuple[list[dict], dict]:
    return [{"path": _write(_rows(), folder, "alpaca"), "type": "alpaca", "ds_type": "json"}], {}


def alpaca_phi(folder: Path) -> tuple[list[dict], dict]:
    return [{"path": _write(_rows(), folder, "alpaca"), "type": "alpaca:phi", "ds_type": "json"}], {}


def alpaca_train_on_inputs(folder: Path) -> tuple[list[dict], dict]:
    return alpaca(folder)[0], {"train_on_inputs": True}


def alpaca_eval_split(folder: Path) -> tuple[list[dict], dict]:
    return alpaca(folder)[0], {"val_set_size": 0.25, "eval_steps": 2}


def completion(folder: Path) -> tuple[list[dict], dict]:
    rows = [{"text": f"{row['instruction']}\n{row['output']}"} for row in _rows()]
    return [{"path": _write(rows, folder, "completion"), "type": "completion", "ds_type": "json"}], {}


def input_output(folder: Path) -> tuple[list[dict], dict]:
    """Template-free: labelled segments, only the `label: true` ones trained."""
    segments = [
        [{"label": False, "text": f"Q: {row['instruction']}\nA: "}, {"label": True, "text": row["output"]}]
        for row in _rows()
    ]
    rows = [{"segments": row} for row in segments]
    return [{"path": _write(rows, folder, "segments"), "type": "input_output", "ds_type": "json"}], {}


def chat_tokenizer_template(folder: Path) -> tuple[list[dict], dict]:
    rows = [{"messages": _messages(row)} for row in _rows()]
    dataset = {"path": _write(rows, folder, "chat"), "type": "chat_template", "ds_type": "json"}
    return [dataset], {"chat_template": "tokenizer_default"}


def chat_llama3_style(folder: Path) -> tuple[list[dict], dict]:
    """Axolotl's llama-3 instruct example: its template, a pad token the tokenizer lacks,
    the turn end as EOS, assistant turns and their EOS trained."""
    rows = [{"messages": _messages(row)} for row in _rows()]
    dataset = {
        "path": _write(rows, folder, "chat"),
        "type": "chat_template",
        "ds_type": "json",
        "field_messages": "messages",
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
    }
    special = {"pad_token": "<|end_of_text|>", "eos_token": "<|eot_id|>"}
    return [dataset], {"chat_template": "llama3", "special_tokens": special} | ADDS_TOKENS


def chat_gemma3_style(folder: Path) -> tuple[list[dict], dict]:
    """ShareGPT-style `from`/`value` turns under the gemma3 template."""
    rows = [
        {"conversations": [{"from": "human", "value": row["instruction"]}, {"from": "gpt", "value": row["output"]}]}
        for row in _rows()
    ]
    dataset = {
        "path": _write(rows, folder, "sharegpt"),
        "type": "chat_template",
        "ds_type": "json",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
    }
    return [dataset], {"chat_template": "gemma3"}


def chat_with_think_tokens(folder: Path) -> tuple[list[dict], dict]:
    """The reasoning-style config: `<think>` tokens added and present in every reply."""
    rows = [{"messages": _messages(row, think=True)} for row in _rows()]
    dataset = {"path": _write(rows, folder, "think"), "type": "chat_template", "ds_type": "json"}
    return [dataset], {"tokens": THINK} | ADDS_TOKENS


def chat_mixtral_style(folder: Path) -> tuple[list[dict], dict]:
    """Axolotl's mixtral example: chatml with `<|im_end|>` as a new EOS and `<|im_start|>`
    added, packed."""
    rows = [{"messages": _messages(row)} for row in _rows()]
    dataset = {"path": _write(rows, folder, "chat"), "type": "chat_template", "ds_type": "json"}
    extra = {"chat_template": "chatml", "special_tokens": {"eos_token": "<|im_end|>"}, "tokens": ["<|im_start|>"]}
    return [dataset], extra | ADDS_TOKENS | {"sample_packing": True, "sequence_len": 256}


def chat_added_pad_only(folder: Path) -> tuple[list[dict], dict]:
    rows = [{"messages": _messages(row)} for row in _rows()]
    dataset = {"path": _write(rows, folder, "chat"), "type": "chat_template", "ds_type": "json"}
    return [dataset], {"special_tokens": {"pad_token": "<|end_of_text|>"}}


# (format, teacher, the vocabulary line the run must log); plain alpaca runs in test_e2e.py, and
# across tokenizers the formats whose text the collator rebuilds differently (segments, templates, eval)
CASES = [
    (alpaca_phi, "same", SHARED),
    (alpaca_train_on_inputs, "same", SHARED),
    (alpaca_eval_split, "cross", CROSS),
    (completion, "same", SHARED),
    (input_output, "same", SHARED),
    (input_output, "cross", CROSS),
    (chat_tokenizer_template, "same", SHARED),
    (chat_gemma3_style, "same", SHARED),
    (chat_gemma3_style, "cross", CROSS),
    (chat_llama3_style, "same", ADDED_AS_TEXT.format("<|eot_id|>, <|end_of_text|>")),
    (chat_with_think_tokens, "same", ADDED_AS_TEXT.format("<think>, </think>")),
    (chat_mixtral_style, "same", ADDED_AS_TEXT.format("<|im_end|>, <|im_start|>")),
    (chat_added_pad_only, "same", "the teacher reads its own pad"),
]


# what differs between Axolotl releases (chat templates, added tokens, template-free
# segments) runs on each in CI; the rest on the oldest supported release
EVERY_RELEASE = (input_output, chat_tokenizer_template, chat_gemma3_style, chat_llama3_style, chat_with_think_tokens)
EVERY_RELEASE += (chat_mixtral_style, chat_added_pad_only)


@pytest.mark.parametrize(
    ("dataset_format", "teacher", "vocabulary_line"),
    [
        pytest.param(*case, marks=[pytest.mark.every_release] if case[0] in EVERY_RELEASE and case[1] == "same" else [])
        for case in CASES
    ],
    ids=[f"{case[0].__name__}-{case[1]}" for case in CASES],
)
def test_format_trains_with_the_dskd_terms(tiny, tmp_path, dataset_format, teacher: str, vocabulary_line: str) -> None:
    datasets, extra = dataset_format(tmp_path)
    teacher_dir = tiny.teacher if teacher == "same" else tiny.cross_teacher
    cfg = lora(base_config(tiny.student, teacher_dir, tiny.data, tmp_path)) | extra
    cfg |= {"datasets": datasets, "max_steps": 3, "save_steps": 3, "dskd_teacher_fit_rows": 8}
    result = run_cli(["axolotl", "train"], cfg, tmp_path)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-6000:]
    assert vocabulary_line in logs
    history = log_history(Path(cfg["output_dir"]))
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert all(math.isfinite(entry[key]) for key in ("loss", "ce_loss", "kd_loss", "s2t_kd_loss", "t2s_ce_loss"))
        assert entry["kd_loss"] > 0
    if "val_set_size" in extra:
        assert any("eval_kd_loss" in entry for entry in history)
    assert (Path(cfg["output_dir"]) / "dskd_projector.safetensors").is_file()
    assert json.loads((Path(cfg["output_dir"]) / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_think_tokens_on_the_real_pair(tmp_path) -> None:
    """SmolLM2-135M-Instruct teaching its first 8 layers, `<think>` tokens added: the
    reasoning-style config that crashed the teacher's embedding before."""
    from axolotl_dskd.assets import fetch as assets

    teacher = assets.smollm2_instruct()
    student = assets.truncated_copy(teacher, assets.CUT_STUDENT_LAYERS)
    datasets, extra = chat_with_think_tokens(tmp_path)
    cfg = lora(base_config(student, teacher, tmp_path, tmp_path)) | extra
    cfg |= {"datasets": datasets, "sequence_len": 256, "max_steps": 2, "save_steps": 2, "dskd_teacher_fit_rows": 4}
    result = run_cli(["axolotl", "train"], cfg, tmp_path)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-6000:]
    assert ADDED_AS_TEXT.format("<think>, </think>") in logs
    logged = [entry for entry in log_history(Path(cfg["output_dir"])) if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["loss"]) and entry["kd_loss"] > 0 for entry in logged)
    assert all(0.5 < entry["align_ratio"] <= 1.0 for entry in logged)
