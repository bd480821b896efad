"""The checks that need a GPU, through Axolotl, in one call of at most 9 minutes.

The models are built there from real configurations with random weights and real
tokenizers (`benchmarks/gpu_kit.py`): mechanics, memory and speed are real, the losses
mean nothing. Each check is a short `accelerate launch -m axolotl.cli.train` run (or the
fast refusal of a config we do not support), reported as PASS/FAIL with the first error
line, tokens/s per GPU and peak GPU memory from Axolotl's own logs beside what
`axolotl-dskd plan` estimated. The checks run most valuable first, and the record is
rewritten after each one, so a call cut off still brings back what finished.

    python -m benchmarks.gpu_check --kit KIT --out OUT [--record OUT/gpu_record.json]
    python -m benchmarks.gpu_check --kit KIT --out OUT --dry-run          # on a CPU: configs + plan
    python -m benchmarks.gpu_check --kit KIT --out OUT --cpu --scale tiny --only dskd_same,dskd_cross
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.assets.fetch import write_jsonl
from axolotl_dskd.commands.demo import CPU_SETTINGS, LORA_SETTINGS, demo_rows
from benchmarks import gpu_kit

EXAMPLES = Path(__file__).resolve().parent.parent / "example_yamls"
GPU = {"bf16": True, "attn_implementation": "sdpa", "gradient_checkpointing": False}
PACKED = {"sample_packing": True, "sequence_len": 1024}
QLORA = {"adapter": "qlora", "load_in_4bit": True, "dskd_teacher_load_in_4bit": True}
RUN_ENV = {"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
RUN_ENV |= {"WANDB_MODE": "disabled"}
EXCEPTION = re.compile(r"^[\w.]+(Error|Exception)\b.*:")


@dataclass(frozen=True)
class Check:
    """One run: its config, how many processes, and the refusal it must end with (if any)."""

    cfg: dict[str, Any]
    processes: int = 1
    refusal: str | None = None
    cache: bool = False  # build the teacher cache first
    kill_and_resume: bool = False


def checks(out: Path, models: dict[str, Path], steps: int, cpu: bool) -> dict[str, Check]:
    """name -> check, most valuable first."""
    data = arithmetic_data(out)
    device = CPU_SETTINGS if cpu else GPU
    common = {
        "plugins": ["axolotl_dskd.DSKDPlugin"],
        "datasets": [{"path": str(data), "type": "chat_template", "ds_type": "json", "field_messages": "messages"}],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(out / "prepared"),
        "sequence_len": 256,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "save_steps": steps,
        "learning_rate": 5e-4,
        "logging_steps": 1,
        "val_set_size": 0,
        "seed": 42,
        "dskd_teacher_fit_rows": 16,
        **LORA_SETTINGS,
        **device,
    }
    student, teacher = str(models["smollm2-135m-8layers"]), str(models["smollm2-135m"])
    same = common | {"base_model": student, "dskd_teacher_model": teacher}
    cross = common | {"base_model": str(models["smollm2-135m"]), "dskd_teacher_model": str(models["qwen2.5-0.5b"])}
    wide = cross | {"dskd_teacher_model": str(models["qwen2.5-3b"])}
    full = {key: value for key, value in same.items() if key not in LORA_SETTINGS}
    fsdp_config = yaml.safe_load((EXAMPLES / "fsdp2-full-finetune.yml").read_text())["fsdp_config"]
    fsdp2 = {"fsdp_version": 2, "fsdp_config": fsdp_config | {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
    zero3 = {"deepspeed": str(EXAMPLES / "deepspeed" / "zero3.json")}
    return {
        "dskd_same": Check(same),
        "sft_same": Check(without_plugin(same)),
        "dskd_cross": Check(cross),
        "sft_cross": Check(without_plugin(cross)),
        "dskd_qlora_4bit_teacher": Check(same | QLORA),
        "dskd_teacher_cache": Check(same | {"dskd_teacher_cache": str(out / "teacher_cache")}, cache=True),
        "dskd_packed_same": Check(same | PACKED),
        "dskd_packed_cross": Check(cross | PACKED),
        "dskd_wide_teacher": Check(wide),
        "dskd_deepspeed_zero2": Check(same | {"deepspeed": str(EXAMPLES / "deepspeed" / "zero2.json")}),
        "dskd_deepspeed_zero3_full": Check(full | zero3),
        "dskd_fsdp2_full": Check(full | fsdp2),
        "dskd_kill_and_resume": Check(same | {"save_steps": max(1, steps // 2)}, kill_and_resume=True),
        "dskd_zero3_4bit_teacher_refused": Check(
            same | zero3 | {"dskd_teacher_load_in_4bit": True},
            refusal="dskd_teacher_load_in_4bit: ZeRO-3 partitions the teacher across ranks",
        ),
    }


def without_plugin(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same run as plain SFT: no plugin line, no dskd_ key."""
    return {key: value for key, value in cfg.items() if key != "plugins" and not key.startswith("dskd_")}


def arithmetic_data(out: Path) -> Path:
    """The demo's arithmetic chat rows, repeated so that packing fills its bins."""
    train_rows, _ = demo_rows()
    return write_jsonl(train_rows * 8, out / "arithmetic.jsonl")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, **RUN_ENV)


def first_error_line(log: str) -> str:
    """The line a reader needs: the last exception of the log (not the launcher's own
    CalledProcessError), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION.match(line) and not line.startswith("subprocess.")]
    return (errors or lines or ["(no output)"])[-1][:300]


def train(path: Path, processes: int, log: Path, kill_when: Path | None = None) -> int:
    """`accelerate launch -m axolotl.cli.train path`; with `kill_when`, SIGKILL its process
    group as soon as that folder appears (a preempted job)."""
    command = _command("accelerate.commands.launch", "--num_processes", str(processes), "-m", "axolotl.cli.train")
    with log.open("a") as handle:
        process = subprocess.Popen(
            [*command, str(path)], env=_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        while kill_when is not None and process.poll() is None and not kill_when.exists():
            time.sleep(0.05)
        if kill_when is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def run(name: str, check: Check, out: Path) -> dict[str, Any]:
    cfg = check.cfg | {"output_dir": str(out / name)}
    path = out / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = out / f"{name}.log"
    log.write_text("")
    started = time.monotonic()
    if check.cache:
        cache_command = _command("axolotl_dskd.commands.cli", "cache-teacher", str(path))
        built = subprocess.run(cache_command, env=_env(), capture_output=True, text=True)
        log.write_text(built.stdout + built.stderr)
        if built.returncode != 0:
            return {"ok": False, "note": f"cache-teacher: {first_error_line(built.stdout + built.stderr)}"}
    if check.kill_and_resume:
        first_checkpoint = out / name / f"checkpoint-{cfg['save_steps']}"
        train(path, check.processes, log, kill_when=first_checkpoint / "dskd_projector.safetensors")
        path.write_text(yaml.safe_dump(cfg | {"auto_resume_from_checkpoints": True}, sort_keys=False))
    code = train(path, check.processes, log)
    text = log.read_text()
    seconds = round(time.monotonic() - started, 1)
    if check.refusal is not None:
        ok = code != 0 and check.refusal in text
        return {"ok": ok, "note": "refused as expected" if ok else first_error_line(text), "seconds": seconds}
    if code != 0:
        return {"ok": False, "note": first_error_line(text), "seconds": seconds}
    return measured(out / name, cfg, path, check, seconds, text)


def measured(run_dir: Path, cfg: dict, path: Path, check: Check, seconds: float, log: str) -> dict[str, Any]:
    state = json.loads((run_dir / f"checkpoint-{cfg['max_steps']}" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    losses = [float(entry["loss"]) for entry in logged]
    speed_key = "tokens/train_per_sec_per_gpu"
    speeds = [float(entry[speed_key]) for entry in logged if speed_key in entry]
    memory = [float(entry.get("memory/max_allocated (GiB)", 0)) for entry in logged]
    distils = "plugins" not in cfg or "kd_loss" in (logged[0] if logged else {})
    ok = bool(losses) and all(map(math.isfinite, losses)) and distils
    if check.kill_and_resume:
        ok = ok and "Resuming training from checkpoint" in log
    return {
        "ok": ok,
        "note": f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (random weights)" if losses else "no loss logged",
        "tokens_per_s": statistics.median(speeds[1:] or speeds) if speeds else None,
        "peak_gib": max(memory) if memory else None,
        "planned_gib": planned_gib(path, check.processes),
        "seconds": seconds,
    }


def planned_gib(path: Path, processes: int) -> float | None:
    """What `axolotl-dskd plan` estimated for this config, to set beside the measured peak."""
    command = _command("axolotl_dskd.commands.cli", "plan", "--json", "--gpus", str(processes), str(path))
    result = subprocess.run(command, env=_env(), capture_output=True, text=True)
    return json.loads(result.stdout)["total"] / 2**30 if result.returncode == 0 else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """DSKD beside SFT on the same student and batch, measured in this one call."""
    found = {}
    for vocabulary in ("same", "cross"):
        dskd, sft = results.get(f"dskd_{vocabulary}", {}), results.get(f"sft_{vocabulary}", {})
        for key, label in (("tokens_per_s", "tokens_per_s"), ("peak_gib", "peak_memory")):
            if dskd.get(key) and sft.get(key):
                found[f"dskd_over_sft_{label}_{vocabulary}"] = round(dskd[key] / sft[key], 3)
    return found


def line(name: str, result: dict[str, Any]) -> str:
    speed = f"{result['tokens_per_s']:.0f} tok/s/GPU" if result.get("tokens_per_s") else ""
    memory = f"{result['peak_gib']:.2f} GiB" if result.get("peak_gib") else ""
    planned = f"plan {result['planned_gib']:.2f} GiB" if result.get("planned_gib") else ""
    verdict = "PASS" if result["ok"] else "FAIL"
    return f"{verdict}  {name:<32} {result['note'][:80]:<80} {speed:>16} {memory:>10} {planned}"


def device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", type=Path, required=True, help="the folder `gpu_kit pack` wrote")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    parser.add_argument("--record", type=Path, help="the JSON record (default: OUT/gpu_record.json)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument("--cpu", action="store_true", help="CPU settings (a rehearsal of the GPU call)")
    parser.add_argument("--only", help="comma-separated check names")
    parser.add_argument("--dry-run", action="store_true", help="write the configs and print the plan; train nothing")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    dtype = "float32" if args.cpu else "bfloat16"
    names = list(gpu_kit.SHAPES)
    models = {name: out / "models" / f"{name}-{args.scale}" for name in names}
    if not args.dry_run:
        models = gpu_kit.build(args.kit, out / "models", names, args.scale, dtype)
    selected = checks(out, models, args.steps, args.cpu)
    if args.only:
        selected = {name: selected[name] for name in args.only.split(",")}
    if args.dry_run:
        print(f"gpu_check plan: {len(selected)} checks, in this order, {args.steps} steps each, models {args.scale}:")
        for index, (name, check) in enumerate(selected.items(), start=1):
            (out / f"{name}.yml").write_text(yaml.safe_dump(check.cfg | {"output_dir": str(out / name)}))
            extra = " (teacher cache first)" if check.cache else ""
            extra += " (killed, then auto-resumed)" if check.kill_and_resume else ""
            expects = f" must be refused: {check.refusal}" if check.refusal else ""
            print(f"  {index:>2}. {name:<34} {check.processes} process(es){extra}{expects}")
        print(f"configs written to {out}")
        return 0
    record_path = args.record or out / "gpu_record.json"
    record: dict[str, Any] = {"device": device(), "scale": args.scale, "steps": args.steps, "checks": {}}
    for name, check in selected.items():
        record["checks"][name] = run(name, check, out)
        record["ratios"] = ratios(record["checks"])
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        print(line(name, record["checks"][name]), flush=True)
    for key, value in record["ratios"].items():
        print(f"{key}: {value:.2f}x")
    return 0 if all(result["ok"] for result in record["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
