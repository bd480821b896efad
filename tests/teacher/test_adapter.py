"""dskd_teacher_adapter: a stage-1 LoRA adapter applied to the teacher without merging by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from axolotl_dskd.teacher.loading import TeacherSpec, load_teacher
from tests.integration.test_args import _validate

CPU = torch.device("cpu")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _merged_by_hand(base: Path, adapter: Path) -> torch.nn.Module:
    """W + (alpha / r) B A for every adapted linear layer, written without PEFT."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(adapter / "adapter_model.safetensors")
    modules = dict(model.named_modules())
    for key, lora_a in weights.items():
        if ".lora_A." not in key:
            continue
        name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        lora_b = weights[key.replace(".lora_A.", ".lora_B.")]
        with torch.no_grad():
            modules[name].weight += scale * lora_b @ lora_a
    return model.eval()


def test_adapter_changes_the_teacher_and_equals_a_merged_copy(tiny, tiny_adapters) -> None:
    ids = torch.tensor([[5, 17, 42, 99, 7, 300, 12]])
    base = load_teacher(TeacherSpec(str(tiny.teacher)), CPU)
    adapted = load_teacher(TeacherSpec(str(tiny.teacher), adapter=str(tiny_adapters.teacher)), CPU)
    merged = _merged_by_hand(tiny.teacher, tiny_adapters.teacher)
    assert (_logits(adapted, ids) - _logits(base, ids)).abs().max() > 1e-2
    assert torch.allclose(_logits(adapted, ids), _logits(merged, ids), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in adapted.parameters())
    assert not any("lora" in name for name, _ in adapted.named_parameters())  # merged: a plain model again


def test_4bit_teacher_keeps_the_adapter_unmerged_as_it_was_trained(tiny, tiny_adapters) -> None:
    """A QLoRA-trained adapter runs beside the 4-bit weights: the same logits as PEFT's own
    wrapper over the same 4-bit base, not those of the 4-bit base alone."""
    from peft import PeftModel

    ids = torch.tensor([[5, 17, 42, 99, 7, 300, 12]])
    four_bit = TeacherSpec(str(tiny.teacher), load_in_4bit=True)
    base = load_teacher(four_bit, CPU)
    adapted = load_teacher(TeacherSpec(str(tiny.teacher), load_in_4bit=True, adapter=str(tiny_adapters.teacher)), CPU)
    reference = PeftModel.from_pretrained(load_teacher(four_bit, CPU), str(tiny_adapters.teacher)).eval()
    assert (_logits(adapted, ids) - _logits(base, ids)).abs().max() > 1e-2
    assert torch.allclose(_logits(adapted, ids), _logits(reference, ids), atol=1e-5, rtol=1e-5)
    assert any("lora" in name for name, _ in adapted.named_parameters())
    assert not any(p.requires_grad for p in adapted.parameters())


def test_good_adapter_is_accepted_with_any_teacher_mode(tiny, tiny_adapters, tmp_path) -> None:
    for extra in ({}, {"dskd_teacher_load_in_8bit": True}, {"dskd_teacher_load_in_4bit": True}):
        cfg = _validate(tiny, tmp_path, dskd_teacher_adapter=str(tiny_adapters.teacher), **extra)
        assert cfg.dskd_teacher_adapter == str(tiny_adapters.teacher)
    cross = _validate(
        tiny,
        tmp_path,
        dskd_teacher_model=str(tiny.cross_teacher),
        dskd_teacher_adapter=str(tiny_adapters.cross_teacher),
    )
    assert cross.dskd_teacher_adapter == str(tiny_adapters.cross_teacher)


def _error(tiny, tmp_path, **overrides) -> str:
    """The one message the config validation raises (pydantic's str() elides long ones)."""
    with pytest.raises(ValidationError) as caught:
        _validate(tiny, tmp_path, **overrides)
    (error,) = caught.value.errors()
    return error["msg"]


def _renamed_copy(adapter: Path, out: Path, old: str, new: str) -> Path:
    shutil.copytree(adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({key.replace(old, new): value for key, value in weights.items()}, out / "adapter_model.safetensors")
    return out


def test_bad_adapters_are_rejected_with_one_line_before_models_load(tiny, tiny_adapters, tmp_path) -> None:
    missing = tmp_path / "no-such-run"
    assert (
        f"dskd_teacher_adapter: '{missing}' is not a local directory, and the hub (or its cache) has no "
        "adapter_config.json; point it at the output_dir of the teacher's stage-1 LoRA/QLoRA run"
    ) in _error(tiny, tmp_path, dskd_teacher_adapter=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"dskd_teacher_adapter: '{empty}' directory has no adapter_config.json" in _error(
        tiny, tmp_path, dskd_teacher_adapter=str(empty)
    )
    assert (
        f"dskd_teacher_adapter: '{tiny_adapters.student}' expects 'model.layers.0.mlp.down_proj' with input "
        f"size 64, but the teacher '{tiny.teacher}' has 128: it was trained on a model of another size"
    ) in _error(tiny, tmp_path, dskd_teacher_adapter=str(tiny_adapters.student))
    other = _renamed_copy(tiny_adapters.teacher, tmp_path / "gpt2-like", "self_attn.q_proj", "attn.c_attn")
    assert (
        f"dskd_teacher_adapter: '{other}' adapts 'model.layers.0.attn.c_attn', which the teacher '{tiny.teacher}' "
        "(llama) does not have: it was trained on another architecture"
    ) in _error(tiny, tmp_path, dskd_teacher_adapter=str(other))
    assert (
        f"dskd_teacher_adapter: '{tiny_adapters.with_head}' changes the output head 'lm_head', which a quantized "
        "teacher cannot apply unmerged; drop dskd_teacher_load_in_4bit or merge the adapter into the teacher first"
    ) in _error(tiny, tmp_path, dskd_teacher_adapter=str(tiny_adapters.with_head), dskd_teacher_load_in_4bit=True)
    prompt_tuning = tmp_path / "prompt-tuning"
    shutil.copytree(tiny_adapters.teacher, prompt_tuning)
    config = json.loads((prompt_tuning / "adapter_config.json").read_text()) | {"peft_type": "PROMPT_TUNING"}
    (prompt_tuning / "adapter_config.json").write_text(json.dumps(config))
    assert (
        f"dskd_teacher_adapter: '{prompt_tuning}' is a PROMPT_TUNING adapter; only LoRA (and QLoRA) adapters are "
        "supported"
    ) in _error(tiny, tmp_path, dskd_teacher_adapter=str(prompt_tuning))
    assert (
        "dskd_teacher_adapter: ZeRO-3 partitions the teacher while it loads, so its LoRA adapter cannot be merged "
        "into it; merge the adapter into the teacher first (axolotl merge-lora) or use ZeRO-2"
    ) in _error(
        tiny,
        tmp_path,
        dskd_teacher_adapter=str(tiny_adapters.teacher),
        deepspeed={"zero_optimization": {"stage": 3}},
    )
