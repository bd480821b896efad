"""DSKDTrainer: Axolotl's trainer with the dual-space loss, the projector's own param
group, and projector weights saved into (and restored from) every checkpoint."""

from __future__ import annotations

import itertools
import logging
import os

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from axolotl_dskd.collator import TEACHER_COLUMNS
from axolotl_dskd.divergences import DivergenceConfig
from axolotl_dskd.loss import LossConfig
from axolotl_dskd.step import DistillationStep
from axolotl_dskd.teacher import TeacherSpec, load_teacher, output_head, resolve_dtype
from axolotl_dskd.vocab import VocabBridge, same_vocabulary, teacher_tokenizer

LOG = logging.getLogger(__name__)
PROJECTOR_FILE = "dskd_projector.safetensors"


def loss_config(args: object) -> LossConfig:
    """The loss settings carried in the training arguments (dskd_* YAML keys)."""
    return LossConfig(
        method=args.dskd_method,
        kd_ratio=args.dskd_kd_ratio,
        divergence=DivergenceConfig(
            name=args.dskd_divergence,
            temperature=args.dskd_temperature,
            skew_lambda=args.dskd_skew_lambda,
            adaptive_kl_alpha=args.dskd_adaptive_kl_alpha,
        ),
        agreement_mask=args.dskd_agreement_mask,
        chunk_size=args.dskd_loss_chunk_size,
    )


class ProjectorGradReset(TrainerCallback):
    """The projector lives outside the student, so HF's model.zero_grad() never reaches it."""

    def __init__(self, projector: torch.nn.Module) -> None:
        self.projector = projector

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.projector.zero_grad(set_to_none=True)


class DSKDTrainer(AxolotlTrainer):
    """Replaces the student's loss with (1 - alpha) CE + alpha DSKD."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # compute_loss divides by the global response-token count itself
        self.model_accepts_loss_kwargs = True
        student_head = output_head(self.model)
        spec = TeacherSpec(
            path=self.args.dskd_teacher_model,
            revision=self.args.dskd_teacher_revision,
            dtype=resolve_dtype(self.args.dskd_teacher_dtype, student_head.dtype),
            load_in_8bit=self.args.dskd_teacher_load_in_8bit,
            load_in_4bit=self.args.dskd_teacher_load_in_4bit,
            trust_remote_code=self.args.dskd_teacher_trust_remote_code,
            attn_implementation=self.model.config._attn_implementation,
        )
        teacher_vocab = teacher_tokenizer(self.args)
        cross = not same_vocabulary(self.processing_class, teacher_vocab)
        if cross:
            LOG.info(
                "dskd: teacher and student tokenizers differ: cross-tokenizer DSKD, %s alignment",
                self.args.dskd_alignment,
            )
        self.distill = DistillationStep(
            student=self.model,
            teacher=load_teacher(spec, student_head.device),
            loss_cfg=loss_config(self.args),
            vocab_size=len(self.processing_class),
            teacher_vocab_size=len(teacher_vocab),
            bridge=VocabBridge.build(self.processing_class, teacher_vocab) if cross else None,
            projector_init=self.args.dskd_projector_init,
            init_topk_vocab=self.args.dskd_init_topk_vocab,
        )
        if self.distill.t2s_projector is not None:
            self.add_callback(ProjectorGradReset(self.distill.t2s_projector))

    def _set_signature_columns_if_needed(self):
        """Keep the teacher's own tokenization (dskd_teacher_chat_template) for the collator."""
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student_head = output_head(self.accelerator.unwrap_model(model))
        loss, metrics = self.distill(model, student_head, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages gradients over ranks; the loss is already divided by the global count
            loss = loss * self.accelerator.num_processes
        if model.training:
            self.store_metrics(metrics, train_eval="train")
        else:  # eval logs carry eval_* keys, so trackers file them under eval/
            self.store_metrics({f"eval_{name}": value for name, value in metrics.items()}, train_eval="eval")
        return (loss, {"loss": loss}) if return_outputs else loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        projector = self.distill.t2s_projector
        if projector is None:
            return optimizer
        registered = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in projector.parameters() if id(p) not in registered]
        if params:
            optimizer.add_param_group(
                {"params": params, "lr": self.args.dskd_projector_lr, "weight_decay": self.args.weight_decay}
            )
        return optimizer

    def _clip_grad_norm(self, model):
        """Clip the student and the projector together, like one global norm in DSKD."""
        params = itertools.chain(model.parameters(), self.distill.parameters())
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def save_projector(self, output_dir: str) -> None:
        """Write the t2s projector next to the model or adapter in `output_dir`."""
        projector = self.distill.t2s_projector
        if projector is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in projector.state_dict().items()}
        save_file(state, os.path.join(output_dir, PROJECTOR_FILE))

    def _save_checkpoint(self, model, trial, **kwargs):
        result = super()._save_checkpoint(model, trial, **kwargs)
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.save_projector(os.path.join(self._get_output_dir(trial=trial), checkpoint))
        return result

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        projector = self.distill.t2s_projector
        if projector is None:
            return
        path = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resume_from_checkpoint: {resume_from_checkpoint} has no {PROJECTOR_FILE}; "
                "it was not written by a DSKD run, so the projector cannot be restored"
            )
        device = projector.weight.device
        projector.load_state_dict({k: v.to(device) for k, v in load_file(path).items()})
        LOG.info("dskd: restored the t2s projector from %s", path)
