"""DSKDTrainer: Axolotl's trainer with the dual-space loss and the projector's own param
group; the projector's state (sync, clip, checkpoints) lives in `projector_state`."""

from __future__ import annotations

import logging

from axolotl.core.trainers.base import AxolotlTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from axolotl_dskd import engines
from axolotl_dskd.collate.cross_tokenizer import TEACHER_COLUMNS
from axolotl_dskd.distill.on_policy import OnPolicyConfig, OnPolicySampler
from axolotl_dskd.distill.step import DistillationStep
from axolotl_dskd.distill.vocabulary import vocabulary
from axolotl_dskd.integration.data_check import check_response_tokens
from axolotl_dskd.integration.fit_check import TeacherFitCheck
from axolotl_dskd.integration.projector_state import projector_state
from axolotl_dskd.integration.run_record import run_record, write_record
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.teacher.loading import output_head, resolve_dtype
from axolotl_dskd.teacher.source import teacher_source

LOG = logging.getLogger(__name__)


class DSKDTrainer(AxolotlTrainer):
    """Replaces the student's loss with (1 - alpha) CE + alpha DSKD."""

    # exp(loss) is a perplexity only for a pure CE loss; Axolotl 0.21+ reads this flag
    # (0.19 and 0.20 log `ppl` for every trainer)
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_response_tokens({"train": self.train_dataset, "eval": self.eval_dataset})
        # compute_loss divides by the global response-token count itself
        self.model_accepts_loss_kwargs = True
        student_head = output_head(self.model)
        self.engine = engines.select(self.accelerator)
        source = teacher_source(self.args)
        teacher = source.load(
            resolve_dtype(self.args.dskd_teacher_dtype, student_head.dtype),
            student_head.device,
            self.engine,
            datasets={"train": self.train_dataset, "eval": self.eval_dataset},
            attn_implementation=self.model.config._attn_implementation,
        )
        vocab = vocabulary(self.args, self.processing_class)
        alignment = f", {self.args.dskd_alignment} alignment" if vocab.cross else ""
        LOG.info("dskd: %s%s", vocab.describe(), alignment)
        self.distill = DistillationStep(
            student=self.model,
            teacher=teacher,
            loss_cfg=LossConfig.from_settings(self.args),
            vocabulary=vocab,
            projector_init=self.args.dskd_projector_init,
            init_topk_vocab=self.args.dskd_init_topk_vocab,
            engine=self.engine,
            source=source,
        )
        self.engine.attach_loss(self.model, self.distill.head_loss, student_head)
        self.projector = projector_state(self.distill.t2s_projector, self.engine)
        self.run_record = run_record(self.args)
        for callback in self.projector.callbacks():
            self.add_callback(callback)
        if self.args.dskd_teacher_fit_rows > 0:
            self.add_callback(TeacherFitCheck(self))
        self.on_policy = OnPolicySampler(
            OnPolicyConfig.from_settings(self.args, seed=self.args.seed),
            self.processing_class,
            self.data_collator,
            max_length=self.args.dskd_sequence_len or self.processing_class.model_max_length,
            synced=self.engine.synced_generation,
        )
        LOG.info("dskd: engine %s", self.engine.name)

    def _set_signature_columns_if_needed(self):
        """Keep the teacher's own tokenization (dskd_teacher_chat_template) for the collator."""
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kd_inputs, on_policy_metrics = None, {}
        if model.training:  # the sampler decides whether this micro-batch samples
            sampled, on_policy_metrics = self.on_policy.batch(
                self.accelerator.unwrap_model(model), inputs, self.state.global_step
            )
            kd_inputs = None if sampled is None else self._prepare_inputs(sampled)
        micro_batches = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        num_items_in_batch, ranks = self.engine.global_items(num_items_in_batch, self.args.device)
        loss, metrics = self.distill(
            model,
            inputs,
            num_items_in_batch,
            kd_inputs=kd_inputs,
            kd_divisor=micro_batches * ranks,
        )
        loss = loss * ranks
        metrics |= on_policy_metrics
        if model.training:
            self.store_metrics(metrics, train_eval="train")
        else:  # eval logs carry eval_* keys, so trackers file them under eval/
            self.store_metrics({f"eval_{name}": value for name, value in metrics.items()}, train_eval="eval")
        return (loss, {"loss": loss}) if return_outputs else loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        self.projector.add_param_group(optimizer, self.args.dskd_projector_lr, self.args.weight_decay)
        return optimizer

    def _clip_grad_norm(self, model):
        """Clip the student and the projector together, like one global norm in DSKD
        (DeepSpeed clips its whole optimizer, projector included, and reports the norm)."""
        self.projector.sync_grads(self.state.global_step)
        params = self.engine.clipped_parameters(model, self.distill)
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        self.projector.sync_grads(self.state.global_step)  # also without clipping (max_grad_norm: 0)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def train(self, *args, **kwargs):
        """After training the projector leaves the student again, so the final save of the
        model (Axolotl's own, outside the trainer) does not carry it either."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.engine.detach_loss(self.model, self.distill.t2s_projector)

    def _save(self, output_dir=None, state_dict=None):
        """The saved model never carries the projector (it has its own file)."""
        if hasattr(self.model, engines.LOSS_MODULE):
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            state_dict = self.engine.model_state(state_dict)
        return super()._save(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model, trial, **kwargs):
        self.projector.check_in_sync()
        result = super()._save_checkpoint(model, trial, **kwargs)
        checkpoint = f"{self._get_output_dir(trial=trial)}/{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # before the projector, which marks a complete checkpoint
            write_record(checkpoint, self.run_record)
        self.projector.save_checkpoint(checkpoint, self.args.should_save)
        return result

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.projector.restore(resume_from_checkpoint)
