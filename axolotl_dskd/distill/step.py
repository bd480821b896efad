"""One distillation step: run both models, gather the response rows, score them.

This is the trainer's compute_loss without the trainer, so tests can drive it with real
models and check gradient accumulation and gradient flow directly.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from axolotl_dskd.collate.packing import PACKED
from axolotl_dskd.distill.head_loss import HeadLoss
from axolotl_dskd.distill.positions import LossPositions
from axolotl_dskd.distill.vocabulary import Vocabulary
from axolotl_dskd.engines import Engine
from axolotl_dskd.finite import check_head, check_metrics, check_projector_init
from axolotl_dskd.loss.chunked import term_weights
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.normaliser import Normaliser
from axolotl_dskd.loss.objectives import objective
from axolotl_dskd.loss.projectors import S2TMap, T2SProjector
from axolotl_dskd.loss.terms import Counts, LossTerms
from axolotl_dskd.teacher.cache import CACHED_COUNTS, CACHED_ROWS
from axolotl_dskd.teacher.loading import output_head
from axolotl_dskd.teacher.source import LiveTeacher, TeacherSource

LOG = logging.getLogger(__name__)
# what a batch carries beside the student's forward arguments (the collators fill them)
NOT_STUDENT_INPUTS = (
    "labels",
    PACKED,
    "teacher_input_ids",
    "teacher_attention_mask",
    "teacher_position_ids",
    "teacher_labels",
    "dskd_pairs",
    CACHED_ROWS,
    CACHED_COUNTS,
)


class DistillationStep(nn.Module):
    """Holds the frozen teacher and the projectors; turns a batch into the DSKD loss.

    `vocabulary` (shared or cross, decided once for the run) says which head rows are real
    tokens, which rows pair and what the teacher reads.
    """

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        loss_cfg: LossConfig,
        vocabulary: Vocabulary,
        projector_init: str = "pinv",
        init_topk_vocab: int | None = None,
        engine: Engine | None = None,
        source: TeacherSource | None = None,
    ) -> None:
        super().__init__()
        self.loss_cfg = loss_cfg
        self.vocabulary = vocabulary
        self.engine = engine or Engine()
        # the teacher is not a submodule: it must not reach the optimizer or the checkpoints
        self.__dict__["teacher"] = teacher
        # where the teacher rows come from, decided once (a cached run's teacher is its head alone)
        self.source = source or LiveTeacher()
        student_head, teacher_head = output_head(student), output_head(teacher)
        with self.engine.gathered(student_head, teacher_head):  # whole on every rank for the init
            self.teacher_hidden_size = teacher_head.shape[1]
            head_vocab = vocabulary.head_vocab(student_head.shape[0], teacher_head.shape[0])
            check_head(teacher_head, "teacher")
            check_head(student_head, "student")
            t2s_projector, s2t_map = None, None
            if objective(loss_cfg.method).trains_projector:
                vocab = vocabulary.projector_vocab(init_topk_vocab, head_vocab)
                t2s_projector = T2SProjector(teacher_head.shape[1], student_head.shape[1]).to(student_head.device)
                if projector_init == "pinv":
                    rel_error = t2s_projector.init_pinv(student_head, teacher_head, vocab)
                    check_projector_init(t2s_projector.weight, rel_error)
                    LOG.info(
                        "dskd: t2s projector pinv init on %d shared tokens, relative error %.4f", len(vocab), rel_error
                    )
                s2t_map = S2TMap(teacher_head, vocab)
        self.head_loss = HeadLoss(
            student,
            teacher,
            loss_cfg,
            head_vocab,
            t2s_projector,
            s2t_map,
            vocabulary.id_maps,
            self.engine,
        )

    @property
    def t2s_projector(self) -> T2SProjector | None:
        return self.head_loss.t2s_projector

    def heads(self, student_head: torch.Tensor) -> Heads:
        """The loss's view of the heads, for callers that run `chunked_loss` themselves."""
        return self.head_loss.heads(student_head)

    def _score(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], normaliser: Normaliser, with_teacher: bool
    ) -> tuple[torch.Tensor, LossTerms[torch.Tensor], Counts]:
        """(loss + zero anchor, term sums, counts) of one batch. Without the teacher every
        response row only enters the gold CE."""
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_STUDENT_INPUTS}
        # without the teacher no row pairs: the student's rows alone, as with one vocabulary
        rows = self.vocabulary.rows(inputs) if with_teacher else LossPositions.build(inputs["labels"])
        outputs = model(**model_inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        student_hidden = outputs.hidden_states[-1]
        self.engine.before_loss(model)  # the loss reads the head and the projector outside forward
        if with_teacher:
            teacher_rows = self.source.rows(self.teacher, inputs, rows, self.vocabulary).to(student_hidden.device)
        else:
            teacher_rows = student_hidden.new_zeros((0, self.teacher_hidden_size))
        loss, sums, counts = self.head_loss(
            rows.student_rows(student_hidden), teacher_rows, rows.labels.to(student_hidden.device), normaliser
        )
        # keeps every trainable tensor in the graph when a micro-batch has no response token
        return loss + student_hidden.sum() * 0.0, sums, counts

    def forward(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
        kd_inputs: dict[str, torch.Tensor] | None = None,
        kd_divisor: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss = [(1-a) CE + a KD] summed over response rows / global response rows
        (`dskd_normalization: paper` divides the KD terms by local pair counts instead).

        `model` runs the student (it may be wrapped by DDP, DeepSpeed or FSDP).
        `kd_divisor` is micro-batches per step x processes: it turns a per-micro-batch mean
        into the micro-batch's share of the step.
        On-policy (`kd_inputs`: the student's own samples for the same prompts), the gold
        batch gives only the CE and the KD terms come from `kd_inputs`, divided by its own
        response-row count times `kd_divisor`, so a step's KD is the mean over its on-policy
        micro-batches wherever they ran.
        """
        cfg, weights = self.loss_cfg, term_weights(self.loss_cfg)
        total = None if num_items_in_batch is None else int(num_items_in_batch)
        by_valid_pairs = self.vocabulary.paper_divides_by_valid_pairs
        batch = Normaliser(cfg, weights, total_rows=total, per_step=kd_divisor, by_valid_pairs=by_valid_pairs)
        if kd_inputs is None:
            loss, sums, counts = self._score(model, inputs, batch, with_teacher=True)
            metrics = self.metrics(sums, counts)
            check_metrics(metrics)
            return loss, metrics
        gold_batch = dataclasses.replace(batch, weights=weights.gold_only())
        kd_batch = dataclasses.replace(batch, weights=weights.kd_only(), kd_by_batch_rows=True)
        gold, gold_sums, gold_counts = self._score(model, inputs, gold_batch, with_teacher=False)
        kd, kd_sums, kd_counts = self._score(model, kd_inputs, kd_batch, with_teacher=True)
        gold_ce = gold_sums.ce_loss.item() / max(gold_counts.n_tokens.item(), 1)
        metrics = self.metrics(kd_sums, kd_counts) | {"ce_loss": gold_ce}
        check_metrics(metrics)
        return gold + kd, metrics

    @torch.no_grad()
    def score(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[LossTerms[torch.Tensor], Counts]:
        """(term sums, counts) of one batch without gradients: for measuring, not training.
        The sums do not depend on the weights, so `paper`'s pair counts are not computed."""
        unweighted = dataclasses.replace(self.loss_cfg, normalization="global")
        by_valid_pairs = self.vocabulary.paper_divides_by_valid_pairs
        normaliser = Normaliser(unweighted, term_weights(self.loss_cfg), by_valid_pairs=by_valid_pairs)
        _, sums, counts = self._score(model, inputs, normaliser, with_teacher=True)
        return sums, counts

    def metrics(self, sums: LossTerms[torch.Tensor], counts: Counts) -> dict[str, float]:
        """Per-token means over this micro-batch, for logging."""
        count = counts.as_dict()
        n_tokens, n_pairs = max(count["n_tokens"], 1.0), max(count["n_pairs"], 1.0)
        terms = {name: value / n_tokens for name, value in sums.as_dict().items()}
        metrics = {"ce_loss": terms["ce_loss"], "kd_loss": float(sums.kd_total()) / n_tokens}
        metrics |= objective(self.loss_cfg.method).own_metrics(terms, count)
        metrics["teacher_acc"] = count["n_teacher_correct"] / n_pairs
        metrics["teacher_ce"] = count["teacher_gold_nll"] / max(count["n_teacher_gold"], 1.0)
        return metrics
