"""One distillation step: run both models, gather the response rows, score them.

This is the trainer's compute_loss without the trainer, so tests can drive it with real
models and check gradient accumulation and gradient flow directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from axolotl_dskd.loss import COUNTS, LOSS_TERMS, Heads, LossConfig, combine, kd_sum, loss_sums
from axolotl_dskd.projectors import S2TMap, SharedVocab, T2SProjector
from axolotl_dskd.teacher import last_hidden_state, output_head

LOG = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Rows:
    """The positions that enter the loss: response tokens, after the causal shift."""

    mask: torch.Tensor  # [B, L-1] bool
    labels: torch.Tensor  # [rows]

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> Rows:
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        return cls(mask=mask, labels=targets[mask])

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, L, H] hidden states -> [rows, H], the states that predict each label."""
        return hidden[:, :-1][self.mask.to(hidden.device)]


class DistillationStep(nn.Module):
    """Holds the frozen teacher and the projectors; turns a batch into the DSKD loss."""

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        loss_cfg: LossConfig,
        vocab_size: int,
        projector_init: str = "pinv",
        init_topk_vocab: int | None = None,
    ) -> None:
        super().__init__()
        self.loss_cfg = loss_cfg
        # the teacher is not a submodule: it must not reach the optimizer or the checkpoints
        self.__dict__["teacher"] = teacher
        student_head, teacher_head = output_head(student), output_head(teacher)
        self.argmax_vocab = min(vocab_size, student_head.shape[0], teacher_head.shape[0])
        self.t2s_projector: T2SProjector | None = None
        self.s2t_map: S2TMap | None = None
        if loss_cfg.method == "dskd":
            vocab = SharedVocab.first_ids(min(init_topk_vocab or self.argmax_vocab, self.argmax_vocab))
            self.t2s_projector = T2SProjector(teacher_head.shape[1], student_head.shape[1]).to(student_head.device)
            if projector_init == "pinv":
                rel_error = self.t2s_projector.init_pinv(student_head, teacher_head, vocab)
                LOG.info(
                    "dskd: t2s projector pinv init over %d tokens, relative logit error %.4f", len(vocab), rel_error
                )
            self.s2t_map = S2TMap(teacher_head, vocab)

    def heads(self, student_head: torch.Tensor) -> Heads:
        teacher_head = output_head(self.teacher)
        s2t_weight = self.s2t_map.weight(student_head) if self.s2t_map else None
        return Heads(student_head, teacher_head, self.argmax_vocab, self.t2s_projector, s2t_weight)

    def forward(
        self,
        model: nn.Module,
        student_head: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss = [(1-a) CE + a KD] summed over response rows / global response rows."""
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        rows = Rows.from_labels(inputs["labels"])
        outputs = model(**model_inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        student_hidden = outputs.hidden_states[-1]
        with torch.no_grad():
            teacher_device = output_head(self.teacher).device
            teacher_hidden = last_hidden_state(
                self.teacher,
                inputs["input_ids"].to(teacher_device),
                inputs["attention_mask"].to(teacher_device),
            )
        sums, counts = loss_sums(
            rows.gather(student_hidden),
            rows.gather(teacher_hidden).to(student_hidden.device),
            rows.labels.to(student_hidden.device),
            self.heads(student_head),
            self.loss_cfg,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else counts[0].clamp_min(1)
        # keeps every trainable tensor in the graph when a micro-batch has no response token
        anchor = student_hidden.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.parameters())
        loss = combine(sums, self.loss_cfg) / denominator + anchor
        return loss, self.metrics(sums.detach(), counts)

    def metrics(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """Per-token means over this micro-batch, for logging."""
        count = dict(zip(COUNTS, counts.tolist(), strict=True))
        n_tokens = max(count["n_tokens"], 1.0)
        terms = {name: value / n_tokens for name, value in zip(LOSS_TERMS, sums.tolist(), strict=True)}
        metrics = {"ce_loss": terms["ce_loss"], "kd_loss": kd_sum(sums).item() / n_tokens}
        if self.loss_cfg.method == "dskd":
            metrics |= {name: terms[name] for name in ("t2s_ce_loss", "t2s_kd_loss", "s2t_kd_loss")}
            metrics["t2s_agreement"] = count["n_agree"] / n_tokens
            metrics["t2s_acc"] = count["n_t2s_correct"] / n_tokens
        return metrics
