"""DSKDTrainer: Axolotl's trainer with the dual-space loss, the projector's own param
group, and projector weights saved into (and restored from) every checkpoint."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from axolotl_dskd import engines
from axolotl_dskd.collator import TEACHER_COLUMNS
from axolotl_dskd.distill.eval_mode import eval_mode_keeping_4bit
from axolotl_dskd.distill.fit_check import FIT_RECORD, TeacherFit
from axolotl_dskd.distill.on_policy import OnPolicyConfig, sampled_batch
from axolotl_dskd.distill.step import DistillationStep
from axolotl_dskd.distill.teacher import TeacherSpec, load_teacher, output_head, resolve_dtype
from axolotl_dskd.distill.teacher_cache import HeadOnlyTeacher, TeacherCache, TeacherCacheError, dataset_keys
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.divergences import DivergenceConfig
from axolotl_dskd.resume import PROJECTOR_FILE
from axolotl_dskd.tokens.vocab import VocabBridge
from axolotl_dskd.vocabularies import teacher_tokenizer

LOG = logging.getLogger(__name__)


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
        normalization=args.dskd_normalization,
    )


class ProjectorGradReset(TrainerCallback):
    """The projector lives outside the student, so HF's model.zero_grad() never reaches it."""

    def __init__(self, projector: torch.nn.Module) -> None:
        self.projector = projector

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.projector.zero_grad(set_to_none=True)


class TeacherFitCheck(TrainerCallback):
    """Before the first step of a fresh run (the model is wrapped by then, so every engine
    can run it), score teacher and student on the first training rows and warn when the
    teacher does not fit the data."""

    def __init__(self, trainer: DSKDTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step > 0:  # resumed: checked when the run started
            return
        trainer = self.trainer
        fit = trainer.measure_teacher_fit(trainer.model_wrapped, args.dskd_teacher_fit_rows)
        if trainer.is_world_process_zero():
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / FIT_RECORD).write_text(fit.to_json() + "\n")
            LOG.info("dskd: teacher fit before training:\n%s", fit.table())
            if fit.warning():
                LOG.warning(fit.warning())
            elif fit.note():
                LOG.info(fit.note())


class DSKDTrainer(AxolotlTrainer):
    """Replaces the student's loss with (1 - alpha) CE + alpha DSKD."""

    # exp(loss) is a perplexity only for a pure CE loss; Axolotl 0.21+ reads this flag
    # (0.19 and 0.20 log `ppl` for every trainer)
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # compute_loss divides by the global response-token count itself
        self.model_accepts_loss_kwargs = True
        student_head = output_head(self.model)
        spec = TeacherSpec.from_settings(
            self.args,
            resolve_dtype(self.args.dskd_teacher_dtype, student_head.dtype),
            attn_implementation=self.model.config._attn_implementation,
        )
        self.engine = engines.select(self.accelerator)
        if self.args.dskd_teacher_cache:
            teacher = self._cached_teacher(spec.dtype, student_head.device)
        else:
            teacher = load_teacher(spec, student_head.device, placed_on_load=self.engine.places_models_on_load)
            self.engine.prepare_teacher(teacher)
        teacher_vocab = teacher_tokenizer(self.args)
        cross = self.args.dskd_cross_tokenizer
        if cross:
            LOG.info(
                "dskd: teacher and student tokenizers differ: cross-tokenizer DSKD, %s alignment",
                self.args.dskd_alignment,
            )
        self.distill = DistillationStep(
            student=self.model,
            teacher=teacher,
            loss_cfg=loss_config(self.args),
            vocab_size=len(self.processing_class),
            teacher_vocab_size=len(teacher_vocab),
            bridge=VocabBridge.build(self.processing_class, teacher_vocab) if cross else None,
            projector_init=self.args.dskd_projector_init,
            init_topk_vocab=self.args.dskd_init_topk_vocab,
            engine=self.engine,
        )
        if self.distill.t2s_projector is not None:
            self.add_callback(ProjectorGradReset(self.distill.t2s_projector))
        self.engine.attach_loss(self.model, self.distill.head_loss, student_head)
        if self.args.dskd_teacher_fit_rows > 0:
            self.add_callback(TeacherFitCheck(self))
        self.on_policy = OnPolicyConfig.from_settings(self.args, seed=self.args.seed)
        self._micro_batch = (-1, 0)  # (global step, micro-batches seen in it)
        self._projector_synced_at = -1
        if self.distill.t2s_projector is not None:
            self.engine.start_in_sync(self.distill.t2s_projector)
        LOG.info("dskd: engine %s", self.engine.name)

    def _cached_teacher(self, dtype: torch.dtype, device: torch.device) -> HeadOnlyTeacher:
        """The teacher's head from the cache, once the cache is shown to hold this run's rows
        (the YAML check compared the settings; the rows need the prepared datasets)."""
        cache = TeacherCache(self.args.dskd_teacher_cache)
        built_dtype = cache.manifest.teacher_dtype
        if built_dtype != str(dtype).removeprefix("torch."):
            raise TeacherCacheError(
                f"dskd_teacher_cache: the cache was built with a {built_dtype} teacher, this run's teacher dtype is "
                f"{dtype}; rebuild it with `axolotl-dskd cache-teacher cfg.yml`"
            )
        splits = {"train": self.train_dataset, "eval": self.eval_dataset}
        for split, dataset in splits.items():
            if dataset is not None:
                cache.check_split(split, dataset_keys(dataset))
        LOG.info("dskd: training from the teacher cache %s (no teacher body loaded)", self.args.dskd_teacher_cache)
        return HeadOnlyTeacher(cache.head().to(device=device, dtype=dtype))

    def _set_signature_columns_if_needed(self):
        """Keep the teacher's own tokenization (dskd_teacher_chat_template) for the collator."""
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in TEACHER_COLUMNS if c not in self._signature_columns]

    def measure_teacher_fit(self, model: torch.nn.Module, rows: int) -> TeacherFit:
        """Teacher and student on the first `rows` training rows, collated as training
        collates them, in eval mode and without gradients."""
        dataset = self._remove_unused_columns(self.train_dataset, description="teacher fit")
        dataset = dataset.select(range(min(rows, len(dataset))))
        batch_size = self.args.per_device_train_batch_size
        sums = counts = None
        with eval_mode_keeping_4bit(model):
            for start in range(0, len(dataset), batch_size):
                batch = self.data_collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                batch_sums, batch_counts = self.distill.score(model, self._prepare_inputs(batch))
                sums = batch_sums if sums is None else sums + batch_sums
                counts = batch_counts if counts is None else counts + batch_counts
        metrics = self.distill.metrics(sums, counts)
        return TeacherFit(
            rows=len(dataset),
            response_tokens=int(counts.n_tokens.item()),
            teacher_acc=metrics["teacher_acc"],
            teacher_ce=metrics["teacher_ce"],
            student_ce=metrics["ce_loss"],
            align_ratio=metrics.get("align_ratio", 1.0),
        )

    def _on_policy_inputs(self, model, inputs) -> tuple[dict | None, dict[str, float]]:
        """The student's own samples for this micro-batch's prompts when its coin says so."""
        step, seen = self._micro_batch
        seen = seen + 1 if step == self.state.global_step else 0
        self._micro_batch = (self.state.global_step, seen)
        if not self.on_policy.samples(self.state.global_step, seen):
            return None, {"on_policy": 0.0}
        tokenizer = self.processing_class
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        sampled = sampled_batch(
            self.accelerator.unwrap_model(model),
            inputs,
            self.on_policy,
            self.data_collator,
            pad_id=pad_id,
            eos_id=tokenizer.eos_token_id,
            max_length=self.args.dskd_sequence_len or tokenizer.model_max_length,
            seed=self.on_policy.seed * 1_000_003 + self.state.global_step * 1009 + seen,
            synced=self.engine.synced_generation,
        )
        return self._prepare_inputs(sampled), {"on_policy": 1.0, "on_policy_gen_seconds": time.perf_counter() - start}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kd_inputs, on_policy_metrics = None, {}
        if model.training and self.on_policy.ratio > 0:
            kd_inputs, on_policy_metrics = self._on_policy_inputs(model, inputs)
        micro_batches = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        ranks = self.engine.world_size
        if ranks > 1 and num_items_in_batch is not None:
            # every rank divides by the response tokens of all ranks (Axolotl turns HF's
            # average_tokens_across_devices off); DDP then averages the gradients, so the
            # loss is scaled back up by the number of ranks below
            local_items = torch.as_tensor(num_items_in_batch, device=self.args.device)
            num_items_in_batch = self.accelerator.reduce(local_items, reduction="sum")
        else:
            ranks = 1
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
        """The student's groups, and the projector in a group of its own at dskd_projector_lr
        (moved out of the student's groups when DeepSpeed or FSDP made it part of the student)."""
        optimizer = super().create_optimizer(model)
        projector = self.distill.t2s_projector
        if projector is None or any(group.get("dskd_projector") for group in optimizer.param_groups):
            return optimizer
        own = {id(p) for p in projector.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in own]
        optimizer.add_param_group(
            {
                "params": list(projector.parameters()),
                "lr": self.args.dskd_projector_lr,
                "weight_decay": self.args.weight_decay,
                "dskd_projector": True,
            }
        )
        return optimizer

    def _sync_projector_grads(self) -> None:
        """Once per optimizer step, let the engine average the projector's gradients over
        ranks where it does not own the projector (DDP)."""
        projector = self.distill.t2s_projector
        if projector is None or self._projector_synced_at == self.state.global_step:
            return
        self._projector_synced_at = self.state.global_step
        self.engine.sync_projector_grads(projector)

    def _clip_grad_norm(self, model):
        """Clip the student and the projector together, like one global norm in DSKD
        (DeepSpeed clips its whole optimizer, projector included, and reports the norm)."""
        self._sync_projector_grads()
        params = self.engine.clipped_parameters(model, self.distill)
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        self._sync_projector_grads()  # also without clipping (max_grad_norm: 0)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _check_projector_in_sync(self) -> None:
        """Fail loudly if ranks ever hold different projectors (a checkpoint would keep
        only rank 0's). FSDP and ZeRO-3 hold one split copy: nothing to compare."""
        projector = self.distill.t2s_projector
        difference = None if projector is None else self.engine.check_in_sync(projector)
        if difference is None:
            return
        if difference > 0:
            raise RuntimeError(f"dskd: the t2s projector differs across ranks by up to {difference:.3e}")
        LOG.info("dskd: t2s projector identical on %d ranks", self.engine.world_size)

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

    def _projector_state(self) -> dict[str, torch.Tensor]:
        """The projector's tensors, whole, on the CPU. Under FSDP and ZeRO-3 this gathers
        the slices: every rank must call it."""
        parameters = self.distill.t2s_projector.named_parameters()
        return {name: self.engine.whole(tensor).cpu().contiguous() for name, tensor in parameters}

    def save_projector(self, output_dir: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the t2s projector next to the model or adapter in `output_dir`."""
        if self.distill.t2s_projector is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        temporary = os.path.join(output_dir, f".{PROJECTOR_FILE}.{os.getpid()}")  # a kill leaves no half file
        save_file(self._projector_state() if state is None else state, temporary)
        os.replace(temporary, os.path.join(output_dir, PROJECTOR_FILE))

    def _save_checkpoint(self, model, trial, **kwargs):
        self._check_projector_in_sync()
        result = super()._save_checkpoint(model, trial, **kwargs)
        if self.distill.t2s_projector is None:
            return result
        state = self._projector_state()
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.save_projector(os.path.join(self._get_output_dir(trial=trial), checkpoint), state)
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
        self.engine.restore_projector(projector, {k: v.to(device) for k, v in load_file(path).items()})
        LOG.info("dskd: restored the t2s projector from %s", path)
