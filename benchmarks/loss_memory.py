"""Peak memory and time the dual-space loss adds (forward + backward): chunked vs the
unchunked reference, side by side in one run, each variant in a fresh process.

Shapes (issue 4): student d=576, V_s=49152 (SmolLM2); teacher D=896, V_t=151936 (Qwen2);
2048 loss rows; fp32; trainable student head (full fine-tune, the costlier case).
"Added" memory = peak RSS during forward+backward minus the RSS once hidden states,
heads and projector weights are resident (the kernel's peak-RSS counter is reset there).

    python -m benchmarks.loss_memory [--rows 2048] [--chunk-sizes 256 512 1024]   # from the repository root
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

D_S, V_S, D_T, V_T = 576, 49152, 896, 151936


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, rows: int, chunk_size: int) -> None:
    import torch

    from axolotl_dskd.loss.chunked import chunked_loss
    from axolotl_dskd.loss.config import LossConfig
    from axolotl_dskd.loss.heads import Heads
    from axolotl_dskd.loss.projectors import T2SProjector
    from tests.oracles.reference_loss import reference_dskd

    torch.manual_seed(0)
    student_hidden = torch.randn(rows, D_S, requires_grad=True)
    teacher_hidden = torch.randn(rows, D_T)
    labels = torch.randint(0, V_S, (rows,))
    student_head = torch.nn.Parameter(torch.randn(V_S, D_S) * 0.05)
    teacher_head = torch.randn(V_T, D_T) * 0.05
    projector = T2SProjector(D_T, D_S).weight
    heads = Heads(student_head, teacher_head, V_S, V_S, projector, torch.randn(D_T, D_S) * 0.05)
    cfg = LossConfig(chunk_size=chunk_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    resident = _status_kib("VmRSS")
    start = time.perf_counter()
    if variant == "reference":
        loss = reference_dskd(student_hidden, teacher_hidden, labels, heads, cfg)
    else:
        loss = chunked_loss(student_hidden, teacher_hidden, labels, heads, cfg)[0]
    loss.backward()
    seconds = time.perf_counter() - start
    added_mib = (_status_kib("VmHWM") - resident) / 1024
    print(json.dumps({"added_mib": added_mib, "seconds": seconds, "loss": loss.item()}))


def run(variant: str, rows: int, chunk_size: int) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.loss_memory",
        "--worker",
        variant,
        "--rows",
        str(rows),
        "--chunk-sizes",
        str(chunk_size),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--worker", choices=("reference", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows, args.chunk_sizes[0])
        return
    reference = run("reference", args.rows, args.rows)
    print(f"{args.rows} loss rows; student d={D_S} V={V_S}; teacher D={D_T} V={V_T}; fp32, forward + backward")
    print(f"{'variant':>22} {'added MiB':>10} {'seconds':>8} {'memory':>8} {'time':>6}")
    baseline = f"{reference['added_mib']:10.0f} {reference['seconds']:8.2f}"
    print(f"{'unchunked reference':>22} {baseline} {'1.00x':>8} {'1.00x':>6}")
    for chunk_size in args.chunk_sizes:
        chunked = run("chunked", args.rows, chunk_size)
        assert abs(chunked["loss"] - reference["loss"]) <= 1e-4 * abs(reference["loss"]), (chunked, reference)
        memory = chunked["added_mib"] / reference["added_mib"]
        duration = chunked["seconds"] / reference["seconds"]
        print(
            f"{'chunked, ' + str(chunk_size) + ' rows':>22} {chunked['added_mib']:10.0f} {chunked['seconds']:8.2f} "
            f"{memory:7.2f}x {duration:5.2f}x"
        )


if __name__ == "__main__":
    main()
