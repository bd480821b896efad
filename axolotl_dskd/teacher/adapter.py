"""Check `dskd_teacher_adapter` before any model loads: the adapter exists, is a PEFT LoRA
adapter, and every module it adapts exists in the teacher with the shapes it was trained on.

The teacher is built on the meta device from its config (no weights are read), so a
7B teacher costs a second here rather than minutes and gigabytes later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from axolotl_dskd.errors import DSKDConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
QUANTIZED_KEYS = ("dskd_teacher_load_in_4bit", "dskd_teacher_load_in_8bit")


def _fetch(adapter: str, revision: str | None, filename: str) -> Path | None:
    """A file of the adapter: from its local directory, else from the hub (or its cache)."""
    local = Path(adapter).expanduser()
    if local.exists():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(adapter, filename, revision=revision))
    except Exception:  # noqa: BLE001 - any hub failure means: not found here
        return None


def adapter_weights(adapter: str, revision: str | None) -> Path:
    """The weights file of a LoRA adapter, or one clear DSKDConfigError."""
    local = Path(adapter).expanduser()
    if local.exists() and not local.is_dir():
        raise DSKDConfigError(f"dskd_teacher_adapter: {adapter!r} is a file; give the adapter's directory")
    config_path = _fetch(adapter, revision, CONFIG_FILE)
    if config_path is None:
        where = "directory has no" if local.exists() else "is not a local directory, and the hub (or its cache) has no"
        raise DSKDConfigError(
            f"dskd_teacher_adapter: {adapter!r} {where} {CONFIG_FILE}; point it at the output_dir of the "
            "teacher's stage-1 LoRA/QLoRA run"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise DSKDConfigError(
            f"dskd_teacher_adapter: {adapter!r} is a {config.get('peft_type')} adapter; only LoRA (and QLoRA) "
            "adapters are supported"
        )
    weights = next((path for name in WEIGHT_FILES if (path := _fetch(adapter, revision, name))), None)
    if weights is None:
        raise DSKDConfigError(f"dskd_teacher_adapter: {adapter!r} has no {' or '.join(WEIGHT_FILES)}")
    return weights


def _adapter_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    return {key: tuple(value.shape) for key, value in torch.load(weights, map_location="meta").items()}


def _module_name(key: str) -> tuple[str, str]:
    """('model.layers.0.self_attn.q_proj', 'lora_A') from a PEFT state-dict key."""
    name = key.removeprefix("base_model.model.")
    for wrapper in (".base_layer", ".modules_to_save.default", ".original_module"):  # PEFT's own module wrappers
        name = name.replace(wrapper, "")
    for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
        if f".{part}" in name:
            return name.split(f".{part}")[0], part
    return name.rsplit(".", 1)[0], "saved"


def _meta_teacher(cfg: Any) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        cfg.dskd_teacher_model,
        revision=cfg.dskd_teacher_revision,
        trust_remote_code=cfg.dskd_teacher_trust_remote_code,
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.dskd_teacher_trust_remote_code)


def check_teacher_adapter(cfg: Any) -> None:
    """Every module the adapter touches exists in the teacher with matching in/out sizes;
    a quantized teacher keeps LoRA unmerged, so its output head must stay untouched."""
    adapter = cfg.dskd_teacher_adapter
    weights = adapter_weights(adapter, cfg.dskd_teacher_adapter_revision)
    teacher = _meta_teacher(cfg)
    modules = dict(teacher.named_modules())
    head_name = next(name for name, module in modules.items() if module is teacher.get_output_embeddings())
    quantized = next((key for key in QUANTIZED_KEYS if getattr(cfg, key, False)), None)
    for key, shape in _adapter_shapes(weights).items():
        name, part = _module_name(key)
        module = modules.get(name)
        if module is None:
            raise DSKDConfigError(
                f"dskd_teacher_adapter: {adapter!r} adapts {name!r}, which the teacher {cfg.dskd_teacher_model!r} "
                f"({teacher.config.model_type}) does not have: it was trained on another architecture"
            )
        if quantized and name == head_name:
            raise DSKDConfigError(
                f"dskd_teacher_adapter: {adapter!r} changes the output head {name!r}, which a quantized teacher "
                f"cannot apply unmerged; drop {quantized} or merge the adapter into the teacher first"
            )
        if isinstance(module, torch.nn.Linear) and part in ("lora_A", "lora_B"):
            size, expected = (shape[1], module.in_features) if part == "lora_A" else (shape[0], module.out_features)
            if size != expected:
                side = "input" if part == "lora_A" else "output"
                raise DSKDConfigError(
                    f"dskd_teacher_adapter: {adapter!r} expects {name!r} with {side} size {size}, but the teacher "
                    f"{cfg.dskd_teacher_model!r} has {expected}: it was trained on a model of another size"
                )
