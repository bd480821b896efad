"""`axolotl-dskd plan cfg.yml`: will this run fit on one GPU? An estimate per component,
from the YAML alone: both models are built on the meta device from their configs (no
weights are read), and every size follows from the settings by a stated formula.

Exact: parameter bytes (weights at their dtype, LoRA parameters, gradients, optimizer
states, the projector). Estimated: 4/8-bit weights (bitsandbytes' constants included
roughly), activations (a per-layer formula, not a trace), the loss's chunk buffers and the
CUDA context. The same table is logged once when training starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from axolotl_dskd.engines.yaml_config import engine_for_config
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.objectives import objective

GIB = 2**30
# bitsandbytes NF4 with double quantization: 4 bits + about 0.25 bits of block constants
BYTES_PER_4BIT_WEIGHT = 4.25 / 8
BYTES_PER_8BIT_WEIGHT = 1.0 + 4 / 4096  # int8 + one fp32 scale per row of ~4k
CUDA_CONTEXT = 0.5 * GIB  # CUDA context, cuBLAS workspace, allocator slack: a rough constant
INIT_ROWS_PER_CHUNK = 4096  # loss/projectors.py reads vocabulary rows in chunks of this size


@dataclass(frozen=True)
class ModelShape:
    """What a model's memory follows from, read off a meta-device build."""

    params: int
    quantizable_params: int  # nn.Linear weights outside the output head (what bitsandbytes quantizes)
    head_params: int
    tied: bool
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    linear_shapes: tuple[tuple[int, int], ...]  # (in, out) of every nn.Linear outside the head

    def lora_params(self, rank: int) -> int:
        """LoRA on every linear layer (lora_target_linear): r x (in + out) each."""
        return sum(rank * (fan_in + fan_out) for fan_in, fan_out in self.linear_shapes)


def model_shape(path: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelShape:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        if type(config) in AutoModelForCausalLM._model_mapping:
            # the class itself: from_config would wrap it in DeepSpeed's zero.Init under
            # ZeRO-3, whose collectives would hang ranks that do not plan
            model = _get_model_class(config, AutoModelForCausalLM._model_mapping)(config)
        else:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear) and module is not head]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        params=params,
        quantizable_params=sum(module.weight.numel() for module in linears),
        head_params=head.weight.numel(),
        tied=tied,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        layers=text.num_hidden_layers,
        vocab=head.weight.shape[0],
        linear_shapes=tuple((module.in_features, module.out_features) for module in linears),
    )


@dataclass
class Plan:
    components: dict[str, float] = field(default_factory=dict)  # bytes
    notes: dict[str, str] = field(default_factory=dict)  # how each component was found
    savings: dict[str, float] = field(default_factory=dict)  # change -> bytes it saves
    gpu_memory: float | None = None

    def add(self, name: str, size: float, note: str) -> None:
        self.components[name] = float(size)
        self.notes[name] = note

    @property
    def total(self) -> float:
        return sum(self.components.values())

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.total <= self.gpu_memory

    def to_json(self) -> str:
        data = asdict(self) | {"total": self.total, "fits": self.fits}
        return json.dumps(data)

    def table(self) -> str:
        width = max(len(name) for name in self.components)
        lines = [
            f"{name:<{width}}  {size / GIB:8.2f} GiB  {self.notes[name]}" for name, size in self.components.items()
        ]
        lines.append(f"{'total':<{width}}  {self.total / GIB:8.2f} GiB  (per GPU)")
        if self.gpu_memory is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{'':<{width}}  {verdict} in {self.gpu_memory / GIB:.1f} GiB")
        if self.savings and (self.fits is False or self.gpu_memory is None):
            lines.append("what would save memory:")
            lines += [f"  {change}: {size / GIB:.2f} GiB" for change, size in self.savings.items()]
        return "\n".join(lines)


def _dtype_bytes(cfg: Any) -> int:
    """The compute dtype's bytes: bf16/fp16 when the YAML trains in them, else fp32."""
    return 2 if (cfg.get("bf16") is True or cfg.get("fp16") is True) else 4


def _weight_bytes(shape: ModelShape, dtype_bytes: int, four_bit: bool, eight_bit: bool) -> float:
    if not (four_bit or eight_bit):
        return shape.params * dtype_bytes
    quantized = BYTES_PER_4BIT_WEIGHT if four_bit else BYTES_PER_8BIT_WEIGHT
    return shape.quantizable_params * quantized + (shape.params - shape.quantizable_params) * dtype_bytes


def optimizer_bytes_per_param(optimizer: str | None, param_bytes: int) -> float:
    """Adam's two moments at the parameter's dtype; 8-bit optimizers keep one byte each."""
    name = (optimizer or "adamw_torch").lower()
    if "8bit" in name:
        return 2.0
    if "adafactor" in name:
        return 0.5  # factored second moment: a small fraction of the parameters
    if "lion" in name or "sgd" in name:
        return float(param_bytes)
    return 2.0 * param_bytes


def _layer_activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> float:
    """What one decoder layer keeps for backward: about 16 x hidden + 3 x intermediate values
    per token (inputs of the norms, projections, attention and MLP; sdpa/flash attention
    keep no seq x seq matrix)."""
    return tokens * (16 * shape.hidden + 3 * shape.intermediate) * dtype_bytes


def loss_chunk_buffer_bytes(chunk: int, student_vocab: int, teacher_vocab: int) -> int:
    """The loss's three fp32 [chunk x vocabulary] buffers per space, reused by every chunk."""
    return 3 * chunk * (student_vocab + teacher_vocab) * 4


def plan(cfg: Any, gpu_memory: float | None = None, gpus: int = 1) -> Plan:
    """Bytes per component on one of `gpus` GPUs for the DSKD run `cfg` describes."""
    result = Plan(gpu_memory=gpu_memory)
    dtype_bytes = _dtype_bytes(cfg)
    student = model_shape(cfg["base_model"], cfg.get("revision_of_model"), bool(cfg.get("trust_remote_code")))
    teacher = model_shape(
        cfg["dskd_teacher_model"], cfg.get("dskd_teacher_revision"), bool(cfg.get("dskd_teacher_trust_remote_code"))
    )
    teacher_bytes = {"auto": dtype_bytes, "float32": 4, "bfloat16": 2, "float16": 2}[
        cfg.get("dskd_teacher_dtype", "auto")
    ]
    engine = engine_for_config(cfg, max(gpus, 1))
    shards = engine.world_size
    cached = bool(cfg.get("dskd_teacher_cache"))
    teacher_4bit, teacher_8bit = bool(cfg.get("dskd_teacher_load_in_4bit")), bool(cfg.get("dskd_teacher_load_in_8bit"))

    full_teacher = _weight_bytes(teacher, teacher_bytes, teacher_4bit, teacher_8bit)
    head_only = teacher.head_params * teacher_bytes
    if cached:
        result.add("teacher weights", head_only, "teacher cache: the output head only")
    else:
        split = shards if engine.shards_teacher else 1
        how = "4-bit" if teacher_4bit else "8-bit" if teacher_8bit else f"{teacher_bytes} bytes/param"
        result.add(
            "teacher weights",
            full_teacher / split,
            f"{teacher.params:,} params, {how}" + (f", {engine.name} split" if split > 1 else ""),
        )

    adapter = cfg.get("adapter")
    student_4bit, student_8bit = bool(cfg.get("load_in_4bit")), bool(cfg.get("load_in_8bit"))
    student_split = shards if engine.shards_student_weights else 1
    student_weights = _weight_bytes(student, dtype_bytes, student_4bit, student_8bit) / student_split
    result.add(
        "student weights",
        student_weights,
        f"{student.params:,} params" + (f", split over {shards}" if student_split > 1 else ""),
    )
    if adapter in ("lora", "qlora"):
        rank = int(cfg.get("lora_r") or 8)
        trainable, param_bytes = student.lora_params(rank), 4  # PEFT keeps adapters in fp32
        result.add(
            "LoRA parameters", trainable * param_bytes, f"r {rank} on {len(student.linear_shapes)} linear layers"
        )
    else:
        trainable, param_bytes = student.params, dtype_bytes
    grad_split = shards if engine.shards_gradients else 1
    result.add("gradients", trainable * param_bytes / grad_split, f"{trainable:,} trainable params")
    optimizer_split = shards if engine.shards_optimizer_states else 1
    per_param = optimizer_bytes_per_param(cfg.get("optimizer"), param_bytes)
    result.add("optimizer states", trainable * per_param / optimizer_split, f"{cfg.get('optimizer') or 'adamw_torch'}")

    if objective(cfg.get("dskd_method") or LossConfig.method).trains_projector:
        projector = teacher.hidden * student.hidden
        result.add(
            "t2s projector + Adam", projector * 16, f"[{student.hidden}, {teacher.hidden}] fp32: weight, grad, 2 states"
        )
        s2t = projector * 4 + (teacher.hidden**2 * 8 if adapter not in ("lora", "qlora") else 0)
        result.add("s2t map", s2t, "[D, d] fp32 (+ pinv(W_t^T W_t) in fp64 when the student head trains)")
        init = 8 * (teacher.hidden**2 + student.hidden**2 + teacher.hidden * student.hidden)
        init += 2 * INIT_ROWS_PER_CHUNK * max(teacher.hidden, student.hidden) * 8
        result.add("projector init (transient)", init, "fp64 Gram matrices and two 4096-row chunks")

    chunk = int(cfg.get("dskd_loss_chunk_size") or 512)
    loss_buffers = loss_chunk_buffer_bytes(chunk, student.vocab, teacher.vocab)
    result.add(
        "loss chunk buffers", loss_buffers, f"3 x {chunk} rows x (V_s {student.vocab:,} + V_t {teacher.vocab:,}) fp32"
    )

    tokens = int(cfg.get("micro_batch_size") or 1) * int(cfg.get("sequence_len") or 2048)
    per_layer = _layer_activation_bytes(student, tokens, dtype_bytes)
    checkpointing = bool(cfg.get("gradient_checkpointing"))
    if checkpointing:
        activations = student.layers * tokens * student.hidden * dtype_bytes + per_layer
        how = "gradient checkpointing: each layer's input + one layer's activations"
    else:
        activations = student.layers * per_layer
        how = f"{student.layers} layers x {tokens:,} tokens x (16 d + 3 i) x {dtype_bytes} bytes"
    result.add("student activations", activations, how)
    if not cached:
        teacher_pass = tokens * (4 * teacher.hidden + 2 * teacher.intermediate) * teacher_bytes
        result.add("teacher forward (transient)", teacher_pass, "no_grad: one layer's values at a time")
    result.add("CUDA context", CUDA_CONTEXT, "context, workspaces, allocator slack (a constant)")

    if not cached and not teacher_4bit:
        quantized = _weight_bytes(teacher, teacher_bytes, True, False)
        result.savings["dskd_teacher_load_in_4bit: true"] = result.components["teacher weights"] - quantized
    if not cached and not cfg.get("dskd_on_policy_ratio"):
        result.savings["dskd_teacher_cache (axolotl-dskd cache-teacher)"] = (
            result.components["teacher weights"] + result.components.get("teacher forward (transient)", 0) - head_only
        )
    result.savings[f"dskd_loss_chunk_size: {max(chunk // 2, 1)}"] = loss_buffers / 2
    if not checkpointing:
        kept = student.layers * tokens * student.hidden * dtype_bytes + per_layer
        result.savings["gradient_checkpointing: true"] = activations - kept
    if int(cfg.get("micro_batch_size") or 1) > 1:
        result.savings["micro_batch_size: 1 (raise gradient_accumulation_steps)"] = activations * (
            1 - 1 / int(cfg["micro_batch_size"])
        )
    result.savings = {change: size for change, size in result.savings.items() if size > 0}
    return result


def parse_size(text: str) -> float:
    """'24GiB', '24GB', '24' (GiB) -> bytes."""
    units = {"gib": GIB, "gb": 1e9, "mib": 2**20, "mb": 1e6}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            return float(lowered.removesuffix(unit)) * scale
    return float(lowered) * GIB
