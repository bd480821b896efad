"""The GPU checks that need neither Axolotl nor downloaded weights, in one run of a few
minutes, for a GPU machine without a package registry (benchmarks/gpu_check.py needs
Axolotl, flash-attn and the real models installed there).

1. The chunked dual-space loss on the GPU against the straightforward reference
   (benchmarks/reference_loss.py) at the cross pair's shapes (student d=576, V=49,152;
   teacher D=896, V=151,936): loss and gradients in fp32, and how far bf16 inputs move them.
2. What it adds in peak GPU memory and time (forward + backward) beside the unchunked
   reference and a student-head CE alone, with `axolotl-dskd plan`'s chunk-buffer estimate.
3. Whole training steps of the same-vocabulary pair at SmolLM2's real shapes with random
   weights (student: SmolLM2-135M's first 8 layers; teacher: SmolLM2-135M; as gpu_check.py),
   bf16, sdpa, LoRA r16 on every linear layer, AdamW; DSKD through the plugin's own
   `DistillationStep` (pinv projector init included) vs SFT, each in its own process:
   tokens/s and peak GPU memory beside what `plan` estimates for the same settings.

    python -m benchmarks.gpu_step [--rows 4096] [--batch 4] [--seq 1024] [--steps 10] [--out DIR]
    python -m benchmarks.gpu_step --device cpu --rows 256 --batch 1 --seq 64 --steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from axolotl_dskd.collate.packing import packing_flags
from axolotl_dskd.loss.chunked import chunked_loss
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.planning.memory import loss_chunk_buffer_bytes, plan
from benchmarks.loss_memory import D_S, D_T, V_S, V_T
from tests.oracles.reference_loss import reference_dskd

MIB = 2**20
LORA_RANK = 16


class YamlConfig(dict):
    """The attribute and key access Axolotl's DictDefault gives `plan`."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: str, resident: int) -> float | None:
    """Peak GPU memory allocated since the last reset, above `resident` bytes."""
    return (torch.cuda.max_memory_allocated() - resident) / MIB if device == "cuda" else None


def reset_peak(device: str) -> int:
    if device != "cuda":
        return 0
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def loss_inputs(rows: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Random hidden rows, heads and projectors at the cross pair's shapes (one seed)."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device, dtype)

    return {
        "student_hidden": randn(rows, D_S).requires_grad_(),
        "teacher_hidden": randn(rows, D_T),
        "labels": torch.randint(0, V_S, (rows,), generator=generator).to(device),
        "student_head": randn(V_S, D_S, scale=0.05).requires_grad_(),
        "teacher_head": randn(V_T, D_T, scale=0.05),
        # the projector stays fp32 under bf16 training; the s2t map is fp32 too
        "t2s_weight": (torch.randn(D_S, D_T, generator=generator) * 0.03).to(device).requires_grad_(),
        "s2t_weight": (torch.randn(D_T, D_S, generator=generator) * 0.05).to(device),
    }


def loss_and_grads(variant: str, inputs: dict[str, Any], chunk_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward + backward of one loss variant: `chunked`, `reference` or `ce` (student head only)."""
    leaves = [inputs["student_hidden"], inputs["student_head"], inputs["t2s_weight"]]
    for leaf in leaves:
        leaf.grad = None
    heads = Heads(inputs["student_head"], inputs["teacher_head"], V_S, V_S, inputs["t2s_weight"], inputs["s2t_weight"])
    cfg = LossConfig(chunk_size=chunk_size)
    hidden, teacher, labels = inputs["student_hidden"], inputs["teacher_hidden"], inputs["labels"]
    if variant == "chunked":
        loss = chunked_loss(hidden, teacher, labels, heads, cfg)[0]
    elif variant == "reference":
        loss = reference_dskd(hidden, teacher, labels, heads, cfg)
    else:
        loss = F.cross_entropy((hidden @ inputs["student_head"].T).float(), labels, reduction="sum")
    loss.backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def upcast(inputs: dict[str, Any]) -> dict[str, Any]:
    """The same values in fp32, as new leaves."""
    return {
        key: value.detach().float().requires_grad_(value.requires_grad) if value.is_floating_point() else value
        for key, value in inputs.items()
    }


def check_loss_accuracy(rows: int, device: str) -> dict[str, Any]:
    """Chunked vs the reference computed in fp32 on the same input values: in fp32 they must
    agree to float rounding; with bf16 inputs the gap is what the loss's own bf16 products
    cost (the heads' logits), reported, not judged."""
    result: dict[str, Any] = {"rows": rows}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        inputs = loss_inputs(rows, device, dtype)
        reference, reference_grads = loss_and_grads("reference", upcast(inputs), rows)
        loss, grads = loss_and_grads("chunked", inputs, 512)
        result[name] = {
            "loss_rel_error": relative(loss, reference),
            "grad_rel_error": {
                part: relative(grad, ref)
                for part, grad, ref in zip(
                    ("student_hidden", "student_head", "t2s"), grads, reference_grads, strict=True
                )
            },
        }
        # random heads put many logits within bf16's rounding of the top one: where the
        # teacher's argmax flips, the t2s CE target and the agreement mask change with it
        with torch.no_grad():
            logits = inputs["teacher_hidden"] @ inputs["teacher_head"].T
            exact = inputs["teacher_hidden"].float() @ inputs["teacher_head"].float().T
            flips = (logits[:, :V_S].argmax(-1) != exact[:, :V_S].argmax(-1)).float().mean().item()
        result[name]["teacher_argmax_flips"] = flips
    fp32_ok = result["fp32"]["loss_rel_error"] < 1e-5 and max(result["fp32"]["grad_rel_error"].values()) < 1e-4
    result["verdict"] = "PASS" if fp32_ok else "FAIL"
    return result


def measure_loss(rows: int, device: str, dtype: torch.dtype, chunk_sizes: list[int], repeats: int) -> list[dict]:
    """Added peak memory and median time of forward + backward per variant."""
    inputs = loss_inputs(rows, device, dtype)
    measured = []
    for variant, chunk in [("ce", rows), ("reference", rows), *[("chunked", size) for size in chunk_sizes]]:
        loss_and_grads(variant, inputs, chunk)  # warm-up (kernels, allocator)
        resident = reset_peak(device)
        seconds = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            loss_and_grads(variant, inputs, chunk)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        row = {"variant": variant, "chunk": chunk, "added_mib": peak_mib(device, resident)}
        row["ms"] = 1000 * statistics.median(seconds)
        if variant == "chunked":
            row["plan_chunk_buffers_mib"] = loss_chunk_buffer_bytes(chunk, V_S, V_T) / MIB
        measured.append(row)
    return measured


def smollm2_config(layers: int):
    """SmolLM2-135M's published shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=V_S,
        hidden_size=D_S,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def step_worker(kind: str, batch: int, seq: int, steps: int, device: str) -> dict[str, Any]:
    """`steps` timed optimizer steps (after 2 warm-ups) of `kind` (sft | dskd) in this process."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from axolotl_dskd.distill.step import DistillationStep
    from axolotl_dskd.distill.vocabulary import SharedVocabulary

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    context = 0
    if device == "cuda":  # what the GPU holds once this process has a context (nothing else runs there yet)
        torch.zeros(1, device=device)
        free, total = torch.cuda.mem_get_info()
        context = total - free

    def build(layers: int):
        model = AutoModelForCausalLM.from_config(smollm2_config(layers), attn_implementation="sdpa")
        return model.to(device, dtype)

    student = get_peft_model(build(8), LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules="all-linear"))
    trainable = [p for p in student.parameters() if p.requires_grad]
    step = None
    if kind == "dskd":
        teacher = build(30).eval().requires_grad_(False)
        step = DistillationStep(student, teacher, LossConfig(chunk_size=512), SharedVocabulary(V_S))
        trainable += list(step.t2s_projector.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, V_S, (batch, seq), generator=generator).to(device)
    labels = input_ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half: no loss, as Axolotl's train_on_inputs: false
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    padded = packing_flags(False, batch)  # what the plugin's collator tells the step
    resident = reset_peak(device)
    seconds, losses = [], []
    for index in range(steps + 2):
        synchronize(device)
        start = time.perf_counter()
        loss = step(student, inputs | padded)[0] if step is not None else student(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if index >= 2:
            seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    result = {
        "kind": kind,
        "tokens_per_s": batch * seq / statistics.median(seconds),
        "losses": losses,
        "finite": all(math.isfinite(value) for value in losses),
    }
    if device == "cuda":
        result |= {
            "resident_mib": resident / MIB,
            "peak_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / MIB,
            "context_mib": context / MIB,
        }
    return result


def run_step(kind: str, args: argparse.Namespace, batch: int, seq: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--device", args.device]
    command += ["--batch", str(batch), "--seq", str(seq), "--steps", str(args.steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"kind": kind, "error": result.stderr[-3000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def plan_estimate(args: argparse.Namespace, batch: int, seq: int) -> dict[str, float]:
    """`plan` for the step check's settings, from config.json files alone (as the CLI does)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, layers in (("student", 8), ("teacher", 30)):
            smollm2_config(layers).save_pretrained(Path(folder) / name)
        cfg = YamlConfig(
            base_model=str(Path(folder) / "student"),
            dskd_teacher_model=str(Path(folder) / "teacher"),
            bf16=args.device == "cuda",
            adapter="lora",
            lora_r=LORA_RANK,
            micro_batch_size=batch,
            sequence_len=seq,
            optimizer="adamw_torch",
            dskd_loss_chunk_size=512,
        )
        estimate = plan(cfg)
    return {name: size / MIB for name, size in estimate.components.items()} | {"total": estimate.total / MIB}


def report(args: argparse.Namespace) -> dict[str, Any]:
    """The step workers run first, while this process holds no GPU memory, so that what
    each finds in use at its start is its own CUDA context."""
    device = args.device
    results: dict[str, Any] = {"torch": torch.__version__}
    results["steps"] = []
    for batch, seq in ((args.batch, args.seq), (2 * args.batch, 2 * args.seq)):
        size = {"batch": batch, "seq": seq, "plan_mib": plan_estimate(args, batch, seq)}
        size |= {kind: run_step(kind, args, batch, seq) for kind in ("sft", "dskd")}
        results["steps"].append(size)
        print(json.dumps({"steps": size}), flush=True)
    results["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results["loss_accuracy"] = check_loss_accuracy(min(args.rows, 1024), device)
    print(json.dumps({"loss_accuracy": results["loss_accuracy"]}), flush=True)
    results["loss_cost"] = {
        name: measure_loss(args.rows, device, dtype, [256, 512, 1024], args.repeats)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    print(json.dumps({"loss_cost": results["loss_cost"]}), flush=True)
    return results


def print_summary(results: dict[str, Any]) -> None:
    accuracy = results["loss_accuracy"]
    print(f"\n{results['device']}, torch {results['torch']}")
    print(f"1. chunked loss vs reference ({accuracy['rows']} rows): {accuracy['verdict']}")
    for name in ("fp32", "bf16"):
        grads = ", ".join(f"{part} {value:.1e}" for part, value in accuracy[name]["grad_rel_error"].items())
        flips = f"; teacher argmax differs from fp32 on {100 * accuracy[name]['teacher_argmax_flips']:.1f}% of rows"
        print(f"   {name}: loss rel. error {accuracy[name]['loss_rel_error']:.1e}; gradients {grads}{flips}")
    print("2. loss forward + backward: added peak MiB, ms, vs the unchunked reference")
    for name, rows in results["loss_cost"].items():
        reference = next(row for row in rows if row["variant"] == "reference")
        for row in rows:
            memory = "-" if row["added_mib"] is None else f"{row['added_mib']:8.0f}"
            ratio = "" if row["added_mib"] is None else f"{row['added_mib'] / reference['added_mib']:.2f}x mem "
            planned = (
                f" (plan's chunk buffers {row['plan_chunk_buffers_mib']:.0f})"
                if "plan_chunk_buffers_mib" in row
                else ""
            )
            label = f"{row['variant']} {row['chunk']}"
            timing = f"{row['ms']:8.1f} ms  {ratio}{row['ms'] / reference['ms']:.2f}x time"
            print(f"   {name} {label:>15}: {memory} MiB {timing}{planned}")
    for size in results["steps"]:
        print_steps(size)


def print_steps(size: dict[str, Any]) -> None:
    """One batch size's SFT and DSKD steps, and the measured peak beside `plan`."""
    print(f"3. training steps, {size['batch']} x {size['seq']} tokens (bf16 on CUDA, LoRA r16, 8-layer student)")
    for kind in ("sft", "dskd"):
        step = size[kind]
        if "error" in step:
            print(f"   {kind}: FAILED\n{step['error']}")
            continue
        memory = f", peak allocated {step['peak_allocated_mib']:.0f} MiB" if "peak_allocated_mib" in step else ""
        print(f"   {kind}: {step['tokens_per_s']:.0f} tokens/s, losses finite {step['finite']}{memory}")
    sft, dskd, plan_mib = size["sft"], size["dskd"], size["plan_mib"]
    if "peak_reserved_mib" not in sft or "peak_reserved_mib" not in dskd:
        return
    print(f"   DSKD / SFT tokens/s: {dskd['tokens_per_s'] / sft['tokens_per_s']:.2f}")
    without_context = plan_mib["total"] - plan_mib["CUDA context"]
    print(f"   DSKD peak allocated {dskd['peak_allocated_mib']:.0f} MiB, reserved {dskd['peak_reserved_mib']:.0f}")
    print(f"   plan without the CUDA context {without_context:.0f} MiB")
    context, constant = dskd["context_mib"], plan_mib["CUDA context"]
    print(f"   CUDA context at a worker's start {context:.0f} MiB; plan's constant {constant:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=4096, help="loss rows (batch x response tokens)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="outputs/gpu_step")
    parser.add_argument("--worker", choices=("sft", "dskd"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(step_worker(args.worker, args.batch, args.seq, args.steps, args.device)))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = report(args)
    (Path(args.out) / "gpu_step.json").write_text(json.dumps(results, indent=1))
    print_summary(results)
    failed = results["loss_accuracy"]["verdict"] != "PASS" or any(
        "error" in size[kind] or not size[kind]["finite"] for size in results["steps"] for kind in ("sft", "dskd")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
