"""The checks that need a GPU, in one run (about 5 minutes on one modern GPU): short real
`accelerate launch` trainings of a same-vocabulary pair (SmolLM2-135M-Instruct -> its
first 8 layers) and of the demo's cross-tokenizer pair (Qwen2.5-Coder-0.5B-Instruct -> SmolLM2),
each reporting whether it trained (finite, falling loss), tokens/s per GPU and peak GPU
memory from Axolotl's own logs beside what `axolotl-dskd plan` estimated for the same
config; then DSKD vs SFT throughput and memory side by side.

    python benchmarks/gpu_check.py [--out outputs/gpu_check] [--steps 12] [--dry-run]

Checks: plain SFT (bf16, flash-attention 2), DSKD same vocabulary (bf16, FA2), the same
from a teacher cache (built first by `axolotl-dskd cache-teacher`), DSKD across tokenizers
(bf16, FA2), both with `sample_packing` (FA2 varlen), QLoRA student with a 4-bit teacher (CUDA bitsandbytes),
DeepSpeed ZeRO-2 (LoRA), ZeRO-3 and FSDP2 (full fine-tune; the shipped ZeRO-3 JSON and
the example YAML's fsdp_config) over every visible GPU, and the fast failures of a 4-bit
teacher under ZeRO-3 and of FSDP1 (not supported: they must stop before any model loads,
with their one-line message).
`--dry-run` writes the configs only (runs on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.commands import assets
from axolotl_dskd.commands.demo import LORA_SETTINGS, demo_config, offline_env

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "example_yamls"
ZERO2 = EXAMPLES / "deepspeed" / "zero2.json"
ZERO3 = EXAMPLES / "deepspeed" / "zero3.json"
GPU = {"bf16": True, "flash_attention": True, "gradient_checkpointing": False}
# flash-attention varlen: Axolotl packs each micro-batch into one row, positions restart per row
PACKED = {"sample_packing": True, "sequence_len": 1024}


def checks(out: Path, steps: int) -> dict[str, tuple[dict[str, Any], int, str | None]]:
    """name -> (config, processes, expected error or None)."""
    batch = {"save_steps": steps, "micro_batch_size": 4, "gradient_accumulation_steps": 1}
    cross = demo_config(out, steps) | GPU | batch  # the demo's pair: Qwen2.5-Coder-0.5B -> SmolLM2-135M
    base = {key: value for key, value in cross.items() if key != "dskd_teacher_chat_template"} | {
        "base_model": str(assets.truncated_copy(assets.smollm2_instruct(), assets.CUT_STUDENT_LAYERS)),
        "dskd_teacher_model": str(assets.smollm2_instruct()),
    }
    sft = {key: value for key, value in base.items() if key != "plugins" and not key.startswith("dskd_")}
    qlora = base | {"adapter": "qlora", "load_in_4bit": True, "dskd_teacher_load_in_4bit": True}
    gpus = max(1, _gpu_count())
    fsdp_config = yaml.safe_load((EXAMPLES / "fsdp2-full-finetune.yml").read_text())["fsdp_config"]
    fsdp2 = {"fsdp_version": 2, "fsdp_config": fsdp_config | {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
    full_finetune = {key: value for key, value in base.items() if key not in LORA_SETTINGS}
    return {
        "sft_bf16_fa2": (sft, 1, None),
        "dskd_bf16_fa2": (base, 1, None),
        "dskd_teacher_cache_bf16_fa2": (base | {"dskd_teacher_cache": str(out / "teacher_cache")}, 1, None),
        "dskd_cross_tokenizer_bf16_fa2": (cross, 1, None),
        "dskd_packed_bf16_fa2": (base | PACKED, 1, None),
        "dskd_packed_cross_tokenizer_bf16_fa2": (cross | PACKED, 1, None),
        "dskd_qlora_4bit_teacher": (qlora, 1, None),
        "dskd_deepspeed_zero2": (base | {"deepspeed": str(ZERO2)}, gpus, None),
        "dskd_deepspeed_zero3_full_finetune": (full_finetune | {"deepspeed": str(ZERO3)}, gpus, None),
        "dskd_zero3_4bit_teacher_rejected": (
            base | {"deepspeed": str(ZERO3), "dskd_teacher_load_in_4bit": True},
            1,
            "dskd_teacher_load_in_4bit: ZeRO-3 partitions the teacher across ranks",
        ),
        "dskd_fsdp2_full_finetune": (full_finetune | fsdp2, gpus, None),
        "dskd_fsdp1_rejected": (
            base | {"fsdp_version": 1, "fsdp_config": {"reshard_after_forward": True}},
            1,
            "fsdp_version: 1 is not supported",
        ),
    }


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def run(name: str, cfg: dict[str, Any], processes: int, expected_error: str | None, out: Path) -> dict[str, Any]:
    cfg = cfg | {"output_dir": str(out / name)}
    path = out / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if cfg.get("dskd_teacher_cache"):
        built = subprocess.run(
            [str(BIN / "axolotl-dskd"), "cache-teacher", str(path)], env=offline_env(), capture_output=True, text=True
        )
        (out / f"{name}.cache.log").write_text(built.stdout + built.stderr)
        if built.returncode != 0:
            return {"ok": False, "note": f"cache-teacher exit {built.returncode}, see {out / name}.cache.log"}
    command = [str(BIN / "accelerate"), "launch", "--num_processes", str(processes), "-m", "axolotl.cli.train"]
    result = subprocess.run([*command, str(path)], env=offline_env(), capture_output=True, text=True)
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    if expected_error is not None:
        ok = result.returncode != 0 and expected_error in result.stdout + result.stderr
        return {"ok": ok, "note": "rejected as expected" if ok else "NOT rejected with the expected message"}
    if result.returncode != 0:
        return {"ok": False, "note": f"exit {result.returncode}, see {out / name}.log"}
    state = json.loads((out / name / f"checkpoint-{cfg['max_steps']}" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    losses = [float(entry["loss"]) for entry in logged]
    speed_key = "tokens/train_per_sec_per_gpu"
    speeds = [float(entry[speed_key]) for entry in logged if speed_key in entry]
    memory = [float(entry.get("memory/max_allocated (GiB)", 0)) for entry in logged]
    trained = all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    return {
        "ok": trained,
        "note": f"loss {losses[0]:.3f} -> {losses[-1]:.3f}",
        "tokens_per_s": statistics.median(speeds[1:] or speeds) if speeds else None,
        "peak_gib": max(memory) if memory else None,
        "planned_gib": planned_gib(path, processes),
    }


def planned_gib(path: Path, processes: int) -> float | None:
    """What `axolotl-dskd plan` estimated for this config, to set beside the measured peak."""
    command = [str(BIN / "axolotl-dskd"), "plan", "--json", "--gpus", str(processes), str(path)]
    result = subprocess.run(command, env=offline_env(), capture_output=True, text=True)
    return json.loads(result.stdout)["total"] / 2**30 if result.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/gpu_check")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--dry-run", action="store_true", help="write the configs only")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (cfg, processes, expected_error) in checks(out, args.steps).items():
        if args.dry_run:
            (out / f"{name}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            continue
        results[name] = run(name, cfg, processes, expected_error, out)
        result = results[name]
        speed = f"{result['tokens_per_s']:.0f} tok/s/GPU" if result.get("tokens_per_s") else ""
        memory = f"{result['peak_gib']:.2f} GiB" if result.get("peak_gib") else ""
        planned = f"plan {result['planned_gib']:.2f} GiB" if result.get("planned_gib") else ""
        print(
            f"{'PASS' if result['ok'] else 'FAIL'}  {name:<32} {result['note']:<30} {speed:>16} {memory:>10} {planned}"
        )
    if args.dry_run:
        print(f"configs written to {out}")
        return 0
    sft, dskd = results["sft_bf16_fa2"], results["dskd_bf16_fa2"]
    if sft.get("tokens_per_s") and dskd.get("tokens_per_s"):
        print(f"DSKD / SFT tokens per second: {dskd['tokens_per_s'] / sft['tokens_per_s']:.2f}x")
    if sft.get("peak_gib") and dskd.get("peak_gib"):
        print(f"DSKD / SFT peak GPU memory: {dskd['peak_gib'] / sft['peak_gib']:.2f}x")
    cached = results["dskd_teacher_cache_bf16_fa2"]
    if sft.get("tokens_per_s") and cached.get("tokens_per_s"):
        print(f"cached DSKD / SFT tokens per second: {cached['tokens_per_s'] / sft['tokens_per_s']:.2f}x")
    if cached.get("peak_gib") and dskd.get("peak_gib"):
        print(f"cached / live DSKD peak GPU memory: {cached['peak_gib'] / dskd['peak_gib']:.2f}x")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if all(result["ok"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
