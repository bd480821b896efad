"""Sample packing vs padded micro-batches: response tokens per second of the DSKD train
step, side by side in one run (CPU).

Pairs: `demo` (teacher SmolLM2-135M-Instruct, student its first 8 layers, LoRA r16 on every
linear layer, one tokenizer) and `cross` (teacher Qwen2.5-Coder-0.5B-Instruct, another
tokenizer). Data of variable length: GSM-Symbolic worked answers (alpaca prompt) and
chitchat conversations (the student's chat template, every assistant turn trained).
Padded: micro-batches of --batch rows in a shuffled order, each padded to its longest row,
as Axolotl batches without packing. Packed: Axolotl's MultipackBatchSampler over the same
rows, --batch bins of --sequence-len tokens per micro-batch (how Axolotl batches sdpa and
eager runs), collated by the plugin's collator. A pass trains on every row once in one
layout (collation, teacher forward, DSKD loss, backward); passes alternate between the
layouts, so a slow spell of the machine hits both. Prints each layout's response tokens
per second (median over passes), the ratio, and the share of padding in each.

    python -m benchmarks.packing [--pairs demo cross] [--rows 64] [--batch 4] [--passes 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from axolotl.utils.samplers.multipack import MultipackBatchSampler  # noqa: E402

from axolotl_dskd.assets import fetch as assets  # noqa: E402
from axolotl_dskd.labels import IGNORE_INDEX  # noqa: E402
from benchmarks.step_time import ALPACA  # noqa: E402
from benchmarks.teacher_cache import collator_for, pair_models, train_step  # noqa: E402


def gsm_features(tokenizer, size: int, max_len: int) -> list[dict[str, list[int]]]:
    features = []
    for row in assets.gsm_symbolic_rows(size=size, seed=11):
        prompt = tokenizer(ALPACA.format(row["instruction"]), add_special_tokens=False)["input_ids"]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        features.append(_row(prompt + response, [IGNORE_INDEX] * len(prompt) + response, max_len))
    return features


def chat_features(tokenizer, size: int, max_len: int) -> list[dict[str, list[int]]]:
    """Each conversation rendered turn by turn with the student's chat template, so every
    assistant turn's tokens are trained and the rest masked."""
    features = []
    for row in assets.chitchat_rows(size):
        ids: list[int] = []
        labels: list[int] = []
        for turn in range(1, len(row["messages"]) + 1):
            text = tokenizer.apply_chat_template(row["messages"][:turn], tokenize=False)
            new = tokenizer(text, add_special_tokens=False)["input_ids"][len(ids) :]
            trained = row["messages"][turn - 1]["role"] == "assistant"
            ids += new
            labels += new if trained else [IGNORE_INDEX] * len(new)
        features.append(_row(ids, labels, max_len))
    return features


def _row(ids: list[int], labels: list[int], max_len: int) -> dict[str, list[int]]:
    return {"input_ids": ids[:max_len], "attention_mask": [1] * len(ids[:max_len]), "labels": labels[:max_len]}


def padded_batches(features: list[dict], batch: int, seed: int) -> list[list[dict]]:
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    return [[features[i] for i in order[start : start + batch]] for start in range(0, len(order), batch)]


def packed_batches(features: list[dict], batch: int, sequence_len: int, seed: int) -> list[list[list[dict]]]:
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    sampler = MultipackBatchSampler(
        order,
        batch_size=batch,
        batch_max_len=sequence_len,
        lengths=[len(row["input_ids"]) for row in features],
        bin_size=200,
        drop_last=False,
        num_processes=1,
    )
    return [[[features[i] for i in bin_] for bin_ in micro_batch] for micro_batch in sampler]


def real_tokens(features: list) -> int:
    """Tokens of the rows of one micro-batch (padded layout: rows; packed: bins of rows)."""
    rows = [row for item in features for row in (item if isinstance(item, list) else [item])]
    return sum(len(row["input_ids"]) for row in rows)


def run_pass(step, student, collate, micro_batches) -> tuple[float, int, int, int]:
    """(seconds, trained tokens, real tokens, token slots) of training once on every micro-batch."""
    trained = real = slots = 0
    start = time.perf_counter()
    for features in micro_batches:
        real += real_tokens(features)
        inputs = collate(copy.deepcopy(features))
        train_step(step, student, inputs)
        trained += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        slots += inputs["input_ids"].numel()
    return time.perf_counter() - start, trained, real, slots


def measure(pair: str, datasets: dict, args: argparse.Namespace) -> None:
    student, _teacher, tokenizer, step = pair_models(pair)
    collate = collator_for(pair, tokenizer, None)
    for name, make in datasets.items():
        features = make(tokenizer, args.rows, args.sequence_len)
        layouts = {
            "padded": padded_batches(features, args.batch, seed=0),
            "packed": packed_batches(features, args.batch, args.sequence_len, seed=0),
        }
        run_pass(step, student, collate, layouts["padded"][:1])  # warm-up
        rates: dict[str, list[float]] = {layout: [] for layout in layouts}
        shares: dict[str, tuple[int, int, int]] = {}
        for _ in range(args.passes):
            for layout, micro_batches in layouts.items():
                seconds, trained, real, slots = run_pass(step, student, collate, micro_batches)
                rates[layout].append(trained / seconds)
                shares[layout] = (trained, real, slots)
        lengths = [len(row["input_ids"]) for row in features]
        print(
            f"\n{pair} / {name}: {len(features)} rows, {min(lengths)}-{max(lengths)} tokens "
            f"(median {statistics.median(lengths):.0f}), batch {args.batch}, sequence_len {args.sequence_len}"
        )
        print("| layout | micro-batches | response tokens | padding share | response tokens/s (median) |")
        print("|---|---|---|---|---|")
        for layout, micro_batches in layouts.items():
            trained, real, slots = shares[layout]
            print(
                f"| {layout} | {len(micro_batches)} | {trained} | {1 - real / slots:.1%} "
                f"| {statistics.median(rates[layout]):.1f} ({', '.join(f'{r:.1f}' for r in rates[layout])}) |"
            )
        ratio = statistics.median(rates["packed"]) / statistics.median(rates["padded"])
        print(f"packed / padded response tokens per second: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=["demo", "cross"], default=["demo", "cross"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="rows (padded) or bins (packed) per micro-batch")
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    datasets = {"gsm_symbolic": gsm_features, "chitchat": chat_features}
    for pair in args.pairs:
        measure(pair, datasets, args)


if __name__ == "__main__":
    main()
