"""DSKD train step vs plain SFT step on the embedded default pair, same batch, one run.

Teacher: SmolLM2-135M-Instruct (30 layers). Student: its first 8 layers, LoRA r=16 on
every linear layer (the demo's setup) or full fine-tuning (--full). Prints the median
time of each step kind and their ratio (on-policy too), where the DSKD step's time goes, and what
collating the batch costs, including the cross-tokenizer collator (teacher: Qwen2).

    python benchmarks/step_time.py [--batch 4] [--repeats 5] [--full]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from axolotl_dskd.assets import fetch as assets  # noqa: E402
from axolotl_dskd.collate.cross_tokenizer import DSKDCrossTokenizerCollator  # noqa: E402
from axolotl_dskd.collate.packing import model_inputs, packing_flags  # noqa: E402
from axolotl_dskd.collate.rows import DSKDRowCollator  # noqa: E402
from axolotl_dskd.distill.on_policy import OnPolicyConfig, sampled_batch  # noqa: E402
from axolotl_dskd.distill.step import DistillationStep  # noqa: E402
from axolotl_dskd.distill.vocabulary import SharedVocabulary  # noqa: E402
from axolotl_dskd.integration.args import DSKDTrainingArgsMixin  # noqa: E402
from axolotl_dskd.loss.chunked import chunked_loss  # noqa: E402
from axolotl_dskd.loss.config import LossConfig  # noqa: E402
from axolotl_dskd.teacher.loading import last_hidden_state, output_head  # noqa: E402

ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Response:\n"  # noqa: E501


def batch(tokenizer, size: int) -> dict[str, torch.Tensor]:
    rows = assets.gsm_symbolic_rows(size=size, seed=7)
    encoded = []
    for row in rows:
        prompt = tokenizer(ALPACA.format(row["instruction"]), add_special_tokens=False)["input_ids"]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((prompt + response, [-100] * len(prompt) + response))
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in encoded]),
    } | packing_flags(False, len(encoded))


def unpadded(padded: dict[str, torch.Tensor]) -> list[dict[str, list[int]]]:
    """The rows of a padded batch as a collator receives them."""
    return [
        {"input_ids": ids[mask].tolist(), "attention_mask": [1] * int(mask.sum()), "labels": labels[mask].tolist()}
        for ids, mask, labels in zip(
            padded["input_ids"], padded["attention_mask"].bool(), padded["labels"], strict=True
        )
    ]


def reference_tokenizer_dir(name: str):
    assets.reference_tokenizer(name)
    return assets.converted_dir("tokenizers") / name


def timed(fn, repeats: int) -> float:
    return timed_together({"only": fn}, repeats)["only"]


def timed_together(fns: dict, repeats: int) -> dict[str, float]:
    """Median time of each function, run round-robin after one warm-up each, so that a slow
    spell of the shared machine hits every measure alike instead of one of them."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--on-policy-tokens", type=int, default=64, help="max new tokens sampled on-policy")
    args = parser.parse_args()

    teacher_dir = assets.smollm2_instruct()
    student_dir = assets.truncated_copy(teacher_dir, assets.CUT_STUDENT_LAYERS)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if not args.full:
        student = get_peft_model(student, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    student.train()
    inputs = batch(tokenizer, args.batch)
    step = DistillationStep(
        student, teacher, LossConfig.from_settings(DSKDTrainingArgsMixin()), SharedVocabulary(len(tokenizer))
    )
    n_loss_tokens = int((inputs["labels"][:, 1:] != -100).sum())

    def sft() -> None:
        student(**{key: inputs[key] for key in ("input_ids", "attention_mask", "labels")}).loss.backward()
        student.zero_grad(set_to_none=True)

    def dskd() -> None:
        loss, _ = step(student, inputs)
        loss.backward()
        student.zero_grad(set_to_none=True)
        step.zero_grad(set_to_none=True)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    on_policy = OnPolicyConfig.from_settings(
        DSKDTrainingArgsMixin(dskd_on_policy_ratio=1.0, dskd_on_policy_max_new_tokens=args.on_policy_tokens), seed=0
    )
    plain_collate = DSKDRowCollator(tokenizer, padding=True, return_tensors="pt", label_pad_token_id=-100)

    def generate() -> dict[str, torch.Tensor]:
        return sampled_batch(student, inputs, on_policy, plain_collate, pad_id, tokenizer.eos_token_id, 2048, seed=0)

    def dskd_on_policy() -> None:
        loss, _ = step(student, inputs, kd_inputs=generate())
        loss.backward()
        student.zero_grad(set_to_none=True)
        step.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.no_grad():
            last_hidden_state(teacher, model_inputs(inputs, "", teacher.device))

    response = inputs["labels"][:, 1:] != -100
    with torch.no_grad():
        teacher_rows = last_hidden_state(teacher, model_inputs(inputs, "", teacher.device))[:, :-1][response]
    student_rows = torch.randn(n_loss_tokens, teacher_rows.shape[1], requires_grad=True)
    response_labels = inputs["labels"][:, 1:][response]

    def teacher_head() -> None:
        with torch.no_grad():
            torch.nn.functional.linear(teacher_rows, output_head(teacher))

    def student_head_and_ce() -> None:
        logits = torch.nn.functional.linear(student_rows, output_head(student))
        torch.nn.functional.cross_entropy(logits, response_labels).backward()
        student_rows.grad = None

    heads = step.heads(output_head(student))
    loss_cfg = step.loss_cfg

    def loss_alone() -> None:
        chunked_loss(student_rows, teacher_rows, response_labels, heads, loss_cfg)[0].backward()
        student_rows.grad = None
        step.zero_grad(set_to_none=True)

    def student_forward_backward() -> None:
        out = student(**model_inputs(inputs, "", student.device), output_hidden_states=True, logits_to_keep=1)
        out.hidden_states[-1].sum().backward()
        student.zero_grad(set_to_none=True)

    features = unpadded(inputs)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    collators = {
        "same vocabulary": DSKDRowCollator(tokenizer, padding=True, return_tensors="pt"),
        "cross-tokenizer to Qwen2": DSKDCrossTokenizerCollator(
            tokenizer, padding=True, return_tensors="pt", teacher_tokenizer_path=str(reference_tokenizer_dir("qwen2"))
        ),
    }
    collate_times = {name: timed(lambda c=collator: c(features), args.repeats) for name, collator in collators.items()}

    times = timed_together(
        {
            "sft": sft,
            "dskd": dskd,
            "teacher": teacher_forward,
            "body": student_forward_backward,
            "teacher_head": teacher_head,
            "own_head": student_head_and_ce,
            "loss": loss_alone,
        },
        args.repeats,
    )
    sft_time, dskd_time, teacher_time, body_time = times["sft"], times["dskd"], times["teacher"], times["body"]
    teacher_head_time, own_head_time = times["teacher_head"], times["own_head"]
    generate_time = timed(generate, args.repeats)
    on_policy_time = timed(dskd_on_policy, args.repeats)
    rest = dskd_time - teacher_time - body_time
    outside = rest - teacher_head_time - own_head_time
    loss_outside = times["loss"] - teacher_head_time - own_head_time
    mode = "full fine-tune" if args.full else "LoRA r=16 all-linear"
    layers = assets.CUT_STUDENT_LAYERS
    print(f"student: SmolLM2-135M-Instruct first {layers} layers, {mode}; teacher: SmolLM2-135M-Instruct")
    shape = tuple(inputs["input_ids"].shape)
    print(f"batch: {shape} tokens, {n_loss_tokens} response tokens; threads: {torch.get_num_threads()}")
    print(f"SFT step (fwd+bwd, HF loss)      {sft_time:8.3f} s")
    print(f"DSKD step (fwd+bwd, dual-space)  {dskd_time:8.3f} s")
    print(f"  teacher forward                {teacher_time:8.3f} s  ({teacher_time / dskd_time:5.1%})")
    print(f"  student body fwd+bwd           {body_time:8.3f} s  ({body_time / dskd_time:5.1%})")
    print(f"  loss, projectors, heads        {rest:8.3f} s  ({rest / dskd_time:5.1%})")
    print("    of which each model's own head on the loss rows (student: + CE, fwd+bwd; teacher: fwd)")
    print(f"      student head + CE          {own_head_time:8.3f} s  ({own_head_time / dskd_time:5.1%})")
    print(f"      teacher head               {teacher_head_time:8.3f} s  ({teacher_head_time / dskd_time:5.1%})")
    print(f"    outside both models (projections, KD terms, projector)  {outside:8.3f} s  ({outside / dskd_time:5.1%})")
    print(
        f"    cross-check, the loss timed alone on the same rows minus the two heads  {loss_outside:8.3f} s  "
        f"({loss_outside / dskd_time:5.1%})"
    )
    print(f"ratio DSKD / SFT step time: {dskd_time / sft_time:.2f}x")
    print(f"on-policy DSKD step (sample <= {args.on_policy_tokens} tokens per row, gold CE + sampled KD)")
    print(f"  step {on_policy_time:8.3f} s, of which sampling {generate_time:8.3f} s")
    print(f"ratio on-policy / off-policy DSKD step time: {on_policy_time / dskd_time:.2f}x")
    for name, seconds in collate_times.items():
        print(f"collation, {name:26s} {seconds * 1000:8.1f} ms  ({seconds / dskd_time:6.2%} of the DSKD step)")


if __name__ == "__main__":
    main()
