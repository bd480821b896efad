"""Which hidden rows enter the loss: each trained response position of the student and,
where the teacher has one, its partner row in the teacher's own sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axolotl_dskd.labels import IGNORE_INDEX


@dataclass(frozen=True)
class LossPositions:
    """Response positions that enter the loss, in the causal-shift coordinates of
    labels[:, 1:]: student rows paired with a teacher row first, then unpaired ones."""

    student_index: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) per student row
    teacher_index: tuple[torch.Tensor, torch.Tensor]  # (batch row, position) per pair
    labels: torch.Tensor  # gold student label per student row

    @classmethod
    def build(cls, labels: torch.Tensor, pairs: torch.Tensor | None = None) -> LossPositions:
        """Same vocabulary (`pairs` None): every response row pairs with itself."""
        targets = labels[:, 1:]
        trained = targets != IGNORE_INDEX
        if pairs is None:
            student_index = teacher_index = trained.nonzero(as_tuple=True)
        else:
            rows, student_pos, teacher_pos = pairs.to(labels.device).unbind(-1)
            unpaired = trained.clone()
            unpaired[rows, student_pos] = False
            alone_rows, alone_pos = unpaired.nonzero(as_tuple=True)
            student_index = (torch.cat([rows, alone_rows]), torch.cat([student_pos, alone_pos]))
            teacher_index = (rows, teacher_pos)
        return cls(student_index, teacher_index, targets[student_index])

    @staticmethod
    def _take(hidden: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return hidden[:, :-1][index[0].to(hidden.device), index[1].to(hidden.device)]

    def student_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._take(hidden, self.student_index)

    def teacher_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._take(hidden, self.teacher_index)
