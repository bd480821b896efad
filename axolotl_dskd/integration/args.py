"""The plugin's YAML keys (all top level, all prefixed `dskd_`) and their validation.

Axolotl mixes `DSKDArgs` into its own config model, so the validator below sees the whole
config and rejects bad settings with one clear line before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import torch
from pydantic import BaseModel, Field, model_validator

from axolotl_dskd.collate.packing import ISOLATING_ATTENTION
from axolotl_dskd.engines.yaml_config import deepspeed_stage
from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.integration.compat import FSDP_VERSION_WHEN_UNSET
from axolotl_dskd.integration.plugin_entry import entry_setting
from axolotl_dskd.loss.config import NORMALIZATIONS, LossConfig
from axolotl_dskd.loss.divergences import DIVERGENCES, DivergenceConfig
from axolotl_dskd.loss.objectives import OBJECTIVES
from axolotl_dskd.teacher.cache import CACHE_DTYPES, Manifest, TeacherCacheError
from axolotl_dskd.teacher.identity import teacher_cache_settings
from axolotl_dskd.teacher.tokenizer import HUB_ID
from axolotl_dskd.tokens.vocab import VocabularyComparison, compare_vocabularies

METHODS = tuple(OBJECTIVES)
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
PROJECTOR_INITS = ("pinv", "random")
ALIGNMENTS = ("exact", "eta_strict")

# the schema's choice types, built from the registries that implement each choice
Method = Literal[METHODS]
Divergence = Literal[DIVERGENCES]
TeacherDtype = Literal[TEACHER_DTYPES]
ProjectorInit = Literal[PROJECTOR_INITS]
Alignment = Literal[ALIGNMENTS]
Normalization = Literal[NORMALIZATIONS]
CacheDtype = Literal[CACHE_DTYPES]

# Axolotl features that replace the logits/loss path the plugin relies on.
INCOMPATIBLE_FLAGS = {
    "cut_cross_entropy": "it patches away the logits path DSKD decodes from",
    "liger_fused_linear_cross_entropy": "it patches away the logits path DSKD decodes from",
    "rl": "DSKD is a supervised fine-tuning loss",
}


class DSKDArgs(BaseModel):
    """YAML keys of the DSKD plugin. Defaults follow the DSKDv2 scripts."""

    dskd_teacher_model: str | None = Field(
        None,
        description=("teacher: local dir or hub id; the same or another tokenizer than the student's (required)"),
    )
    dskd_teacher_revision: str | None = Field(None, description="hub revision of the teacher")
    dskd_teacher_adapter: str | None = Field(
        None,
        description=(
            "a PEFT LoRA/QLoRA adapter for the teacher (stage 1's output_dir or a hub id), applied at load, frozen"
        ),
    )
    dskd_teacher_adapter_revision: str | None = Field(None, description="hub revision of the adapter")
    dskd_teacher_dtype: TeacherDtype = Field(
        "auto",
        description=("`auto` (= the student's compute dtype) | `float32` | `bfloat16` | `float16`"),
    )
    dskd_teacher_load_in_8bit: bool = Field(False, description="load the teacher in 8-bit (bitsandbytes)")
    dskd_teacher_load_in_4bit: bool = Field(
        False,
        description=("load the teacher in 4-bit NF4 with double quantization (bitsandbytes)"),
    )
    dskd_teacher_trust_remote_code: bool = Field(False, description="allow custom modeling code for the teacher")
    dskd_teacher_tokenizer: str | None = Field(
        None,
        description=("teacher tokenizer dir or hub id (null = the teacher model's)"),
    )
    dskd_alignment: Alignment = Field(
        "exact",
        description=("different tokenizers: `exact` (byte-exact pairs) | `eta_strict` (the paper's greedy ETA)"),
    )
    dskd_teacher_chat_template: bool = Field(
        False,
        description=(
            "different tokenizers + `type: chat_template` datasets: render each conversation for the teacher with"
            " the teacher tokenizer's own chat template"
        ),
    )

    # the loss knobs' defaults have one home: the loss's own config classes
    dskd_method: Method = Field(
        LossConfig.method,
        description=(
            "`dskd` (DSKDv2 dual-space loss) | `vanilla_kd` (plain logit KD, the baseline; shared vocabulary only)"
        ),
    )
    dskd_kd_ratio: float = Field(LossConfig.kd_ratio, description="alpha in `(1 - alpha) * CE + alpha * KD`, in [0, 1]")
    dskd_temperature: float = Field(
        DivergenceConfig.temperature,
        description=("applied to both distributions of every KD term (no T² factor, as in DSKD)"),
    )
    dskd_divergence: Divergence = Field(
        DivergenceConfig.name,
        description=(
            "`forward_kl` | `reverse_kl` | `js` | `skewed_forward_kl` | `skewed_reverse_kl` | `adaptive_kl` | `tvd`"
        ),
    )
    dskd_skew_lambda: float = Field(DivergenceConfig.skew_lambda, description="lambda of the skewed KLs, in (0, 1)")
    dskd_adaptive_kl_alpha: float = Field(
        DivergenceConfig.adaptive_kl_alpha,
        description=("tail mass of adaptive KL, in (0, 1)"),
    )

    dskd_projector_lr: float = Field(5e-4, description="learning rate of the t2s projector's param group")
    dskd_projector_init: ProjectorInit = Field(
        "pinv",
        description=('`pinv` (DSKDv2 "ideal" init from the two LM heads) | `random`'),
    )
    dskd_init_topk_vocab: int | None = Field(
        None,
        description=("fit the pinv init on the first k token ids only (null = whole vocabulary)"),
    )
    dskd_agreement_mask: bool = Field(
        LossConfig.agreement_mask,
        description=("student-space KD only where argmax of projected teacher == teacher argmax (DSKDv2)"),
    )
    dskd_loss_chunk_size: int = Field(
        LossConfig.chunk_size,
        description=(
            "response rows per chunk of vocabulary-sized logits (512: 0.13x the unchunked peak memory at 152k "
            "vocab in half its time on CPU; 1024 goes over 0.20x; see `benchmarks/README.md`)"
        ),
    )
    dskd_normalization: Normalization = Field(
        LossConfig.normalization,
        description=(
            "`global`: every term / the global batch's response tokens (gradient accumulation = one big batch) | "
            '`paper`: DSKDv2\'s per-micro-batch divisors (see "Choices")'
        ),
    )
    dskd_teacher_fit_rows: int = Field(
        64,
        description=("training rows the pre-flight teacher-fit check scores (0 = off)"),
    )
    # train from `axolotl-dskd cache-teacher`'s output instead of a live teacher
    dskd_teacher_cache: str | None = Field(
        None,
        description=(
            'train from the folder `axolotl-dskd cache-teacher` wrote: no teacher body is loaded (see "Teacher cache")'
        ),
    )
    dskd_teacher_cache_dtype: CacheDtype = Field(
        "bfloat16",
        description=("how `cache-teacher` stores hidden states: `bfloat16` | `float16` | `float32`"),
    )

    dskd_on_policy_ratio: float = Field(
        0.0,
        description=("probability that a micro-batch's KD terms use the student's own samples, in [0, 1]"),
    )
    dskd_on_policy_start_step: int = Field(0, description="first optimizer step that may sample")
    dskd_on_policy_max_new_tokens: int = Field(
        256,
        description=("sampled tokens per row at most (also capped by `sequence_len`)"),
    )
    dskd_on_policy_temperature: float = Field(1.0, description="sampling temperature, > 0")
    dskd_on_policy_top_p: float = Field(1.0, description="nucleus sampling, in (0, 1]")
    dskd_on_policy_top_k: int = Field(0, description="top-k sampling, 0 = off")

    dskd_resume_with_changes: bool = Field(
        False,
        description=(
            "resume a checkpoint trained with another teacher, adapter, method, vocabulary mode or alignment (its "
            "`dskd_run.json` says which); off, such a resume stops before any model loads"
        ),
    )

    # Decided by the validation below (whether the two tokenizers differ), then read by the
    # collator choice and the trainer; not a setting.
    dskd_cross_tokenizer: bool | None = Field(
        None, description="not a setting: validation finds whether the two tokenizers differ and sets it"
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys_and_choices(cls, data: Any) -> Any:
        """A misspelled dskd_ key would otherwise be dropped and its default used silently;
        a value outside a choice gets our one line (naming the key and every choice) rather
        than pydantic's."""
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key.startswith("dskd_") and key not in cls.model_fields:
                    raise DSKDConfigError(unknown_key_message(key, tuple(cls.model_fields)))
            check_choices({key: value for key, value in data.items() if key in DSKDArgs.model_fields})
        return data

    @model_validator(mode="after")
    def _check_dskd(self) -> DSKDArgs:
        check_settings(self)
        cross = check_vocabularies(self)
        if "dskd_cross_tokenizer" in self.model_fields_set and self.dskd_cross_tokenizer != cross:
            raise DSKDConfigError(
                f"dskd_cross_tokenizer: the plugin finds it from the two tokenizers ({cross}), it is not a setting; "
                "remove the key"
            )
        self.dskd_cross_tokenizer = cross
        if self.dskd_teacher_adapter:
            from axolotl_dskd.teacher.adapter import check_teacher_adapter

            check_teacher_adapter(self)
        check_teacher_cache(self)
        return self


DSKD_KEYS = tuple(DSKDArgs.model_fields)

# The same keys carried into TrainingArguments, so the trainer reads them from self.args.
DSKDTrainingArgsMixin = dataclasses.make_dataclass(
    "DSKDTrainingArgsMixin",
    [(name, Any, dataclasses.field(default=info.default)) for name, info in DSKDArgs.model_fields.items()]
    + [("dskd_sequence_len", Any, dataclasses.field(default=None))],  # Axolotl's sequence_len, for generation
)


def unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    """One line naming the unknown key and the closest known one."""
    closest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {closest[0]}?" if closest else "see docs/configuration.md"
    return f"{key}: not a key of the DSKD plugin; {hint}"


def check_choices(settings: Mapping[str, Any]) -> None:
    """Each `Literal`-typed key's value is one of its choices."""
    for key, value in settings.items():
        annotation = DSKDArgs.model_fields[key].annotation
        allowed = get_args(annotation) if get_origin(annotation) is Literal else ()
        if allowed and value not in allowed:
            raise DSKDConfigError(f"{key}: {value!r} is not supported; use one of: {', '.join(allowed)}")


def _in_range(key: str, value: float, low: float, high: float, closed: bool) -> None:
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        bounds = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise DSKDConfigError(f"{key}: {value} is outside {bounds}")


def check_settings(cfg: Any) -> None:
    """Reject every dskd_* setting (or combination with Axolotl settings) we cannot honour;
    the choice-typed keys were checked before validation (`check_choices`)."""
    if not cfg.dskd_teacher_model:
        raise DSKDConfigError(
            "dskd_teacher_model: required by axolotl_dskd.DSKDPlugin; set it to a local model dir or hub id"
        )
    if not Path(cfg.dskd_teacher_model).is_dir() and not HUB_ID.fullmatch(cfg.dskd_teacher_model):
        raise DSKDConfigError(
            f"dskd_teacher_model: {cfg.dskd_teacher_model!r} is not a directory, and not a hub id (org/name); "
            "check the path"
        )
    _in_range("dskd_kd_ratio", cfg.dskd_kd_ratio, 0.0, 1.0, closed=True)
    _in_range("dskd_skew_lambda", cfg.dskd_skew_lambda, 0.0, 1.0, closed=False)
    _in_range("dskd_adaptive_kl_alpha", cfg.dskd_adaptive_kl_alpha, 0.0, 1.0, closed=False)
    if cfg.dskd_temperature <= 0:
        raise DSKDConfigError(f"dskd_temperature: {cfg.dskd_temperature} must be > 0")
    if cfg.dskd_projector_lr <= 0:
        raise DSKDConfigError(f"dskd_projector_lr: {cfg.dskd_projector_lr} must be > 0")
    if cfg.dskd_init_topk_vocab is not None and cfg.dskd_init_topk_vocab <= 0:
        raise DSKDConfigError(f"dskd_init_topk_vocab: {cfg.dskd_init_topk_vocab} must be a positive int or null")
    if cfg.dskd_teacher_fit_rows < 0:
        raise DSKDConfigError(f"dskd_teacher_fit_rows: {cfg.dskd_teacher_fit_rows} must be >= 0 (0: no check)")
    if cfg.dskd_loss_chunk_size <= 0:
        raise DSKDConfigError(f"dskd_loss_chunk_size: {cfg.dskd_loss_chunk_size} must be > 0")
    check_on_policy(cfg)
    if cfg.dskd_teacher_load_in_4bit and cfg.dskd_teacher_load_in_8bit:
        raise DSKDConfigError("dskd_teacher_load_in_4bit and dskd_teacher_load_in_8bit are both true; choose one")
    check_cpu_processes(cfg)
    check_deepspeed(cfg)
    check_fsdp(cfg)
    check_packing(cfg)
    for flag, why in INCOMPATIBLE_FLAGS.items():
        if getattr(cfg, flag, None):
            entry = entry_setting(getattr(cfg, "plugins", None), flag)
            if entry:
                raise DSKDConfigError(
                    f"plugins: {entry} (it sets {flag}) is not supported with axolotl_dskd.DSKDPlugin, because "
                    f"{why}; remove that entry"
                )
            raise DSKDConfigError(f"{flag}: not supported with axolotl_dskd.DSKDPlugin, because {why}; remove it")


def check_packing(cfg: Any) -> None:
    """Packed rows are kept apart by their position ids alone (the plugin's collators drop
    the attention mask), which only the attention implementations below honour."""
    attention = getattr(cfg, "attn_implementation", None)
    packing = [key for key in ("sample_packing", "eval_sample_packing") if getattr(cfg, key, None)]
    if packing and attention is not None and attention not in ISOLATING_ATTENTION:
        raise DSKDConfigError(
            f"{packing[0]}: attn_implementation {attention!r} cannot keep packed rows from attending to each other "
            f"under axolotl_dskd; use one of: {', '.join(ISOLATING_ATTENTION)}, or set {packing[0]}: false"
        )


def check_deepspeed(cfg: Any) -> None:
    """ZeRO-1/2/3 reduce, clip and (3) partition the projector with the student, which owns
    the loss module that holds it; without ZeRO, DeepSpeed all-reduces only the student's
    own gradients. ZeRO-3 also partitions the teacher, which a quantized teacher forbids."""
    stage = deepspeed_stage(cfg)
    if stage is None:
        return
    if stage == 3 and getattr(cfg, "dskd_teacher_adapter", None):
        raise DSKDConfigError(
            "dskd_teacher_adapter: ZeRO-3 partitions the teacher while it loads, so its LoRA adapter cannot be "
            "merged into it; merge the adapter into the teacher first (axolotl merge-lora) or use ZeRO-2"
        )
    if stage not in (1, 2, 3):
        raise DSKDConfigError(
            f"deepspeed: ZeRO stage {stage} is not supported with axolotl_dskd.DSKDPlugin, because without ZeRO "
            "DeepSpeed all-reduces only the student's own gradients, not the t2s projector's; "
            "use zero_optimization.stage 1, 2 or 3, or plain DDP"
        )
    quantized = [key for key in ("dskd_teacher_load_in_4bit", "dskd_teacher_load_in_8bit") if getattr(cfg, key, None)]
    if stage == 3 and quantized:
        raise DSKDConfigError(
            f"{quantized[0]}: ZeRO-3 partitions the teacher across ranks, and a bitsandbytes-quantized teacher "
            "cannot be partitioned; use ZeRO-2 with a quantized teacher, or a bf16 teacher under ZeRO-3"
        )


def check_fsdp(cfg: Any) -> None:
    """FSDP2 shards the projector with the student (it joins the student's root module) and
    lets the loss gather the head between forward and backward; FSDP1 flattens parameters
    into buffers the loss cannot read. (Axolotl 0.20+ has no FSDP1 and rejects it itself.)"""
    if not (getattr(cfg, "fsdp", None) or getattr(cfg, "fsdp_config", None)):
        return
    version = getattr(cfg, "fsdp_version", None) or FSDP_VERSION_WHEN_UNSET
    if int(version) != 2:
        raise DSKDConfigError(
            f"fsdp_version: {version} is not supported with axolotl_dskd.DSKDPlugin, because FSDP1 flattens the "
            "student's parameters, so the loss cannot read its output head; set fsdp_version: 2"
        )


def check_cpu_processes(cfg: Any) -> None:
    """Axolotl 0.19 puts each rank's model on device index LOCAL_RANK, which does not exist
    on a CPU-only machine, unless `max_memory` makes it plan the placement itself."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.cuda.is_available() and not getattr(cfg, "max_memory", None):
        raise DSKDConfigError(
            f"max_memory: WORLD_SIZE={world_size} on a machine without CUDA needs `max_memory: {{cpu: 16GiB}}` "
            "(any size that fits), or Axolotl places the model on a GPU index that does not exist"
        )


def check_on_policy(cfg: Any) -> None:
    _in_range("dskd_on_policy_ratio", cfg.dskd_on_policy_ratio, 0.0, 1.0, closed=True)
    if not 0.0 < cfg.dskd_on_policy_top_p <= 1.0:
        raise DSKDConfigError(f"dskd_on_policy_top_p: {cfg.dskd_on_policy_top_p} is outside (0.0, 1.0]")
    positive = {
        "dskd_on_policy_max_new_tokens": cfg.dskd_on_policy_max_new_tokens,
        "dskd_on_policy_temperature": cfg.dskd_on_policy_temperature,
    }
    for key, value in positive.items():
        if value <= 0:
            raise DSKDConfigError(f"{key}: {value} must be > 0")
    for key in ("dskd_on_policy_start_step", "dskd_on_policy_top_k"):
        if getattr(cfg, key) < 0:
            raise DSKDConfigError(f"{key}: {getattr(cfg, key)} must be >= 0")


def check_vocabularies(cfg: Any) -> bool | None:
    """Whether the student, as Axolotl will train it (with the config's added tokens),
    needs the cross-tokenizer path (None: the config names no student). Any id the
    teacher cannot read as the same token switches to it, which only the dual-space
    method can do; an added pad token alone does not (the teacher reads its own pad)."""
    from axolotl_dskd.integration.student_tokenizer import axolotl_student_tokenizer
    from axolotl_dskd.teacher.tokenizer import teacher_tokenizer, teacher_tokenizer_path

    if not (getattr(cfg, "tokenizer_config", None) or getattr(cfg, "base_model", None)):
        return None
    comparison = compare_vocabularies(
        axolotl_student_tokenizer(cfg.model_dump(exclude_none=True)), teacher_tokenizer(cfg)
    )
    if comparison.shared:
        if cfg.dskd_teacher_chat_template:
            raise DSKDConfigError(
                "dskd_teacher_chat_template: the teacher shares the student's tokenizer and reads the student's "
                "tokens as they are; remove the key (or set dskd_teacher_tokenizer to another tokenizer)"
            )
        return False
    if not OBJECTIVES[cfg.dskd_method].crosses_tokenizers:
        raise DSKDConfigError(
            f"dskd_method: {cfg.dskd_method!r} compares logits token by token and needs the teacher to read every "
            f"student token, but {cross_reason(comparison, teacher_tokenizer_path(cfg))}; use dskd_method: dskd"
        )
    return True


def cross_reason(comparison: VocabularyComparison, teacher_path: str) -> str:
    """Why the teacher cannot read the student's ids as they are, in a few words."""
    if comparison.renamed:
        return f"{teacher_path!r} has another vocabulary"
    return f"the config adds {len(comparison.added)} token(s) the teacher lacks ({comparison.listed()})"


def check_teacher_cache(cfg: Any) -> None:
    """A cache replaces the teacher only where every row the loss reads was built ahead:
    no on-policy samples, an engine that runs the teacher whole per rank, and the same
    teacher, tokenizers and rendering as this config."""
    if not cfg.dskd_teacher_cache:
        return
    if cfg.dskd_on_policy_ratio > 0:
        raise DSKDConfigError(
            f"dskd_teacher_cache: on-policy distillation (dskd_on_policy_ratio: {cfg.dskd_on_policy_ratio}) scores "
            "the student's own samples, which only a live teacher can; set dskd_on_policy_ratio: 0 or remove "
            "dskd_teacher_cache"
        )
    if deepspeed_stage(cfg) == 3 or getattr(cfg, "fsdp", None) or getattr(cfg, "fsdp_config", None):
        raise DSKDConfigError(
            "dskd_teacher_cache: training from a cache works with one process, DDP and DeepSpeed ZeRO-1/2; "
            "ZeRO-3 and FSDP2 are not supported with it yet; use ZeRO-2 or remove dskd_teacher_cache"
        )
    try:
        manifest = Manifest.read(Path(cfg.dskd_teacher_cache))
    except TeacherCacheError as error:
        raise DSKDConfigError(str(error)) from None
    difference = manifest.difference(teacher_cache_settings(cfg))
    if difference:
        raise DSKDConfigError(
            f"dskd_teacher_cache: {cfg.dskd_teacher_cache} was built for another run ({difference}); rebuild it "
            "with `axolotl-dskd cache-teacher cfg.yml`"
        )
    try:
        manifest.check_shards(Path(cfg.dskd_teacher_cache))
    except TeacherCacheError as error:
        raise DSKDConfigError(str(error)) from None
