"""`axolotl-dskd plan`: the parameter-sized components equal what the loaded models hold;
the command prints one JSON object or one line for a YAML that does not validate."""

from __future__ import annotations

import json

import pytest
import torch
from axolotl.utils.dict import DictDefault
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from axolotl_dskd.planning.memory import GIB, model_shape, plan
from tests.tiny import base_config, lora, run_cli


def _bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _cfg(tiny, tmp_path, **overrides) -> DictDefault:
    return DictDefault(base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | overrides)


def test_weights_gradients_and_optimizer_equal_the_loaded_models(tiny, tmp_path) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    full = plan(_cfg(tiny, tmp_path)).components
    assert full["teacher weights"] == _bytes(teacher)
    assert full["student weights"] == _bytes(student)
    assert full["gradients"] == _bytes(student)
    assert full["optimizer states"] == 2 * _bytes(student)  # AdamW: two fp32 moments
    projector = teacher.config.hidden_size * student.config.hidden_size
    assert full["t2s projector + Adam"] == 16 * projector


def test_lora_parameters_equal_peft_s_trainable_parameters(tiny, tmp_path) -> None:
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    adapted = get_peft_model(student, LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    components = plan(DictDefault(lora(dict(_cfg(tiny, tmp_path))))).components
    assert components["LoRA parameters"] == trainable * 4
    assert components["gradients"] == trainable * 4
    assert components["optimizer states"] == trainable * 8
    assert "s2t map" in components and components["s2t map"] == 4 * 64 * 32  # frozen head: [D, d] only


def test_cache_quantization_and_sharding_change_the_components_they_concern(tiny, tmp_path) -> None:
    base = plan(_cfg(tiny, tmp_path)).components
    shape = model_shape(str(tiny.teacher))
    cached = plan(_cfg(tiny, tmp_path, dskd_teacher_cache=str(tmp_path / "cache"))).components
    assert cached["teacher weights"] == shape.head_params * 4
    assert "teacher forward (transient)" not in cached
    four_bit = plan(_cfg(tiny, tmp_path, dskd_teacher_load_in_4bit=True)).components
    assert four_bit["teacher weights"] < base["teacher weights"] * 0.6
    zero3 = plan(_cfg(tiny, tmp_path, deepspeed={"zero_optimization": {"stage": 3}}), gpus=2).components
    assert zero3["student weights"] == base["student weights"] / 2
    assert zero3["optimizer states"] == base["optimizer states"] / 2
    assert zero3["teacher weights"] == base["teacher weights"] / 2
    checkpointed = plan(_cfg(tiny, tmp_path, gradient_checkpointing=True)).components
    assert checkpointed["student activations"] < base["student activations"]


def test_fits_and_savings_follow_the_gpu_memory(tiny, tmp_path) -> None:
    small = plan(_cfg(tiny, tmp_path), gpu_memory=0.1 * GIB)
    assert small.fits is False and "dskd_teacher_cache (axolotl-dskd cache-teacher)" in small.savings
    assert plan(_cfg(tiny, tmp_path), gpu_memory=80 * GIB).fits is True


@pytest.mark.e2e
def test_plan_command_prints_one_json_object_and_refuses_a_bad_yaml(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    result = run_cli(["axolotl-dskd", "plan", "--json", "--gpu-memory", "24GiB"], cfg, tmp_path / "ok")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["fits"] is True and report["total"] == pytest.approx(sum(report["components"].values()))
    assert "loading teacher" not in result.stderr
    bad = run_cli(["axolotl-dskd", "plan"], cfg | {"dskd_temprature": 4.0}, tmp_path / "bad")
    assert bad.returncode == 2
    assert bad.stdout.strip().splitlines()[-1].startswith("plan: ")
    assert "dskd_temprature: not a key of the DSKD plugin; did you mean dskd_temperature?" in bad.stdout
