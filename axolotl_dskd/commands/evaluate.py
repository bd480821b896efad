"""`axolotl-dskd eval`: generate answers to held-out prompts with a (distilled) model and
score them, so users can compare students trained with and without distillation.

Scores, per row, averaged:
- `rouge`: ROUGE-L F1 x 100 against the reference answer (the `rouge-score` package, as
  the DSKD papers report it);
- `exact_match`: 100 if the final answers match after normalisation (the text after the
  last '####' when there is one, else the last non-empty line; case and spaces ignored);
- `gsm`: reasoning-gym's GSM-Symbolic scorer on the final answer (1.0 right number, 0.01 a
  wrong one, 0 none) x 100, plus `accuracy`, the share of right numbers.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

TASKS = ("rouge", "exact_match", "gsm")
PROMPT_FORMATS = ("alpaca", "chat", "raw")


@dataclass(frozen=True)
class EvalRow:
    instruction: str
    context: str  # alpaca's optional `input`
    reference: str


def read_rows(path: Path, prompt_field: str, input_field: str, answer_field: str, limit: int | None) -> list[EvalRow]:
    """JSON lines with a prompt, an optional input and a reference answer per row."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for field in (prompt_field, answer_field):
        missing = [index for index, row in enumerate(rows) if field not in row]
        if missing:
            raise ValueError(f"--data {path}: field {field!r} missing in {len(missing)} rows (first: row {missing[0]})")
    return [EvalRow(row[prompt_field], row.get(input_field) or "", str(row[answer_field])) for row in rows][:limit]


def render(row: EvalRow, prompt_format: str, tokenizer: Any) -> str:
    """The text the model continues: Axolotl's own alpaca template (what `type: alpaca`
    trains on), the tokenizer's chat template, or the prompt as is."""
    instruction, context = row.instruction, row.context
    if prompt_format == "alpaca":
        from axolotl.prompters import AlpacaPrompter

        return next(iter(AlpacaPrompter().build_prompt(instruction, context or None)))
    text = f"{instruction}\n\n{context}" if context else instruction
    if prompt_format == "chat":
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def final_answer(text: str) -> str:
    """The text after the last '####', else the last non-empty line, normalised."""
    answer = (
        text.rsplit("####", 1)[1]
        if "####" in text
        else next((line for line in reversed(text.splitlines()) if line.strip()), "")
    )
    return re.sub(r"\s+", " ", answer).strip().lower()


def score(task: str, prediction: str, reference: str) -> float:
    """One row's score in [0, 100]."""
    if task == "rouge":
        return 100.0 * _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure
    if task == "exact_match":
        return 100.0 * float(final_answer(prediction) == final_answer(reference))
    predicted = final_answer(prediction) if "####" in prediction else _last_number(prediction)
    return 100.0 * _gsm_scorer().score_answer(predicted, {"answer": final_answer(reference)})


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    """One scorer for every row (each new one logs "Using default tokenizer.")."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


@lru_cache(maxsize=1)
def _gsm_scorer() -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0)


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    return numbers[-1] if numbers else None


def load_model(model_dir: str, adapter_dir: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval(), tokenizer


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompts: list[str], settings: dict[str, Any], batch_size: int, progress: bool = True
) -> list[str]:
    """Continuations of `prompts`, batch by batch, left-padded, with a progress bar unless
    `progress` is off."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad_id
    answers = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", disable=not progress):
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        output = model.generate(**batch, pad_token_id=pad_id, **settings)
        answers += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def greedy_settings(**fields: Any) -> argparse.Namespace:
    """`evaluate`'s arguments for greedy answers over a whole file, as the demo and compare
    run it (the fields each caller names, the rest fixed)."""
    fixed = {"input_field": "input", "limit": None, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 42}
    return argparse.Namespace(**(fixed | {"dtype": "float32", "progress": False} | fields))


def evaluate(args: Any) -> dict[str, Any]:
    """Generate, score and summarise; returns the JSON-ready summary."""
    rows = read_rows(Path(args.data), args.prompt_field, args.input_field, args.answer_field, args.limit)
    model, tokenizer = load_model(args.model, args.adapter, getattr(torch, args.dtype))
    torch.manual_seed(args.seed)
    sampling = args.temperature > 0
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": sampling}
    if sampling:
        settings |= {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    prompts = [render(row, args.prompt_format, tokenizer) for row in rows]
    predictions = generate(model, tokenizer, prompts, settings, args.batch_size, getattr(args, "progress", True))
    scores = [score(args.task, p, row.reference) for p, row in zip(predictions, rows, strict=True)]
    summary: dict[str, Any] = {
        "task": args.task,
        "score": sum(scores) / max(len(scores), 1),
        "n": len(scores),
        "model": args.model,
        "adapter": args.adapter,
        "data": args.data,
        "decoding": "sample" if sampling else "greedy",
    }
    if args.task == "gsm":
        summary["accuracy"] = 100.0 * sum(value == 100.0 for value in scores) / max(len(scores), 1)
    if args.predictions:
        lines = [
            json.dumps({"prompt": prompt, "prediction": p, "reference": row.reference, "score": s})
            for prompt, p, row, s in zip(prompts, predictions, rows, scores, strict=True)
        ]
        Path(args.predictions).write_text("\n".join(lines) + "\n")
    return summary
