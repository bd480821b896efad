"""A whole distillation step on tiny real models: who gets gradients, and gradient accumulation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from axolotl_dskd.collate.packing import model_inputs, packing_flags
from axolotl_dskd.distill.positions import LossPositions
from axolotl_dskd.distill.step import DistillationStep
from axolotl_dskd.distill.vocabulary import SharedVocabulary
from axolotl_dskd.loss.chunked import chunked_loss
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.terms import LossTerms
from axolotl_dskd.teacher.loading import last_hidden_state, output_head


def _batch(tokenizer, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded student batch: prompt labels -100, response + EOS trained."""
    encoded = []
    for row in rows:
        prompt = tokenizer(row["instruction"] + "\n", add_special_tokens=False)["input_ids"]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:40] + [tokenizer.eos_token_id]
        encoded.append((prompt[:40] + response, [-100] * len(prompt[:40]) + response))
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in encoded]),
    } | packing_flags(False, len(encoded))


@pytest.fixture(scope="module")
def models(tiny):
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    rows = [json.loads(line) for line in tiny.data.read_text().splitlines()[:4]]
    return student, teacher, _batch(tiny.tokenizer, rows), len(tiny.tokenizer)


def _term_loss(step: DistillationStep, student, batch, term: str) -> torch.Tensor:
    """One loss term alone, differentiable (its weight 1, every other term's 0)."""
    rows = LossPositions.build(batch["labels"])
    hidden = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    teacher_hidden = last_hidden_state(step.teacher, model_inputs(batch, "", step.teacher.device))
    only_term = LossTerms(*(float(name == term) for name in LossTerms.names()))
    loss, _, _ = chunked_loss(
        rows.student_rows(hidden.hidden_states[-1]),
        rows.teacher_rows(teacher_hidden),
        rows.labels,
        step.heads(output_head(student)),
        step.loss_cfg,
        only_term,
    )
    return loss


# The method doc's table 2.4 (DSKDv2): does the term send a gradient to ... ?
GRADIENT_TABLE = {
    "ce_loss": {"student body": True, "student head": True, "t2s projector": False},
    "t2s_ce_loss": {"student body": False, "student head": False, "t2s projector": True},
    "t2s_kd_loss": {"student body": True, "student head": True, "t2s projector": False},
    "s2t_kd_loss": {"student body": True, "student head": False, "t2s projector": False},
}


@pytest.mark.parametrize("term", list(GRADIENT_TABLE))
@pytest.mark.parametrize("part", ["student body", "student head", "t2s projector", "teacher"])
def test_gradient_flow_table(models, term: str, part: str) -> None:
    student, teacher, batch, vocab_size = models
    step = DistillationStep(student, teacher, LossConfig(agreement_mask=False), SharedVocabulary(vocab_size))
    tensors = {
        "student body": student.model.layers[0].self_attn.q_proj.weight,
        "student head": student.lm_head.weight,
        "t2s projector": step.t2s_projector.weight,
        "teacher": teacher.model.layers[0].self_attn.q_proj.weight,
    }
    student.zero_grad(set_to_none=True)
    step.zero_grad(set_to_none=True)
    _term_loss(step, student, batch, term).backward()
    grad = tensors[part].grad
    gets_gradient = grad is not None and grad.abs().sum().item() > 0
    assert gets_gradient == GRADIENT_TABLE.get(term, {}).get(part, False), (term, part)


@pytest.mark.parametrize("method", ["dskd", "vanilla_kd"])
def test_gradient_accumulation_split_gives_the_same_loss_and_gradients(models, method: str) -> None:
    student, teacher, batch, vocab_size = models
    step = DistillationStep(student, teacher, LossConfig(method=method, chunk_size=16), SharedVocabulary(vocab_size))
    trained = [p for p in [*student.parameters(), *step.parameters()] if p.requires_grad]
    num_items = (batch["labels"][:, 1:] != -100).sum()

    def loss_and_grads(micro_batches: list[dict[str, torch.Tensor]]):
        for p in trained:
            p.grad = None
        total = 0.0
        for micro in micro_batches:
            loss, _ = step(student, micro, num_items)
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in trained]

    def unpadded(index: int) -> dict[str, torch.Tensor]:
        length = int(batch["attention_mask"][index].sum())
        row = {key: value[index : index + 1] for key, value in batch.items()}
        return {key: value[:, :length] if value.dim() == 2 else value for key, value in row.items()}

    whole_loss, whole_grads = loss_and_grads([batch])
    split_loss, split_grads = loss_and_grads([unpadded(i) for i in range(4)])
    assert split_loss == pytest.approx(whole_loss, abs=1e-5)
    for whole, split in zip(whole_grads, split_grads, strict=True):
        assert torch.allclose(whole, split, atol=1e-5)


@pytest.mark.parametrize("method", ["dskd", "vanilla_kd"])
def test_a_step_without_response_tokens_gives_loss_zero_and_zero_gradients(models, method: str) -> None:
    """A micro-batch, or a whole step, whose rows were all truncated to their prompts: loss 0
    and zero gradients (as plain Axolotl logs), never a division by zero."""
    student, teacher, batch, vocab_size = models
    step = DistillationStep(student, teacher, LossConfig(method=method, chunk_size=16), SharedVocabulary(vocab_size))
    no_response = batch | {"labels": torch.full_like(batch["labels"], -100)}
    trained = [p for p in [*student.parameters(), *step.parameters()] if p.requires_grad]
    for num_items in (torch.tensor(0), None):  # the whole step has none; no count was given
        for p in trained:
            p.grad = None
        loss, metrics = step(student, no_response, num_items)
        loss.backward()
        assert loss.item() == 0.0 and metrics["ce_loss"] == 0.0
        assert all(p.grad is None or not p.grad.any() for p in trained)
    # accumulated beside a micro-batch with responses, it changes neither loss nor gradients
    num_items = (batch["labels"][:, 1:] != -100).sum()
    results = []
    for micro_batches in ([no_response, batch], [batch]):
        for p in trained:
            p.grad = None
        total = sum(step(student, micro, num_items)[0] for micro in micro_batches)
        total.backward()
        results.append((total.item(), [p.grad.clone() for p in trained]))
    (mixed_loss, mixed_grads), (alone_loss, alone_grads) = results
    assert mixed_loss == pytest.approx(alone_loss, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(mixed_grads, alone_grads, strict=True))


def test_padded_teacher_head_never_predicts_padding_rows(models) -> None:
    student, teacher, _, vocab_size = models
    step = DistillationStep(student, teacher, LossConfig(), SharedVocabulary(vocab_size))
    assert output_head(teacher).shape[0] == vocab_size + 16
    assert step.head_loss.teacher_vocab == step.head_loss.student_vocab == vocab_size


def test_metrics_are_logged_per_term(models) -> None:
    student, teacher, batch, vocab_size = models
    step = DistillationStep(student, teacher, LossConfig(), SharedVocabulary(vocab_size))
    _, metrics = step(student, batch)
    assert set(metrics) == {
        "ce_loss",
        "kd_loss",
        "t2s_ce_loss",
        "t2s_kd_loss",
        "s2t_kd_loss",
        "t2s_agreement",
        "t2s_acc",
        "s2t_agreement",
        "align_ratio",
        "teacher_acc",
        "teacher_ce",
    }
    assert metrics["align_ratio"] == 1.0  # same vocabulary: every response token is paired
    assert metrics["kd_loss"] == pytest.approx(
        metrics["t2s_ce_loss"] + metrics["t2s_kd_loss"] + metrics["s2t_kd_loss"], rel=1e-5
    )
    assert 0.0 <= metrics["t2s_agreement"] <= 1.0 and 0.0 <= metrics["t2s_acc"] <= 1.0
    assert 0.0 <= metrics["teacher_acc"] <= 1.0 and metrics["teacher_ce"] > 0.0


@pytest.mark.parametrize("normalization", ["global", "paper"])
def test_paper_normalisation_makes_gradient_accumulation_differ_from_one_batch(models, normalization: str) -> None:
    """What `dskd_normalization: paper` costs: per-micro-batch divisors, so splitting a
    batch into micro-batches of different sizes changes the loss; `global` does not."""
    student, _, batch, vocab_size = models
    # a sharpened copy of the student as teacher: the pinv projector is near identity, so
    # pairs agree, and the student-space KD is large
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    teacher.model.norm.weight.mul_(30.0)
    cfg = LossConfig(chunk_size=16, normalization=normalization)
    step = DistillationStep(student, teacher, cfg, SharedVocabulary(vocab_size))
    num_items = (batch["labels"][:, 1:] != -100).sum()
    whole, metrics = step(student, batch, num_items)
    assert metrics["t2s_agreement"] > 0.5 and metrics["t2s_kd_loss"] > 0.1, metrics
    parts = [{key: value[rows] for key, value in batch.items()} for rows in (slice(0, 1), slice(1, 4))]
    split = sum(step(student, part, num_items, kd_divisor=2)[0].item() for part in parts)
    assert (abs(split - whole.item()) > 1e-4) == (normalization == "paper"), (split, whole.item())


def test_scoring_under_paper_normalisation_counts_no_pairs(models, monkeypatch) -> None:
    """`score` returns sums, which no weight changes: the pair-count pass is skipped, and
    the sums equal the `global` run's."""
    student, teacher, batch, vocab_size = models
    sums = {}
    for normalization in ("global", "paper"):
        cfg = LossConfig(chunk_size=16, normalization=normalization)
        step = DistillationStep(student, teacher, cfg, SharedVocabulary(vocab_size))
        monkeypatch.setattr("axolotl_dskd.distill.head_loss.pair_counts", _no_pair_counts)
        sums[normalization] = step.score(student, batch)[0].as_dict()
    assert sums["paper"] == pytest.approx(sums["global"])


def _no_pair_counts(*args, **kwargs):
    raise AssertionError("score counted pairs")
