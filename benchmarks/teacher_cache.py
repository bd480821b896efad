"""Teacher cache vs live teacher vs SFT, side by side in one run, on real models.

Pairs: the demo pair (teacher SmolLM2-135M-Instruct, student its first 8 layers, one
vocabulary) and a cross-tokenizer pair (teacher Qwen2.5-Coder-0.5B-Instruct, same
student). Student: LoRA r=16 on every linear layer. For each pair it builds a cache of the
batch's rows with the real builder, then prints:
- step time: SFT, DSKD with the live teacher, DSKD from the cache (round-robin medians);
- peak RSS of a process that runs two live DSKD steps vs one that runs two cached steps,
  beside the teacher body's weight size;
- cache bytes per response token, and build throughput vs a plain teacher forward.
Then (`--drift-steps`, demo pair) it trains the same LoRA student from a float32 and from
a bfloat16 cache of the same rows and prints how far the losses and the final LoRA and
projector weights move apart.

    python -m benchmarks.teacher_cache [--batch 4] [--repeats 5] [--pairs demo cross] [--drift-steps 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from axolotl_dskd.assets import fetch as assets  # noqa: E402
from axolotl_dskd.collate.cross_tokenizer import DSKDCrossTokenizerCollator  # noqa: E402
from axolotl_dskd.collate.rows import DSKDRowCollator  # noqa: E402
from axolotl_dskd.commands.cache_teacher import write_cache  # noqa: E402
from axolotl_dskd.distill.step import DistillationStep  # noqa: E402
from axolotl_dskd.distill.vocabulary import CrossVocabulary, SharedVocabulary  # noqa: E402
from axolotl_dskd.integration.args import DSKDTrainingArgsMixin  # noqa: E402
from axolotl_dskd.loss.config import LossConfig  # noqa: E402
from axolotl_dskd.teacher.cache import HeadOnlyTeacher, TeacherCache  # noqa: E402
from axolotl_dskd.teacher.loading import last_hidden_state, output_head  # noqa: E402
from axolotl_dskd.teacher.source import CachedTeacher, LiveTeacher  # noqa: E402
from benchmarks.step_time import batch, timed_together, unpadded  # noqa: E402


def teacher_dir(pair: str) -> Path:
    return assets.smollm2_instruct() if pair == "demo" else assets.qwen_coder_instruct()


def collator_for(pair: str, tokenizer, cache_dir: Path | None) -> DSKDRowCollator:
    cache = {"teacher_cache": str(cache_dir)} if cache_dir else {}
    if pair == "cross":
        return DSKDCrossTokenizerCollator(
            tokenizer, padding=True, return_tensors="pt", teacher_tokenizer_path=str(teacher_dir(pair)), **cache
        )
    return DSKDRowCollator(tokenizer, padding=True, return_tensors="pt", **cache)


def pair_models(pair: str, cache_dir: Path | None = None):
    """(student with LoRA r16, teacher or its cached head, student tokenizer, DSKD step) for `pair`."""
    student_dir = assets.truncated_copy(assets.smollm2_instruct(), assets.CUT_STUDENT_LAYERS)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    cross = pair == "cross"
    if cache_dir:
        teacher = HeadOnlyTeacher(TeacherCache(cache_dir).head())
    else:
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir(pair), dtype=torch.float32).eval()
        teacher.requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    student = get_peft_model(student, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).train()
    vocab = (
        CrossVocabulary(tokenizer, AutoTokenizer.from_pretrained(teacher_dir(pair)))
        if cross
        else SharedVocabulary(len(tokenizer))
    )
    source = CachedTeacher() if cache_dir else LiveTeacher()
    step = DistillationStep(student, teacher, LossConfig.from_settings(DSKDTrainingArgsMixin()), vocab, source=source)
    return student, teacher, tokenizer, step


def setup(pair: str, size: int, cache_dir: Path | None):
    """(student, teacher or its cached head, collator, features, DSKD step) for `pair`."""
    student, teacher, tokenizer, step = pair_models(pair, cache_dir)
    return student, teacher, collator_for(pair, tokenizer, cache_dir), unpadded(batch(tokenizer, size)), step


def train_step(step: DistillationStep, student, inputs) -> None:
    loss, _ = step(student, inputs)
    loss.backward()
    student.zero_grad(set_to_none=True)
    step.zero_grad(set_to_none=True)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_child(pair: str, size: int, cache_dir: str) -> None:
    """Two DSKD steps, live or cached; prints as JSON this process's peak RSS in MiB, over
    its whole life and over the two steps alone (the peak is reset after setup, so the
    projector's pinv init, alike in both, does not hide what the steps hold)."""
    student, _, collator, features, step = setup(pair, size, Path(cache_dir) if cache_dir else None)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    for _ in range(2):
        train_step(step, student, collator(features))
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"whole": whole, "steps": _status_mib("VmHWM")}))


def peak_rss(pair: str, size: int, cache_dir: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.teacher_cache", "--memory-child", pair, "--batch", str(size)]
    result = subprocess.run([*command, "--cache", cache_dir], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(pair: str, size: int, repeats: int) -> None:
    student, teacher, collator, features, live_step = setup(pair, size, None)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp)
        start = time.perf_counter()
        options = argparse.Namespace(shard_rows=1024, batch_size=size, dtype="bfloat16")
        write_cache(
            cache_dir, teacher, collator, {"train": Dataset.from_list(features)}, options, {}, live_step.vocabulary
        )
        build_seconds = time.perf_counter() - start
        cached_collator = collator_for(pair, collator.tokenizer, cache_dir)
        cached_step = DistillationStep(
            student,
            HeadOnlyTeacher(TeacherCache(cache_dir).head()),
            live_step.loss_cfg,
            live_step.vocabulary,
            source=CachedTeacher(),
        )
        live_inputs, cached_inputs = collator(features), cached_collator(features)

        def sft() -> None:
            student(**{k: live_inputs[k] for k in ("input_ids", "attention_mask", "labels")}).loss.backward()
            student.zero_grad(set_to_none=True)

        def forward() -> None:
            with torch.no_grad():
                last_hidden_state(teacher, live_step.vocabulary.teacher_inputs(live_inputs, teacher.device))

        times = timed_together(
            {
                "sft": sft,
                "live": lambda: train_step(live_step, student, live_inputs),
                "cached": lambda: train_step(cached_step, student, cached_inputs),
                "collate_cached": lambda: cached_collator(features),
                "teacher_forward": forward,
            },
            repeats,
        )
        stored_rows = int(cached_inputs["teacher_cached_counts"].sum())
        cache_bytes = sum(path.stat().st_size for path in cache_dir.glob("train-*"))
        teacher_tokens = int(live_step.vocabulary.teacher_inputs(live_inputs, teacher.device)["attention_mask"].sum())
        live_rss = peak_rss(pair, size, "")
        cached_rss = peak_rss(pair, size, str(cache_dir))
    body_mib = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**20
    body_mib -= output_head(teacher).numel() * output_head(teacher).element_size() / 2**20
    name = "SmolLM2-135M-Instruct" if pair == "demo" else "Qwen2.5-Coder-0.5B-Instruct (cross-tokenizer)"
    print(f"\n== teacher {name}; student SmolLM2 first {assets.CUT_STUDENT_LAYERS} layers, LoRA r=16")
    print(f"batch {size} rows, {stored_rows} cached teacher rows; threads {torch.get_num_threads()}")
    print(f"SFT step                    {times['sft']:8.3f} s")
    print(f"DSKD step, live teacher     {times['live']:8.3f} s   {times['live'] / times['sft']:.2f}x SFT")
    print(f"DSKD step, teacher cache    {times['cached']:8.3f} s   {times['cached'] / times['sft']:.2f}x SFT")
    print(f"  of which cached collation {times['collate_cached']:8.3f} s (bfloat16 rows read and concatenated)")
    print(f"cached / live step time: {times['cached'] / times['live']:.2f}x")
    print(f"peak RSS (MiB)        over the two steps   whole process; teacher body weights (fp32) {body_mib:.0f} MiB")
    for label, rss in (("live teacher", live_rss), ("teacher cache", cached_rss)):
        print(f"  {label:<19} {rss['steps']:8.0f}          {rss['whole']:8.0f}")
    saved = {key: live_rss[key] - cached_rss[key] for key in ("steps", "whole")}
    print(f"  cache saves         {saved['steps']:8.0f}          {saved['whole']:8.0f}")
    print(f"cache size: {cache_bytes / stored_rows:.0f} bytes per cached response token (bfloat16)")
    print(
        f"build: {stored_rows / build_seconds:.0f} cached rows/s ({teacher_tokens / build_seconds:.0f} teacher "
        f"tokens/s, first call included); plain teacher forward: {teacher_tokens / times['teacher_forward']:.0f} "
        "teacher tokens/s"
    )


def _train(step_parts, init_state, dtype: str | None, steps: int, size: int) -> tuple[list[float], dict]:
    """`steps` AdamW steps (the demo's lr) from a `dtype` cache of the rows, or from the
    live teacher (`dtype` None); (losses, the trained LoRA and projector weights)."""
    student, teacher, collator, features = step_parts
    with tempfile.TemporaryDirectory() as tmp:
        if dtype is not None:
            options = argparse.Namespace(shard_rows=1024, batch_size=size, dtype=dtype)
            vocab = SharedVocabulary(len(collator.tokenizer))
            write_cache(Path(tmp), teacher, collator, {"train": Dataset.from_list(features)}, options, {}, vocab)
        student.load_state_dict(init_state)
        step = DistillationStep(
            student,
            teacher if dtype is None else HeadOnlyTeacher(TeacherCache(tmp).head()),
            LossConfig.from_settings(DSKDTrainingArgsMixin()),
            SharedVocabulary(len(collator.tokenizer)),
            source=LiveTeacher() if dtype is None else CachedTeacher(),
        )
        collate = collator_for("demo", collator.tokenizer, None if dtype is None else Path(tmp))
        trained = [p for p in student.parameters() if p.requires_grad] + list(step.parameters())
        optimizer = torch.optim.AdamW(trained, lr=5e-4)
        losses = []
        for index in range(steps):
            rows = features[(index % 2) * size : (index % 2 + 1) * size]
            loss, _ = step(student, collate([dict(row) for row in rows]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        weights = {name: p.detach().clone() for name, p in student.named_parameters() if p.requires_grad}
        weights["t2s_projector"] = step.t2s_projector.weight.detach().clone()
    return losses, weights


def drift(size: int, steps: int) -> None:
    """bfloat16 vs float32 storage over a short LoRA run on the demo pair (2 batches of
    `size` rows, alternating), from the same initial weights; beside it, float32 storage vs
    the live teacher: the noise floor (the cache ran the teacher on other batches, so its
    rows differ from the live ones in the last bits, which Adam amplifies)."""
    student, teacher, collator, features, start_step = setup("demo", 2 * size, None)
    init_state = copy.deepcopy(student.state_dict())
    parts = (student, teacher, collator, features)
    runs = {dtype: _train(parts, init_state, dtype, steps, size) for dtype in ("float32", "bfloat16", None)}
    initial = {name: init_state[name] for name in runs["float32"][1] if name != "t2s_projector"}
    initial["t2s_projector"] = start_step.t2s_projector.weight.detach().clone()
    lora = [name for name in initial if "lora_" in name]
    print(f"\n== cache storage: {steps} LoRA steps on the demo pair, batches of {size} rows, from the same start")
    first = {dtype or "live": f"{run[0][0]:.6f}" for dtype, run in runs.items()}
    print(f"first loss: {first}")
    for label, (a, b) in (("bfloat16 vs float32", ("bfloat16", "float32")), ("float32 vs live", ("float32", None))):
        (losses_a, weights_a), (losses_b, weights_b) = runs[a], runs[b]
        loss_gap = max(abs(x - y) / abs(y) for x, y in zip(losses_a, losses_b, strict=True))
        line = f"{label:<20} largest relative loss difference {loss_gap:.2e}"
        for part, names in (("LoRA", lora), ("projector", ["t2s_projector"])):
            gap = sum(float((weights_a[n] - weights_b[n]).pow(2).sum()) for n in names) ** 0.5
            moved = sum(float((weights_b[n] - initial[n]).pow(2).sum()) for n in names) ** 0.5
            line += f"; {part} weights apart by {gap / moved:.1e} of their training update"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", nargs="*", choices=("demo", "cross"), default=["demo", "cross"])
    parser.add_argument("--drift-steps", type=int, default=10, help="bfloat16 vs float32 run length (0 = skip)")
    parser.add_argument("--memory-child", choices=("demo", "cross"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.cache)
        return
    for pair in args.pairs:
        measure(pair, args.batch, args.repeats)
    if args.drift_steps:
        drift(args.batch, args.drift_steps)


if __name__ == "__main__":
    main()
