"""Peak memory of a DSKD run before and after the projector init and s2t map stopped
forming pseudo-inverses, side by side with SFT of the same student, in one run.

Each variant is a real `axolotl train` (in a child process of its own, one at a time,
3 LoRA steps of 8 arithmetic rows) on one of three pairs:
- `same`: SmolLM2-135M-Instruct -> its first 8 layers (one vocabulary, 49,152 tokens);
- `cross`: Qwen2.5-Coder-0.5B-Instruct -> SmolLM2-135M-Instruct (the demo's pair);
- `wide`: a synthetic untied Qwen2-architecture teacher (Qwen2's 151,936-token vocabulary,
  hidden 2048, 2 layers, random weights) -> Qwen2.5-Coder-0.5B-Instruct (same vocabulary).
Variants: `sft` (no plugin), `pinv` (the projectors as they were: explicit
torch.linalg.pinv of the heads, pinv(W_t) kept for the run; patched in for this
benchmark) and `normal` (the package as it is). Printed per run: the whole process's peak
RSS, the peak over the training steps, and the time the DSKD step took to build (the
projector init and the s2t map).

    python benchmarks/init_memory.py [--pairs same cross wide] [--out outputs/init_memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from axolotl_dskd.assets import fetch as assets
from axolotl_dskd.commands.demo import CPU_SETTINGS, LORA_SETTINGS, demo_rows, offline_env

VARIANTS = ("sft", "pinv", "normal")
STEPS = 3


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """Samples this process's RSS every 20 ms; `mark()` starts the window of the steps."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.steps_started: float | None = None
        self.steps_peak = 0.0

    def run(self) -> None:
        while True:
            rss = _rss_mib("VmRSS:")
            if self.steps_started is not None:
                self.steps_peak = max(self.steps_peak, rss)
            time.sleep(0.02)

    def mark(self) -> None:
        if self.steps_started is None:
            self.steps_started = time.perf_counter()


def explicit_pinv_projectors() -> None:
    """Patch in the projectors as they were before: explicit pseudo-inverses in float32."""
    import torch

    from axolotl_dskd.distill import step
    from axolotl_dskd.loss import projectors

    def rows(head: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return head.detach().index_select(0, ids.to(head.device)).float()

    def pinv_t2s_weight(student_head, teacher_head, vocab):
        student_rows, teacher_rows = rows(student_head, vocab.student_ids), rows(teacher_head, vocab.teacher_ids)
        weight = torch.linalg.pinv(student_rows) @ teacher_rows
        residual = teacher_rows - student_rows @ weight
        return weight, (residual.norm() / teacher_rows.norm().clamp_min(1e-12)).item()

    class S2TMap:
        def __init__(self, teacher_head, vocab) -> None:
            self.vocab = vocab
            self.teacher_head_pinv = torch.linalg.pinv(rows(teacher_head, vocab.teacher_ids))  # [D, V], kept
            self._cached = None

        def weight(self, student_head, teacher_head):
            if self._cached is None:
                weight = self.teacher_head_pinv @ rows(student_head, self.vocab.student_ids)
                if not student_head.requires_grad:
                    self._cached = weight
                return weight
            return self._cached

    projectors.pinv_t2s_weight = pinv_t2s_weight
    step.S2TMap = S2TMap


def child(variant: str, config: Path) -> None:
    """One training run in this process; prints one JSON line of its measurements."""
    import transformers

    from axolotl_dskd.distill import step

    sampler = RssSampler()
    sampler.start()
    if variant == "pinv":
        explicit_pinv_projectors()
    built: dict[str, float] = {}
    original_init = step.DistillationStep.__init__

    def timed_init(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        original_init(self, *args, **kwargs)
        built["seconds"] = time.perf_counter() - start

    step.DistillationStep.__init__ = timed_init
    original_step = transformers.Trainer.training_step

    def marked_step(self, *args: Any, **kwargs: Any):
        sampler.mark()
        return original_step(self, *args, **kwargs)

    transformers.Trainer.training_step = marked_step
    from axolotl.cli.train import do_cli

    do_cli(config=str(config))
    time.sleep(0.1)
    record = {
        "peak_mib": _rss_mib("VmHWM:"),
        "steps_peak_mib": sampler.steps_peak,
        "init_seconds": built.get("seconds"),
    }
    print("INIT_MEMORY " + json.dumps(record), flush=True)


def wide_teacher(out: Path) -> Path:
    """A random untied Qwen2-architecture model over Qwen2's vocabulary, hidden 2048."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = out / "wide-teacher"
    if (path / "model.safetensors").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(assets.qwen_coder_instruct())
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pair(name: str, out: Path) -> tuple[Path, Path]:
    """(student, teacher) folders of a pair."""
    if name == "same":
        teacher = assets.smollm2_instruct()
        return assets.truncated_copy(teacher, assets.CUT_STUDENT_LAYERS), teacher
    if name == "cross":
        return assets.smollm2_instruct(), assets.qwen_coder_instruct()
    return assets.qwen_coder_instruct(), wide_teacher(out)


def config(name: str, variant: str, out: Path) -> Path:
    student, teacher = pair(name, out)
    rows, _ = demo_rows()
    data = assets.write_jsonl(rows, out / "rows.jsonl")
    run = out / f"{name}-{variant}"
    cfg: dict[str, Any] = {
        "base_model": str(student),
        "datasets": [{"path": str(data), "type": "chat_template", "field_messages": "messages", "ds_type": "json"}],
        "dataset_prepared_path": str(out / f"prepared-{name}"),
        "output_dir": str(run),
        "sequence_len": 256,
        **LORA_SETTINGS,
        "micro_batch_size": 8,
        "max_steps": STEPS,
        "save_steps": 1000,
        "learning_rate": 5e-4,
        "val_set_size": 0,
        "logging_steps": 1,
        **CPU_SETTINGS,
    }
    if variant != "sft":
        cfg |= {"plugins": ["axolotl_dskd.DSKDPlugin"], "dskd_teacher_model": str(teacher), "dskd_teacher_fit_rows": 0}
    path = out / f"{name}-{variant}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(name: str, variant: str, out: Path) -> dict[str, Any]:
    path = config(name, variant, out)
    command = [sys.executable, __file__, "--child", variant, str(path)]
    result = subprocess.run(command, env=offline_env(), capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("INIT_MEMORY ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{name} {variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("INIT_MEMORY "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=["same", "cross", "wide"], default=["same", "cross", "wide"])
    parser.add_argument("--out", default="outputs/init_memory")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("| pair | variant | whole-process peak MiB | peak over the steps MiB | peak / steps | init s |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name in args.pairs:
        for variant in VARIANTS:
            record = measure(name, variant, out)
            results[f"{name}-{variant}"] = record
            init = "-" if record["init_seconds"] is None else f"{record['init_seconds']:.1f}"
            ratio = record["peak_mib"] / max(record["steps_peak_mib"], 1.0)
            print(
                f"| {name} | {variant} | {record['peak_mib']:,.0f} | {record['steps_peak_mib']:,.0f} | "
                f"{ratio:.2f} | {init} |",
                flush=True,
            )
    print("\n| pair | DSKD peak minus SFT peak, pinv | normal | teacher weights + 25% of its head + 0.5 GiB |")
    print("|---|---|---|---|")
    for name in args.pairs:
        _, teacher = pair(name, out)
        weights = sum(path.stat().st_size for path in teacher.glob("*.safetensors")) / 2**20
        head = head_mib(teacher)
        extra = {
            variant: results[f"{name}-{variant}"]["peak_mib"] - results[f"{name}-sft"]["peak_mib"]
            for variant in VARIANTS
        }
        bound = weights + 0.25 * head + 512
        print(f"| {name} | {extra['pinv']:,.0f} | {extra['normal']:,.0f} | {bound:,.0f} |")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def head_mib(model_dir: Path) -> float:
    """The output head's fp32 size: vocabulary x hidden x 4 bytes."""
    config = json.loads((model_dir / "config.json").read_text())
    return config["vocab_size"] * config["hidden_size"] * 4 / 2**20


if __name__ == "__main__":
    sys.exit(main())
