"""The normal-equations projectors against explicit pseudo-inverses on real heads, and what
rebuilding the s2t map costs per step when the student head trains, side by side.

Heads: SmolLM2-135M-Instruct (49,152 x 576) with itself, and Qwen2.5-Coder-0.5B-Instruct
(151,936 x 896) with SmolLM2 over their 39,234 tokens of identical bytes. Printed: the
relative Frobenius difference of both maps from `torch.linalg.pinv(A) @ B` in float32 (what
the projectors computed before), and the seconds of one s2t rebuild from a training head
beside the product a stored `pinv(W_t)` would cost.

    python benchmarks/projector_heads.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors import safe_open

from axolotl_dskd.assets import fetch as assets
from axolotl_dskd.loss.projectors import S2TMap, TokenPairs, pinv_t2s_weight
from axolotl_dskd.tokens.vocab import VocabBridge, load_tokenizer


def output_head(model_dir: Path) -> torch.Tensor:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        name = "lm_head.weight" if "lm_head.weight" in weights.keys() else "model.embed_tokens.weight"  # noqa: SIM118
        return weights.get_tensor(name).float()


def relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    return ((found - expected).norm() / expected.norm()).item()


def seconds(work, *args: torch.Tensor) -> float:
    start = time.perf_counter()
    work(*args)
    return time.perf_counter() - start


def main() -> None:
    student_dir, qwen_dir = assets.smollm2_instruct(), assets.qwen_coder_instruct()
    print(f"threads: {torch.get_num_threads()}")
    print("| heads | shared rows | t2s vs pinv | s2t vs pinv | s2t rebuild per step | stored-pinv product |")
    print("|---|---|---|---|---|---|")
    for label, teacher_dir in (("SmolLM2 -> SmolLM2", student_dir), ("Qwen2.5-Coder-0.5B -> SmolLM2", qwen_dir)):
        student, teacher = output_head(student_dir), output_head(teacher_dir)
        if teacher_dir == student_dir:
            vocab = TokenPairs.first_ids(student.shape[0])
        else:
            bridge = VocabBridge.build(load_tokenizer(str(student_dir)), load_tokenizer(str(teacher_dir)))
            vocab = TokenPairs(bridge.shared_student_ids, bridge.shared_teacher_ids)
        student_rows, teacher_rows = student[vocab.student_ids], teacher[vocab.teacher_ids]
        t2s, _ = pinv_t2s_weight(student, teacher, vocab)
        stored = torch.linalg.pinv(teacher_rows)
        training_head = torch.nn.Parameter(student.clone())
        s2t_map = S2TMap(teacher, vocab)
        rebuild = seconds(s2t_map.weight, training_head, teacher)
        product = seconds(torch.matmul, stored, student_rows)
        t2s_error = relative(t2s, torch.linalg.pinv(student_rows) @ teacher_rows)
        s2t_error = relative(s2t_map.weight(training_head, teacher), stored @ student_rows)
        print(
            f"| {label} | {len(vocab):,} | {t2s_error:.1e} | {s2t_error:.1e} | {rebuild:.2f} s | {product:.2f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
