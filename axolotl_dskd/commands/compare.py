"""`axolotl-dskd compare cfg.yml`: does distillation beat plain fine-tuning on *my* data?

From the user's own DSKD YAML: hold out rows (the last N of the dataset, or a file of its
own), train the config as written (DSKD) and the same config without the plugin (SFT), and
optionally vanilla KD, on identical rows, order and seed, for one or more seeds; score every
arm and the untrained student on the held-out rows; print one table with each arm's gap to
SFT and a paired bootstrap interval over the held-out rows, and a plain verdict. Each
arm-seed's record is written when it finishes, so a killed compare continues where it was.

The default score is the held-out cross-entropy of the reference answers (the trained
tokens of each held-out row, as Axolotl tokenizes them for training): it needs no
generation and suits any dataset `type:`. `--task rouge|exact_match|gsm` generates greedy
answers instead (`axolotl-dskd eval`'s scorers) for rows with a prompt and an answer field.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.commands.demo import offline_env
from axolotl_dskd.commands.paired import paired_gap, verdict
from axolotl_dskd.integration.plugin_entry import names_dskd_plugin

# Below this many held-out rows a bootstrap interval over the rows says little: its
# percentiles rest on too few distinct values (and a ROUGE or CE difference of one row moves
# the mean by several percent). 50 is also what our own quality rounds used per held-out set.
MIN_HELD_OUT_ROWS = 50
ARMS = ("dskd", "sft", "vanilla_kd")
TASKS = ("ce", "rouge", "exact_match", "gsm")
# compare's flags that a generated task hands to `axolotl-dskd eval` as they are
GENERATION_ARGS = ("task", "prompt_format", "prompt_field", "input_field", "answer_field", "max_new_tokens")


class CompareError(ValueError):
    """A comparison that would not be fair or could not be read: one line, before training."""


@dataclass(frozen=True)
class Split:
    """The training rows and the held-out rows, as files, with the held-out content hashes."""

    train: Path
    held_out: Path
    held_out_hashes: list[str]


def row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]


def read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def checked_config(raw: Any) -> dict[str, Any]:
    """The DSKD YAML, refused (one line each) where its SFT twin could not be the same run."""
    if not isinstance(raw, dict) or not any(names_dskd_plugin(str(entry)) for entry in raw.get("plugins") or []):
        raise CompareError("compare: the config has no axolotl_dskd.DSKDPlugin in `plugins:`; give the DSKD config")
    datasets = raw.get("datasets") or []
    if len(datasets) != 1 or not Path(str(datasets[0].get("path", ""))).is_file():
        first = datasets[0].get("path") if datasets else None
        raise CompareError(
            "compare: datasets: compare splits its held-out rows off one local .json/.jsonl dataset; "
            f"this config has {len(datasets)} dataset(s), the first at {first!r}"
        )
    if "axolotl_dskd" in str(datasets[0].get("type", "")):
        raise CompareError(
            f"compare: datasets[0].type {datasets[0]['type']!r} is the plugin's own strategy, which plain SFT "
            "cannot use; write the dataset's own type (the plugin sets its strategy itself)"
        )
    for key in ("resume_from_checkpoint", "test_datasets"):
        if raw.get(key):
            raise CompareError(f"compare: {key}: every arm must start from the same place; remove it")
    return raw


def split_rows(cfg: dict[str, Any], out: Path, held_out_last: int | None, held_out_file: Path | None) -> Split:
    """Held-out rows removed from training for every arm, recorded by content hash."""
    rows = read_rows(Path(cfg["datasets"][0]["path"]))
    if held_out_file is not None:
        held_out = read_rows(held_out_file)
        train = rows
        training = {row_hash(row) for row in train}
        shared = [index for index, row in enumerate(held_out) if row_hash(row) in training]
        if shared:
            raise CompareError(
                f"compare: {len(shared)} held-out rows of {held_out_file} are also in the training data (first: "
                f"row {shared[0]}); a score on rows the arms trained on says nothing: remove them"
            )
    else:
        count = held_out_last or 0
        held_out, train = rows[len(rows) - count :], rows[: len(rows) - count]
    if len(held_out) < MIN_HELD_OUT_ROWS:
        raise CompareError(
            f"compare: {len(held_out)} held-out rows are too few for the paired interval to mean anything; "
            f"use at least {MIN_HELD_OUT_ROWS} (--held-out-last N or --held-out FILE)"
        )
    if not train:
        raise CompareError("compare: no training rows are left once the held-out rows are removed")
    return Split(
        write_rows(train, out / "data" / "train.jsonl"),
        write_rows(held_out, out / "data" / "held_out.jsonl"),
        [row_hash(row) for row in held_out],
    )


def arm_config(cfg: dict[str, Any], arm: str, seed: int, split: Split, out: Path) -> dict[str, Any]:
    """One arm's config: the user's, on the training rows, with the arm's loss and seed."""
    run = cfg | {
        "datasets": [cfg["datasets"][0] | {"path": str(split.train)}],
        "seed": seed,
        "output_dir": str(out / "runs" / f"{arm}-s{seed}"),
        "dataset_prepared_path": str(out / "prepared" / arm),
        "auto_resume_from_checkpoints": True,  # a killed compare continues the run it was in
    }
    if arm == "sft":
        plugins = [entry for entry in cfg.get("plugins") or [] if not names_dskd_plugin(str(entry))]
        run = {key: value for key, value in run.items() if not key.startswith("dskd_") and key != "plugins"}
        return run | ({"plugins": plugins} if plugins else {})
    if arm == "vanilla_kd":
        return run | {"dskd_method": "vanilla_kd"}
    return run


def train(cfg: dict[str, Any], path: Path) -> tuple[float, float | None]:
    """`axolotl train` on `cfg` (its whole output in a log beside the config); wall seconds
    and the peak GPU memory Axolotl logged (None on a CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = path.with_suffix(".log")
    started = time.monotonic()
    with log.open("w") as handle:
        command = ["axolotl", "train", str(path)]
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=offline_env()).returncode
    seconds = time.monotonic() - started
    if code != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise CompareError(f"compare: training {path.stem} failed (exit {code}): {tail[0][:300]}; log: {log}")
    checkpoints = sorted(Path(cfg["output_dir"]).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"] if checkpoints else []
    peaks = [entry.get("memory/max_allocated (GiB)", 0) for entry in history]
    return seconds, (max(peaks) if peaks and max(peaks) > 0 else None)


def held_out_ce(cfg: dict[str, Any], split: Split, out: Path, model: str, adapter: str | None) -> list[float] | None:
    """Each held-out row's mean cross-entropy on its trained tokens, tokenized as the SFT
    arm's training tokenizes (Axolotl's own dataset loading, in row order)."""
    import torch

    from axolotl_dskd.commands.evaluate import load_model

    rows = tokenized_held_out(cfg, split, out)
    network, _ = load_model(model, adapter, torch.float32)
    if max(max(row["input_ids"]) for row in rows) >= network.get_input_embeddings().weight.shape[0]:
        return None  # the untrained student has no embedding for the tokens the config adds
    losses = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            logits = network(input_ids=ids).logits[:, :-1].float()
            losses.append(float(torch.nn.functional.cross_entropy(logits[0], labels[0, 1:], ignore_index=-100)))
    return losses


def tokenized_held_out(cfg: dict[str, Any], split: Split, out: Path) -> list[dict[str, list[int]]]:
    """The held-out rows through Axolotl's loading of the SFT config (no packing, no shuffle,
    nothing held back), cached in the compare's folder."""
    cached = out / "data" / "held_out_tokenized.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    settings = arm_config(cfg, "sft", 0, Split(split.held_out, split.held_out, []), out)
    settings |= {
        "sample_packing": False,
        "shuffle_merged_datasets": False,
        "val_set_size": 0,
        "dataset_prepared_path": str(out / "prepared" / "held_out"),
    }
    path = out / "configs" / "held_out.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    logging.disable(logging.WARNING)  # Axolotl logs its loading; the compare's own lines stay readable
    try:
        with (out / "configs" / "held_out.log").open("w") as log, contextlib.redirect_stdout(log):
            dataset = load_datasets(cfg=load_cfg(str(path)), cli_args=TrainerCliArgs()).train_dataset
    finally:
        logging.disable(logging.NOTSET)
    rows = [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in dataset]
    if len(rows) != len(split.held_out_hashes):
        raise CompareError(
            f"compare: Axolotl kept {len(rows)} of the {len(split.held_out_hashes)} held-out rows (too long for "
            "sequence_len, or without a trained token); shorten them or raise sequence_len"
        )
    cached.write_text(json.dumps(rows))
    return rows


def generated_scores(args: argparse.Namespace, split: Split, out: Path, label: str, model: str, adapter: str | None):
    """Each held-out row's score from greedy answers (`axolotl-dskd eval`'s tasks)."""
    from axolotl_dskd.commands.evaluate import evaluate, greedy_settings

    predictions = out / "predictions" / f"{label}.jsonl"
    predictions.parent.mkdir(parents=True, exist_ok=True)
    passed = {name: getattr(args, name) for name in GENERATION_ARGS} | {"predictions": str(predictions)}
    settings = greedy_settings(model=model, adapter=adapter, data=str(split.held_out), batch_size=8, **passed)
    evaluate(settings)
    return [json.loads(line)["score"] for line in predictions.read_text().splitlines()]


def scores(args, cfg, split: Split, out: Path, label: str, model: str, adapter: str | None) -> list[float]:
    if args.task == "ce":
        return held_out_ce(cfg, split, out, model, adapter)
    return generated_scores(args, split, out, label, model, adapter)


def record_path(out: Path, label: str) -> Path:
    return out / "records" / f"{label}.json"


def run_arm(args, cfg: dict[str, Any], split: Split, out: Path, arm: str, seed: int) -> dict[str, Any]:
    """Train and score one arm-seed, reading what an earlier compare already finished: its
    training (kept across tasks) and its scores on this task."""
    label = f"{arm}-s{seed}"
    run = arm_config(cfg, arm, seed, split, out)
    trained_path = record_path(out, f"train-{label}")
    if not trained_path.exists():
        seconds, peak = train(run, out / "configs" / f"{label}.yml")
        trained_path.parent.mkdir(parents=True, exist_ok=True)
        trained_path.write_text(json.dumps({"train_seconds": seconds, "peak_gib": peak}))
    trained = json.loads(trained_path.read_text())
    scored_path = record_path(out, f"{args.task}-{label}")
    if not scored_path.exists():
        adapter = run["output_dir"] if run.get("adapter") in ("lora", "qlora") else None
        model = run["base_model"] if adapter else run["output_dir"]
        scored_path.write_text(json.dumps({"per_row": scores(args, cfg, split, out, label, model, adapter)}))
        per_row = json.loads(scored_path.read_text())["per_row"]
        print(f"compare: {label}: {statistics.mean(per_row):.4f} ({trained['train_seconds']:.0f} s)", flush=True)
    return {"arm": arm, "seed": seed, **trained, **json.loads(scored_path.read_text())}


def reference(args, cfg: dict[str, Any], split: Split, out: Path) -> dict[str, float]:
    """The untrained student (and, for generated tasks, the teacher), scored the same way."""
    found = {}
    for label, model in (("untrained student", cfg["base_model"]), ("teacher", cfg["dskd_teacher_model"])):
        if label == "teacher" and args.task == "ce":
            continue  # its cross-entropy is over its own tokens: not comparable across tokenizers
        path = record_path(out, f"{args.task}-{label.replace(' ', '_')}")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"per_row": scores(args, cfg, split, out, label, model, None)}))
        per_row = json.loads(path.read_text())["per_row"]
        if per_row is not None:
            found[label] = statistics.mean(per_row)
    return found


def report(args, records: dict[str, list[dict[str, Any]]], references: dict[str, float], rows: int) -> dict:
    """The table's numbers: per arm the mean, per-seed values, the paired gap to SFT."""
    lower_is_better = args.task == "ce"
    table: dict[str, Any] = {"task": args.task, "held_out_rows": rows, "reference": references, "arms": {}}
    sft = {record["seed"]: record["per_row"] for record in records["sft"]}
    for arm, runs in records.items():
        per_seed = [statistics.mean(run["per_row"]) for run in runs]
        entry: dict[str, Any] = {
            "mean": statistics.mean(per_seed),
            "per_seed": per_seed,
            "train_seconds": statistics.mean(run["train_seconds"] for run in runs),
            "peak_gib": max((run["peak_gib"] or 0) for run in runs) or None,
        }
        if arm != "sft":
            shared = [run for run in runs if run["seed"] in sft]
            differences = [[a - b for a, b in zip(run["per_row"], sft[run["seed"]], strict=True)] for run in shared]
            gap = paired_gap(differences)
            entry["gap_to_sft"] = vars(gap)
            entry["verdict"] = verdict(arm, "sft", gap, metric_name(args.task), lower_is_better)
        table["arms"][arm] = entry
    return table


def metric_name(task: str) -> str:
    return "held-out CE" if task == "ce" else task


def table_text(data: dict[str, Any]) -> str:
    metric = metric_name(data["task"]) + (" (lower is better)" if data["task"] == "ce" else "")
    lines = [
        f"\n{metric} on {data['held_out_rows']} held-out rows never trained on:",
        "| arm | score | per seed | gap to SFT (95% interval over rows) | train s | peak GPU GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, value in data["reference"].items():
        lines.append(f"| {name} | {value:.4f} | - | - | - | - |")
    for arm, entry in data["arms"].items():
        gap = entry.get("gap_to_sft")
        gap_text = f"{gap['mean']:+.4f} ({gap['low']:+.4f} to {gap['high']:+.4f})" if gap else "-"
        seeds = ", ".join(f"{value:.4f}" for value in entry["per_seed"])
        peak = f"{entry['peak_gib']:.2f}" if entry["peak_gib"] else "- (CPU)"
        lines.append(f"| {arm} | {entry['mean']:.4f} | {seeds} | {gap_text} | {entry['train_seconds']:.0f} | {peak} |")
    lines += [entry["verdict"] for entry in data["arms"].values() if "verdict" in entry]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Each arm's per-seed scores beside SFT's, the reference rows as grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for index, (arm, entry) in enumerate(data["arms"].items()):
        axis.scatter([index] * len(entry["per_seed"]), entry["per_seed"], label=arm)
        axis.hlines(entry["mean"], index - 0.25, index + 0.25)
    for name, value in data["reference"].items():
        axis.axhline(value, color="grey", linestyle=":", linewidth=1)
        axis.text(len(data["arms"]) - 0.5, value, name, color="grey", fontsize=8, va="bottom", ha="right")
    axis.set_xticks(range(len(data["arms"])), list(data["arms"]))
    axis.set_ylabel(metric_name(data["task"]))
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def compare(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # each scoring's model loads would bury the compare's lines
    transformers_logging.disable_progress_bar()
    out = Path(args.out).resolve()
    try:
        cfg = checked_config(yaml.safe_load(Path(args.config).read_text()))
        if args.task != "ce" and not args.prompt_field:
            raise CompareError(f"compare: --task {args.task} generates answers: name the rows' --prompt-field")
        split = split_rows(cfg, out, args.held_out_last, Path(args.held_out) if args.held_out else None)
        if args.task == "ce":
            tokenized_held_out(cfg, split, out)  # every held-out row must survive Axolotl's loading: checked first
        arms = ["sft", "dskd"] + (["vanilla_kd"] if args.vanilla_kd else [])
        records = {arm: [run_arm(args, cfg, split, out, arm, seed) for seed in args.seeds] for arm in arms}
        references = reference(args, cfg, split, out)
    except CompareError as error:
        print(error)
        return 2
    data = report(args, records, references, len(split.held_out_hashes))
    data["held_out_row_hashes"] = split.held_out_hashes
    (out / "compare.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, out / "compare.png")
    print(table_text(data))
    print(f"compare: record {out / 'compare.json'}, plot {out / 'compare.png'}")
    return 0


def add_compare_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "compare", help="train your DSKD config and the same without the plugin (SFT); compare them on held-out rows"
    )
    parser.add_argument("config", help="the Axolotl YAML of the DSKD run")
    held_out = parser.add_mutually_exclusive_group(required=True)
    held_out.add_argument("--held-out-last", type=int, help="hold out the last N rows of the dataset (N >= 50)")
    held_out.add_argument("--held-out", help="a .jsonl of held-out rows in the dataset's format (none may be in it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per arm (same rows, order per seed)")
    parser.add_argument("--vanilla-kd", action="store_true", help="also train vanilla KD (one vocabulary only)")
    parser.add_argument("--task", choices=TASKS, default="ce", help="ce: held-out CE of the answers (any data)")
    parser.add_argument("--prompt-format", choices=("alpaca", "chat", "raw"), default="alpaca")
    parser.add_argument("--prompt-field", help="generated tasks: the rows' prompt field")
    parser.add_argument("--input-field", default="input")
    parser.add_argument("--answer-field", default="output")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", default="outputs/compare", help="configs, runs, records, table (resumable)")
    parser.set_defaults(handler=compare)
