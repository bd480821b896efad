"""The `axolotl-dskd` command: `demo` (a real distillation on the embedded default pair),
`align` (how much of a text a tokenizer pair can distill), `eval` (score a student on
held-out rows), `teacher-fit` (does the teacher fit the training data) and `cache-teacher`
(run the teacher once, train from its stored rows)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def demo(args: argparse.Namespace) -> int:
    from axolotl_dskd.commands.demo import run

    return run(args)


def add_demo_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="distill Qwen2.5-Coder-0.5B-Instruct into SmolLM2-135M-Instruct (two tokenizers) on CPU"
    )
    parser.add_argument("--out", default="outputs/demo", help="where the config, data and run go")
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps (8 rows each; 96 rows = 12 steps)")
    parser.add_argument("--seed", type=int, default=42, help="the training run's seed (the rows stay the same)")
    parser.add_argument("--no-train", action="store_true", help="only fetch assets and write the config")
    parser.add_argument(
        "--held-out-rows", type=int, default=50, help="held-out problems for the before/after table (0 = none)"
    )
    parser.set_defaults(handler=demo)


def align(args: argparse.Namespace) -> int:
    from axolotl_dskd.commands.coverage import Aligner, load_named_tokenizer, read_texts, summarize

    texts = read_texts(Path(args.data), args.field)
    aligner = Aligner(
        load_named_tokenizer(args.student_tokenizer), load_named_tokenizer(args.teacher_tokenizer), args.alignment
    )
    summary, aligned = summarize(aligner, texts)
    if args.json:
        print(json.dumps(summary))
        return 0
    pair = f"student {args.student_tokenizer} vs teacher {args.teacher_tokenizer}"
    print(f"{pair}, {args.alignment} alignment, {len(texts)} texts")
    print(f"  student tokens aligned: {summary['student_aligned_fraction']:.1%} of {summary['n_student_tokens']}")
    print(f"  teacher tokens aligned: {summary['teacher_aligned_fraction']:.1%} of {summary['n_teacher_tokens']}")
    print(f"  shared vocabulary (identical bytes): {summary['shared_vocab_size']} tokens")
    for item in aligned[: args.examples]:
        print("\n--- example (unaligned student tokens in ⟦⟧) ---")
        print(aligner.render(item)[:600])
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from axolotl_dskd.commands.evaluate import evaluate as run_eval

    summary = run_eval(args)
    label = f"{args.model}" + (f" + {args.adapter}" if args.adapter else "")
    print(
        f"\n{'model':<50} {'task':<12} {'n':>5} {'score':>8}" + (f" {'accuracy':>9}" if "accuracy" in summary else "")
    )
    line = f"{label[-50:]:<50} {args.task:<12} {summary['n']:>5} {summary['score']:>8.2f}"
    print(line + (f" {summary['accuracy']:>8.1f}%" if "accuracy" in summary else ""))
    print(json.dumps(summary))
    return 0


def teacher_fit(args: argparse.Namespace) -> int:
    """Load the config, data, student and teacher exactly as `axolotl train` would, score
    both on the first training rows, and stop before training."""
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer

    from axolotl_dskd.integration.fit_check import measure_teacher_fit
    from axolotl_dskd.integration.plugin_entry import plugin_problem_in

    problem = plugin_problem_in(args.config)
    if problem:
        print(f"teacher-fit: {args.config}: {problem}")
        return 2
    cfg = load_cfg(args.config)
    if not cfg.get("dskd_teacher_model"):
        print(f"teacher-fit: {args.config} has no dskd_teacher_model (is axolotl_dskd.DSKDPlugin in plugins?)")
        return 2
    rows = args.rows if args.rows is not None else (cfg.dskd_teacher_fit_rows or 64)
    trainer, *_ = setup_model_and_trainer(cfg, load_datasets(cfg=cfg, cli_args=TrainerCliArgs()))
    fit = measure_teacher_fit(trainer, trainer.model, rows)
    print(fit.table())
    for line in (fit.warning(), fit.note()):
        if line:
            print(line)
    print(fit.to_json())
    return 0


def cache_teacher(args: argparse.Namespace) -> int:
    from axolotl_dskd.commands.cache_teacher import cache_teacher as build

    return build(args)


def add_cache_teacher_parser(commands: Any) -> None:
    parser = commands.add_parser("cache-teacher", help="run the teacher once and store what DSKD reads of it")
    parser.add_argument("config", help="the Axolotl YAML of the DSKD run")
    parser.add_argument("--out", help="cache folder (default: the config's dskd_teacher_cache)")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), help="storage dtype (default: dskd_teacher_cache_dtype)"
    )
    parser.add_argument("--batch-size", type=int, help="rows per teacher forward (default: micro_batch_size)")
    parser.add_argument("--shard-rows", type=int, default=1024, help="rows per shard file")
    parser.add_argument(
        "--verify", action="store_true", help="check every shard of the built cache against its digest, build nothing"
    )
    parser.set_defaults(handler=cache_teacher)


def plan(args: argparse.Namespace) -> int:
    from axolotl_dskd.commands.plan import plan_command

    return plan_command(args)


def add_plan_parser(commands: Any) -> None:
    parser = commands.add_parser("plan", help="memory per component on one GPU, from the YAML alone (no weights read)")
    parser.add_argument("config", help="the Axolotl YAML of the DSKD run")
    parser.add_argument("--gpu-memory", help="memory of one GPU, e.g. 24GiB; says whether the run fits (exit 1 if not)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the run shares ZeRO/FSDP state over (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: components, total, fits")
    parser.set_defaults(handler=plan)


def add_eval_parser(commands: Any) -> None:
    from axolotl_dskd.commands.evaluate import PROMPT_FORMATS, TASKS

    parser = commands.add_parser("eval", help="generate answers for held-out prompts and score them")
    parser.add_argument("--model", required=True, help="model dir or hub id (a full fine-tune or the base model)")
    parser.add_argument("--adapter", help="LoRA/QLoRA adapter dir from a run's output_dir")
    parser.add_argument("--data", required=True, help=".jsonl rows with a prompt and a reference answer")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="alpaca", help="how the prompt is rendered")
    parser.add_argument("--prompt-field", default="instruction")
    parser.add_argument("--input-field", default="input", help="alpaca's optional context field")
    parser.add_argument("--answer-field", default="output")
    parser.add_argument("--limit", type=int, help="first N rows only")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--predictions", help="also write every prompt, prediction and score to this .jsonl")
    parser.set_defaults(handler=evaluate)


def add_compare_parser(commands: Any) -> None:
    from axolotl_dskd.commands.compare import add_compare_parser as add

    add(commands)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="axolotl-dskd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(commands)
    align_parser = commands.add_parser("align", help="how much of a text a tokenizer pair can distill")
    align_parser.add_argument(
        "--student-tokenizer", required=True, help="dir, hub id, or gpt-2|llama-spm|qwen2|smollm2"
    )
    align_parser.add_argument(
        "--teacher-tokenizer", required=True, help="dir, hub id, or gpt-2|llama-spm|qwen2|smollm2"
    )
    align_parser.add_argument("--data", required=True, help=".jsonl rows or a plain text file")
    align_parser.add_argument("--field", default="text", help="jsonl field holding the text")
    align_parser.add_argument("--alignment", choices=("exact", "eta_strict"), default="exact")
    align_parser.add_argument("--examples", type=int, default=3, help="rendered examples to print")
    align_parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    align_parser.set_defaults(handler=align)
    add_eval_parser(commands)
    add_compare_parser(commands)
    fit_parser = commands.add_parser("teacher-fit", help="score teacher and student on training rows, no training")
    fit_parser.add_argument("config", help="the Axolotl YAML of the DSKD run")
    fit_parser.add_argument("--rows", type=int, help="training rows to score (default: dskd_teacher_fit_rows or 64)")
    fit_parser.set_defaults(handler=teacher_fit)
    add_cache_teacher_parser(commands)
    add_plan_parser(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
