"""Every bad config gets one clear error that names the key, through Axolotl's own schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from axolotl.utils.schemas.config import AxolotlInputConfig
from pydantic import ValidationError

from axolotl_dskd.integration import compat
from axolotl_dskd.integration.args import DSKD_KEYS, DSKDArgs, DSKDTrainingArgsMixin
from tests.tiny import base_config, build_tokenizer


class MergedConfig(AxolotlInputConfig, DSKDArgs):
    """What Axolotl builds when the plugin is listed (merge_input_args)."""


def _validate(tiny, tmp_path, **overrides) -> MergedConfig:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | overrides
    return MergedConfig.model_validate({key: value for key, value in cfg.items() if value is not None})


def _error(tiny, tmp_path, **overrides) -> str:
    with pytest.raises(ValidationError) as caught:
        _validate(tiny, tmp_path, **overrides)
    return str(caught.value)


def test_defaults_follow_dskdv2(tiny, tmp_path) -> None:
    cfg = _validate(tiny, tmp_path)
    assert (cfg.dskd_kd_ratio, cfg.dskd_temperature, cfg.dskd_divergence) == (0.5, 2.0, "forward_kl")
    assert (cfg.dskd_projector_lr, cfg.dskd_projector_init, cfg.dskd_agreement_mask) == (5e-4, "pinv", True)
    assert cfg.dskd_method == "dskd" and cfg.dskd_init_topk_vocab is None
    assert cfg.dskd_teacher_trust_remote_code is False


@pytest.mark.parametrize("attention", [None, "sdpa", "eager"])
def test_sample_packing_is_accepted_where_position_ids_keep_rows_apart(tiny, tmp_path, attention) -> None:
    cfg = _validate(tiny, tmp_path, sample_packing=True, attn_implementation=attention)
    assert cfg.sample_packing


def test_training_args_mixin_carries_every_key_with_its_default() -> None:
    mixin = DSKDTrainingArgsMixin()
    assert {key: getattr(mixin, key) for key in DSKD_KEYS} == DSKDArgs.model_construct(
        dskd_teacher_model=None
    ).model_dump()


BAD_SETTINGS = [
    ({"dskd_teacher_model": None}, "dskd_teacher_model: required by axolotl_dskd.DSKDPlugin"),
    ({"dskd_divergence": "kl"}, "dskd_divergence: 'kl' is not supported; use one of: forward_kl, reverse_kl, js,"),
    ({"dskd_alignment": "dtw"}, "dskd_alignment: 'dtw' is not supported; use one of: exact, eta_strict"),
    ({"dskd_method": "dskd_cma"}, "dskd_method: 'dskd_cma' is not supported; use one of: dskd, vanilla_kd"),
    ({"dskd_kd_ratio": 1.5}, "dskd_kd_ratio: 1.5 is outside [0.0, 1.0]"),
    ({"dskd_kd_ratio": -0.1}, "dskd_kd_ratio: -0.1 is outside [0.0, 1.0]"),
    ({"dskd_temperature": 0.0}, "dskd_temperature: 0.0 must be > 0"),
    ({"dskd_temperature": -1.0}, "dskd_temperature: -1.0 must be > 0"),
    ({"dskd_skew_lambda": 1.0}, "dskd_skew_lambda: 1.0 is outside (0.0, 1.0)"),
    ({"dskd_adaptive_kl_alpha": 0.0}, "dskd_adaptive_kl_alpha: 0.0 is outside (0.0, 1.0)"),
    ({"dskd_projector_lr": 0.0}, "dskd_projector_lr: 0.0 must be > 0"),
    ({"dskd_projector_init": "zeros"}, "dskd_projector_init: 'zeros' is not supported; use one of: pinv, random"),
    ({"dskd_init_topk_vocab": 0}, "dskd_init_topk_vocab: 0 must be a positive int or null"),
    ({"dskd_loss_chunk_size": 0}, "dskd_loss_chunk_size: 0 must be > 0"),
    ({"dskd_on_policy_ratio": 1.5}, "dskd_on_policy_ratio: 1.5 is outside [0.0, 1.0]"),
    ({"dskd_on_policy_top_p": 0.0}, "dskd_on_policy_top_p: 0.0 is outside (0.0, 1.0]"),
    ({"dskd_on_policy_max_new_tokens": 0}, "dskd_on_policy_max_new_tokens: 0 must be > 0"),
    ({"dskd_on_policy_temperature": 0.0}, "dskd_on_policy_temperature: 0.0 must be > 0"),
    ({"dskd_on_policy_start_step": -1}, "dskd_on_policy_start_step: -1 must be >= 0"),
    ({"dskd_on_policy_top_k": -5}, "dskd_on_policy_top_k: -5 must be >= 0"),
    ({"dskd_temprature": 4.0}, "dskd_temprature: not a key of the DSKD plugin; did you mean dskd_temperature?"),
    ({"dskd_zzz": 1}, "dskd_zzz: not a key of the DSKD plugin; see docs/configuration.md"),
    ({"dskd_teacher_dtype": "int8"}, "dskd_teacher_dtype: 'int8' is not supported; use one of: auto, float32,"),
    (
        {"dskd_teacher_load_in_4bit": True, "dskd_teacher_load_in_8bit": True},
        "dskd_teacher_load_in_4bit and dskd_teacher_load_in_8bit are both true; choose one",
    ),
    (
        {"sample_packing": True, "attn_implementation": "xformers"},
        "sample_packing: attn_implementation 'xformers' cannot keep packed rows from attending to each other",
    ),
    ({"rl": "dpo"}, "rl: not supported with axolotl_dskd.DSKDPlugin, because DSKD is a supervised fine-tuning loss"),
    (
        {"deepspeed": {"zero_optimization": {"stage": 3}}, "dskd_teacher_load_in_4bit": True},
        "dskd_teacher_load_in_4bit: ZeRO-3 partitions the teacher across ranks, and a bitsandbytes-quantized "
        "teacher cannot be partitioned; use ZeRO-2 with a quantized teacher, or a bf16 teacher under ZeRO-3",
    ),
    (
        {"deepspeed": {"train_batch_size": "auto"}},
        "deepspeed: ZeRO stage 0 is not supported with axolotl_dskd.DSKDPlugin, because without ZeRO DeepSpeed "
        "all-reduces only the student's own gradients, not the t2s projector's; use zero_optimization.stage 1, 2 "
        "or 3, or plain DDP",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SETTINGS, ids=[next(iter(o)) for o, _ in BAD_SETTINGS])
def test_bad_setting_is_rejected_with_a_clear_message(tiny, tmp_path, overrides: dict, message: str) -> None:
    assert message in _error(tiny, tmp_path, **overrides)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_zero_stages_are_accepted(tiny, tmp_path, stage: int) -> None:
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": stage}, "train_batch_size": "auto"}))
    assert _validate(tiny, tmp_path, deepspeed=str(ds_config)).dskd_method == "dskd"


OUR_FSDP1_MESSAGE = (
    "fsdp_version: 1 is not supported with axolotl_dskd.DSKDPlugin, because FSDP1 flattens the student's "
    "parameters, so the loss cannot read its output head; set fsdp_version: 2"
)


def test_fsdp1_is_rejected_with_a_clear_message(tiny, tmp_path) -> None:
    """Axolotl 0.20+ rejects FSDP1 itself, before our validator; 0.19 leaves it to us."""
    message = "fsdp_version: 1 is no longer supported" if compat.FSDP1_REMOVED else OUR_FSDP1_MESSAGE
    assert message in _error(tiny, tmp_path, fsdp_version=1, fsdp_config={"reshard_after_forward": True})


def test_fsdp_config_without_a_version_is_fsdp1_before_axolotl_0_20_and_fsdp2_after(tiny, tmp_path) -> None:
    unversioned = {"fsdp_config": {"reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"}}
    if compat.FSDP1_REMOVED:
        assert _validate(tiny, tmp_path, **unversioned).dskd_method == "dskd"
    else:
        assert OUR_FSDP1_MESSAGE in _error(tiny, tmp_path, **unversioned)


def test_fsdp2_is_accepted(tiny, tmp_path) -> None:
    fsdp = {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"}}
    assert _validate(tiny, tmp_path, **fsdp).dskd_method == "dskd"


def test_cpu_processes_without_max_memory_are_rejected(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "max_memory: WORLD_SIZE=2 on a machine without CUDA needs `max_memory: {cpu: 16GiB}`" in _error(
        tiny, tmp_path
    )


def test_teacher_with_another_vocabulary_switches_to_cross_tokenizer_dskd(tiny, tmp_path) -> None:
    other = build_tokenizer(["completely different text " * 40], tmp_path / "other", vocab_size=300)
    assert _validate(tiny, tmp_path, dskd_teacher_tokenizer=str(tmp_path / "other")).dskd_method == "dskd"
    message = _error(tiny, tmp_path, dskd_teacher_tokenizer=str(tmp_path / "other"), dskd_method="vanilla_kd")
    assert "dskd_method: 'vanilla_kd' compares logits token by token and needs the teacher to read every" in message
    assert len(other) != len(tiny.tokenizer)


def test_validation_decides_once_whether_the_tokenizers_differ(tiny, tmp_path) -> None:
    build_tokenizer(["completely different text " * 40], tmp_path / "other", vocab_size=300)
    assert _validate(tiny, tmp_path).dskd_cross_tokenizer is False
    assert _validate(tiny, tmp_path, dskd_teacher_tokenizer=str(tmp_path / "other")).dskd_cross_tokenizer is True
    assert _validate(tiny, tmp_path, dskd_cross_tokenizer=False).dskd_cross_tokenizer is False  # a re-read config
    assert (
        "dskd_cross_tokenizer: the plugin finds it from the two tokenizers (False), it is not a setting; remove the key"
        in _error(tiny, tmp_path, dskd_cross_tokenizer=True)
    )


def test_tokens_the_config_adds_decide_the_vocabulary_mode(tiny, tmp_path) -> None:
    """Decided from the student tokenizer as Axolotl trains it: added tokens the teacher
    lacks go the cross-tokenizer way; an added pad token alone does not."""
    assert _validate(tiny, tmp_path, special_tokens={"pad_token": "<|end_of_text|>"}).dskd_cross_tokenizer is False
    assert _validate(tiny, tmp_path, tokens=["<think>", "</think>"]).dskd_cross_tokenizer is True
    assert _validate(tiny, tmp_path, special_tokens={"eos_token": "<|im_end|>"}).dskd_cross_tokenizer is True
    assert (
        "dskd_method: 'vanilla_kd' compares logits token by token and needs the teacher to read every student "
        "token, but the config adds 1 token(s) the teacher lacks (<think>); use dskd_method: dskd"
    ) in _error(tiny, tmp_path, tokens=["<think>"], dskd_method="vanilla_kd")


def test_vocabulary_comparison_names_what_differs(tiny) -> None:
    from axolotl_dskd.tokens.vocab import compare_vocabularies

    student = copy.deepcopy(tiny.tokenizer)
    assert compare_vocabularies(student, tiny.tokenizer).shared
    student.add_special_tokens({"pad_token": "<pad>"})
    padded = compare_vocabularies(student, tiny.tokenizer)
    assert padded.added == ("<pad>",) and padded.pad_only and padded.shared
    assert compare_vocabularies(tiny.tokenizer, student).shared  # a teacher with more tokens
    student.add_tokens(["<think>"])
    assert not compare_vocabularies(student, tiny.tokenizer).shared


def test_padded_teacher_head_is_not_a_vocabulary_mismatch(tiny, tmp_path) -> None:
    # the tiny teacher has 16 extra head rows; its tokenizer is the student's
    assert _validate(tiny, tmp_path).dskd_teacher_model == str(tiny.teacher)


@pytest.mark.parametrize("flag", ["cut_cross_entropy", "liger_fused_linear_cross_entropy"])
def test_plugins_that_replace_the_logits_path_are_rejected(flag: str) -> None:
    from axolotl_dskd.integration.args import DSKDConfigError, check_settings

    settings = DSKDArgs.model_construct(dskd_teacher_model="teacher")
    object.__setattr__(settings, flag, True)
    with pytest.raises(DSKDConfigError, match=f"{flag}: not supported with axolotl_dskd.DSKDPlugin"):
        check_settings(settings)


EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example_yamls"
STAGE1 = EXAMPLE_DIR / "two-stage-1-teacher-lora.yml"  # plain Axolotl: fine-tunes the teacher
EXAMPLES = sorted(path for path in EXAMPLE_DIR.glob("*.yml") if path != STAGE1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_yamls_use_only_known_keys_and_valid_settings(path: Path) -> None:
    from axolotl_dskd.integration.args import check_choices, check_settings

    cfg = yaml.safe_load(path.read_text())
    assert cfg["plugins"][0] in {"axolotl_dskd.DSKDPlugin", "dskd.DSKDPlugin"}
    unknown = [key for key in cfg if key.startswith("dskd_") and key not in DSKD_KEYS]
    assert not unknown, unknown
    settings = {key: cfg[key] for key in cfg if key in DSKD_KEYS}
    check_choices(settings)
    check_settings(DSKDArgs.model_construct(**settings))
    if "deepspeed" in cfg:  # the shipped JSON, as launched from the repository root
        from axolotl_dskd.integration.args import check_deepspeed

        check_deepspeed(SimpleNamespace(deepspeed=str(path.parent.parent / cfg["deepspeed"])))


def test_two_stage_examples_are_a_matched_pair() -> None:
    stage1 = yaml.safe_load(STAGE1.read_text())
    stage2 = yaml.safe_load((EXAMPLE_DIR / "two-stage-2-distill-lora.yml").read_text())
    assert "plugins" not in stage1 and not any(key.startswith("dskd_") for key in stage1)
    assert stage1["adapter"] in {"lora", "qlora"}
    assert stage2["dskd_teacher_model"] == stage1["base_model"]
    assert stage2["dskd_teacher_adapter"] == stage1["output_dir"]
    assert stage2["datasets"] == stage1["datasets"]


def test_teacher_chat_template_with_a_shared_tokenizer_is_rejected(tiny, tmp_path) -> None:
    message = _error(tiny, tmp_path, dskd_teacher_chat_template=True)
    assert "dskd_teacher_chat_template: the teacher shares the student's tokenizer" in message


def test_teacher_chat_template_needs_chat_template_datasets() -> None:
    from axolotl.utils.dict import DictDefault

    from axolotl_dskd import DSKDPlugin

    cfg = DictDefault(dskd_teacher_chat_template=True, datasets=[{"path": "x.jsonl", "type": "alpaca"}])
    with pytest.raises(ValueError, match=r"needs `type: chat_template` datasets; datasets\[0\] has type 'alpaca'"):
        DSKDPlugin().register(cfg)
    chat = DictDefault(dskd_teacher_chat_template=True, datasets=[{"path": "x.jsonl", "type": "chat_template"}])
    DSKDPlugin().register(chat)
    assert chat.datasets[0]["type"] == "axolotl_dskd.integration.chat_template"


def test_teacher_tokenizer_that_cannot_load_names_the_key(tiny, tmp_path) -> None:
    message = _error(tiny, tmp_path, dskd_teacher_tokenizer=str(tmp_path / "missing"))
    missing = tmp_path / "missing"
    assert f"dskd_teacher_tokenizer: '{missing}' is not a directory, and not a hub id (org/name)" in message


def test_every_key_has_a_description_and_the_generated_reference_page_says_the_same() -> None:
    """docs/configuration.md holds the table generated from the schema: a key, type, default
    or description that differs fails here (regenerate the page with the command it names)."""
    from axolotl_dskd.integration.key_reference import PAGE, generated_block, table

    assert all(info.description for info in DSKDArgs.model_fields.values())
    assert generated_block(PAGE.read_text()) == table()
    assert all(f"| `{key}` |" in table() for key in DSKDArgs.model_fields)
