"""teacher_acc / teacher_ce against a straightforward full-logits computation."""

import pytest
import torch
import torch.nn.functional as F

from axolotl_dskd.loss.chunked import chunked_loss
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.heads import Heads
from axolotl_dskd.loss.projectors import T2SProjector

ROWS, D_S, D_T, V_S, V_T, REAL_VOCAB = 17, 6, 10, 30, 34, 30


def _heads(cross: bool, generator: torch.Generator) -> Heads:
    to_student = to_teacher = None
    if cross:
        to_student = torch.randperm(V_T, generator=generator).clamp_max(REAL_VOCAB - 1)
        to_teacher = torch.randperm(V_S, generator=generator)
        to_teacher[::4] = -1  # gold tokens the teacher has no token for
    return Heads(
        torch.randn(V_S, D_S, generator=generator),
        torch.randn(V_T, D_T, generator=generator),  # 4 padded rows past the real vocabulary
        REAL_VOCAB,
        REAL_VOCAB,
        T2SProjector(D_T, D_S).weight.detach(),
        torch.randn(D_T, D_S, generator=generator),
        to_student,
        to_teacher,
    )


@pytest.mark.parametrize(("cross", "method"), [(False, "dskd"), (True, "dskd"), (False, "vanilla_kd")])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_teacher_fit_counts_match_full_logits(cross: bool, method: str, chunk_size: int) -> None:
    generator = torch.Generator().manual_seed(11)
    heads = _heads(cross, generator)
    student_hidden = torch.randn(ROWS, D_S, generator=generator)
    teacher_hidden = torch.randn(ROWS, D_T, generator=generator)
    z_t = teacher_hidden @ heads.teacher_head.T
    labels = torch.randint(0, REAL_VOCAB, (ROWS,), generator=generator)
    labels[:6] = z_t[:6, :REAL_VOCAB].argmax(-1)  # some rows where a same-vocabulary teacher is right
    if cross:  # and where a cross-vocabulary teacher is right through the byte map
        inverse = {int(t): s for s, t in enumerate(heads.student_to_teacher.tolist()) if t >= 0}
        labels[:6] = torch.tensor([inverse.get(int(t), 0) for t in z_t[:6, :REAL_VOCAB].argmax(-1)])

    *_, counts = chunked_loss(student_hidden, teacher_hidden, labels, heads, LossConfig(method, chunk_size=chunk_size))
    count = counts.as_dict()

    gold = labels if not cross else heads.student_to_teacher[labels]
    has_gold = gold >= 0
    expected_correct = (z_t[:, :REAL_VOCAB].argmax(-1) == gold)[has_gold].sum().item()
    expected_nll = F.cross_entropy(z_t[has_gold], gold[has_gold], reduction="sum").item()
    assert count["n_teacher_gold"] == has_gold.sum().item()
    assert count["n_teacher_correct"] == expected_correct
    assert 0 < expected_correct < ROWS
    assert count["teacher_gold_nll"] == pytest.approx(expected_nll, rel=1e-5)
