"""Load the frozen teacher with plain transformers and read its last hidden state.

The teacher is loaded outside Axolotl's ModelLoader on purpose: that loader re-fires every
plugin hook and applies global patches meant for the student.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

LOG = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TeacherSpec:
    """Where the teacher comes from and how to hold it (YAML: dskd_teacher_*)."""

    path: str
    revision: str | None = None
    adapter: str | None = None  # a PEFT LoRA adapter fine-tuned on the task (stage 1)
    adapter_revision: str | None = None
    dtype: torch.dtype = torch.float32
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    @classmethod
    def from_settings(cls, settings: object, dtype: torch.dtype, attn_implementation: str | None = None) -> TeacherSpec:
        """From the dskd_teacher_* keys of an Axolotl config or of the training arguments."""
        return cls(
            path=settings.dskd_teacher_model,
            revision=settings.dskd_teacher_revision,
            adapter=settings.dskd_teacher_adapter,
            adapter_revision=settings.dskd_teacher_adapter_revision,
            dtype=dtype,
            load_in_8bit=bool(settings.dskd_teacher_load_in_8bit),
            load_in_4bit=bool(settings.dskd_teacher_load_in_4bit),
            trust_remote_code=bool(settings.dskd_teacher_trust_remote_code),
            attn_implementation=attn_implementation,
        )


def teacher_context(settings: object) -> int | None:
    """How many positions the teacher reads (its config's max_position_embeddings; None
    when the config does not say), from its config file alone."""
    config = AutoConfig.from_pretrained(
        settings.dskd_teacher_model,
        revision=settings.dskd_teacher_revision,
        trust_remote_code=bool(settings.dskd_teacher_trust_remote_code),
    )
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def resolve_dtype(setting: str, student_dtype: torch.dtype) -> torch.dtype:
    """`auto` means the student's compute dtype."""
    return student_dtype if setting == "auto" else DTYPES[setting]


def _quantization(spec: TeacherSpec) -> BitsAndBytesConfig | None:
    if spec.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=spec.dtype,
        )
    if spec.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def check_logits_are_plain(model: PreTrainedModel) -> None:
    """DSKD decodes hidden states with the bare head, so logits must be exactly head(h)."""
    config = model.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"dskd_teacher_model: {config.model_type} applies {attr}={value} to its logits; "
                "DSKD needs logits = lm_head(last hidden state)"
            )


def load_teacher(spec: TeacherSpec, device: torch.device, placed_on_load: bool = False) -> PreTrainedModel:
    """The teacher in eval mode with every parameter frozen, on `device` (unless the engine
    placed each rank's slice while it loaded: `placed_on_load`)."""
    quantization = _quantization(spec)
    LOG.info("dskd: loading teacher %s (%s%s)", spec.path, spec.dtype, ", quantized" if quantization else "")
    model = AutoModelForCausalLM.from_pretrained(
        spec.path,
        revision=spec.revision,
        dtype=spec.dtype,
        quantization_config=quantization,
        trust_remote_code=spec.trust_remote_code,
        attn_implementation=spec.attn_implementation,
        device_map={"": device} if quantization else None,
    )
    if quantization is None and not placed_on_load:
        model.to(device)
    if spec.adapter:
        model = with_adapter(model, spec, merge=quantization is None)
    check_logits_are_plain(model)
    model.eval()
    model.requires_grad_(False)
    return model


def with_adapter(model: PreTrainedModel, spec: TeacherSpec, merge: bool) -> PreTrainedModel:
    """The teacher with its LoRA adapter applied. A full-precision teacher gets it merged
    (the same weights as a merged copy, and no extra cost per forward); a quantized one
    keeps the LoRA layers beside its 4/8-bit weights, exactly as the adapter was trained,
    since merging would re-quantize them."""
    from peft import PeftModel

    LOG.info("dskd: applying teacher adapter %s (%s)", spec.adapter, "merged" if merge else "unmerged, quantized base")
    # PEFT draws random initial LoRA weights before loading the saved ones: keep the run's
    # random stream (data order, dropout) exactly as it would be without an adapter
    with torch.random.fork_rng(devices=[]):
        adapted = PeftModel.from_pretrained(model, spec.adapter, revision=spec.adapter_revision, is_trainable=False)
    return adapted.merge_and_unload() if merge else adapted.get_base_model()


def last_hidden_state(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Post-final-norm hidden states [B, L, D] of `inputs` (ids with an attention mask or
    packed position ids), without computing any logits."""
    body = getattr(model, model.base_model_prefix)
    return body(**inputs, use_cache=False).last_hidden_state


def output_head(model: torch.nn.Module) -> torch.Tensor:
    """The LM head weight [vocab, hidden] of a (possibly PEFT-wrapped) causal LM."""
    return model.get_output_embeddings().weight
