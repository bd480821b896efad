"""The dual-space loss as a module of its own, holding the t2s projector.

The loss reads both output heads and the projector outside the models' forward passes.
Engines that split parameters across ranks make a parameter whole only around the forward
of a module that owns it (or, under ZeRO-3, registered it as external): calling the loss
as a module attached to the student gives them that moment, and its backward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from axolotl_dskd.engines import Engine
from axolotl_dskd.loss.chunked import chunked_loss
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.normaliser import Normaliser, pair_counts
from axolotl_dskd.loss.projectors import S2TMap, T2SProjector
from axolotl_dskd.loss.terms import Counts, LossTerms
from axolotl_dskd.teacher.loading import output_head


class HeadLoss(nn.Module):
    """Maps gathered hidden rows of both models to the weighted DSKD (or KD) loss sums."""

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        loss_cfg: LossConfig,
        vocab_sizes: tuple[int, int],
        t2s_projector: T2SProjector | None = None,
        s2t_map: S2TMap | None = None,
        id_maps: tuple[torch.Tensor, torch.Tensor] | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__()
        # neither model is a submodule: the loss may itself become a module of the student
        self.__dict__["student"] = student
        self.__dict__["teacher"] = teacher
        self.loss_cfg = loss_cfg
        self.student_vocab, self.teacher_vocab = vocab_sizes
        self.t2s_projector = t2s_projector
        self.s2t_map = s2t_map
        # (teacher id -> student id, student id -> teacher id) of identical bytes; None: one vocabulary
        self.id_maps = id_maps
        self.engine = engine or Engine()

    def heads(self, student_head: torch.Tensor, teacher_space: bool = True) -> Heads:
        """The heads and projectors as the loss reads them; the s2t weight only for
        `teacher_space` (it costs a vocabulary-sized product when the student head trains)."""
        teacher_head = output_head(self.teacher)
        to_student, to_teacher = (None, None) if self.id_maps is None else self.id_maps
        return Heads(
            student_head,
            teacher_head,
            self.student_vocab,
            self.teacher_vocab,
            None if self.t2s_projector is None else self.t2s_projector.weight,
            self.s2t_map.weight(student_head, teacher_head) if self.s2t_map and teacher_space else None,
            None if to_student is None else to_student.to(teacher_head.device),
            None if to_teacher is None else to_teacher.to(teacher_head.device),
        )

    def forward(
        self,
        student_rows: torch.Tensor,
        teacher_rows: torch.Tensor,
        labels: torch.Tensor,
        normaliser: Normaliser,
    ) -> tuple[torch.Tensor, LossTerms[torch.Tensor], Counts]:
        """(weighted loss sum, term sums, counts): the first len(teacher_rows) student rows
        pair with the teacher rows; the rest only enter the gold CE."""
        paired = teacher_rows.shape[0] > 0
        teacher_head = output_head(self.teacher)
        with self.engine.gathered(*([teacher_head] if paired else [])):
            heads = self.heads(output_head(self.student), teacher_space=paired)
            pairs = None
            if normaliser.needs_pair_counts:
                pairs = pair_counts(teacher_rows, heads, self.loss_cfg.chunk_size) if paired else (0, 0)
            weights = normaliser.divided(labels.numel(), pairs)
            weighted, sums, counts = chunked_loss(student_rows, teacher_rows, labels, heads, self.loss_cfg, weights)
        # keeps the projector in the graph when no row pairs with the teacher
        anchor = sum(p.sum() * 0.0 for p in self.parameters())
        return weighted + anchor, sums, counts
