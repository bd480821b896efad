"""On-policy DSKD: prompt batch, sampling, the sampled rows, and the step's loss split."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from axolotl_dskd.collate.cross_tokenizer import IGNORE_INDEX, DSKDCrossTokenizerCollator
from axolotl_dskd.collate.packing import packing_flags
from axolotl_dskd.distill.on_policy import OnPolicyConfig, left_padded, prompts, sample, sampled_rows
from axolotl_dskd.distill.step import DistillationStep
from axolotl_dskd.distill.vocabulary import SharedVocabulary
from axolotl_dskd.integration.args import DSKDTrainingArgsMixin
from axolotl_dskd.loss.config import LossConfig
from tests.distill.test_step import _batch

PAD, EOS = 0, 9


def _cfg(seed: int = 42, **settings: float) -> OnPolicyConfig:
    """On-policy settings as the YAML would give them: the keys' defaults plus `settings`."""
    keys = {f"dskd_on_policy_{name}": value for name, value in settings.items()}
    return OnPolicyConfig.from_settings(DSKDTrainingArgsMixin(**keys), seed=seed)


def test_prompts_stop_at_the_first_trained_label_and_drop_padding() -> None:
    input_ids = torch.tensor([[5, 6, 7, 8, 9, PAD], [5, 6, 7, 8, 4, 9]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, -100, -100, -100, 4, 9]])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels} | packing_flags(False, 2)
    assert prompts(batch) == [[5, 6], [5, 6, 7, 8]]


def test_left_padding_puts_every_prompt_against_the_last_column() -> None:
    input_ids, attention_mask = left_padded([[5, 6], [5, 6, 7, 8]], PAD)
    assert input_ids.tolist() == [[PAD, PAD, 5, 6], [5, 6, 7, 8]]
    assert attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_sampled_rows_keep_the_response_up_to_its_first_eos() -> None:
    generated = torch.tensor([[3, 4, EOS, PAD, PAD], [3, 3, 3, 3, 3], [EOS, PAD, PAD, PAD, PAD]])
    rows = sampled_rows([[5, 6], [5], [7, 7, 7]], generated, EOS)
    assert rows[0] == {"input_ids": [5, 6, 3, 4, EOS], "attention_mask": [1] * 5, "labels": [-100, -100, 3, 4, EOS]}
    assert rows[1]["input_ids"] == [5, 3, 3, 3, 3, 3] and rows[1]["labels"] == [-100, 3, 3, 3, 3, 3]
    assert rows[2]["labels"] == [-100, -100, -100, EOS]


def test_the_coin_is_seeded_per_micro_batch_and_respects_ratio_and_start() -> None:
    cfg = _cfg(ratio=0.5, start_step=3, seed=7)
    assert not any(cfg.samples(step, micro) for step in range(3) for micro in range(4))
    draws = [cfg.samples(step, micro) for step in range(3, 503) for micro in range(2)]
    assert draws == [cfg.samples(step, micro) for step in range(3, 503) for micro in range(2)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert all(_cfg(ratio=1.0).samples(step, 0) for step in range(20))
    assert not any(_cfg(ratio=0.0).samples(step, 0) for step in range(20))


@pytest.fixture(scope="module")
def student(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32).train()


def test_left_padded_sampling_equals_sampling_each_prompt_alone(tiny, student) -> None:
    """Top-1 sampling is deterministic: any mask or position error from left padding
    would change the short prompt's continuation."""
    tokenizer = tiny.tokenizer
    short = tokenizer("Janet has", add_special_tokens=False)["input_ids"]
    long = tokenizer("A farmer sells 12 apples and buys", add_special_tokens=False)["input_ids"]
    cfg = _cfg(ratio=1.0, max_new_tokens=12, top_k=1)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    together = sample(student, [long, short], cfg, pad, eos, max_length=64, seed=0)
    alone = sample(student, [short], cfg, pad, eos, max_length=64, seed=0)
    assert sampled_rows([short], together[1:], eos) == sampled_rows([short], alone, eos)
    assert student.training  # restored after generation


def test_sampling_is_reproducible_and_leaves_the_global_rng_alone(tiny, student) -> None:
    tokenizer = tiny.tokenizer
    prompt = [tokenizer("Janet has 3 apples", add_special_tokens=False)["input_ids"]] * 3
    cfg = _cfg(ratio=1.0, max_new_tokens=10, temperature=1.5)
    args = (tokenizer.pad_token_id, tokenizer.eos_token_id, 64)
    torch.manual_seed(123)
    first = sample(student, prompt, cfg, *args, seed=5)
    after_sampling = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(sample(student, prompt, cfg, *args, seed=5), first)
    assert torch.equal(torch.rand(3), after_sampling)
    assert not torch.equal(sample(student, prompt, cfg, *args, seed=6), first)
    width = 64 - 2
    assert sample(student, [[1] * width], cfg, *args, seed=5).shape == (1, 2)  # capped by the sequence length


def test_cross_tokenizer_sampled_rows_get_teacher_rows_and_pairs(tiny) -> None:
    tokenizer = tiny.tokenizer
    prompt = tokenizer("Q: Janet has 3 apples.\nA:", add_special_tokens=False)["input_ids"]
    response = tokenizer(" She has 15 apples.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    generated = torch.tensor([response + [tokenizer.pad_token_id] * 3])
    collator = DSKDCrossTokenizerCollator(
        tokenizer, padding=True, return_tensors="pt", teacher_tokenizer_path=str(tiny.cross_teacher)
    )
    batch = collator(sampled_rows([prompt], generated, tokenizer.eos_token_id))
    teacher = tiny.teacher_tokenizer
    trained = [t for t in batch["teacher_labels"][0].tolist() if t != IGNORE_INDEX]
    assert teacher.decode(trained[:-1]) == " She has 15 apples." and trained[-1] == teacher.eos_token_id
    assert (batch["labels"][0] != IGNORE_INDEX).sum() == len(response)
    assert len(batch["dskd_pairs"]) >= 2  # at least one response token and EOS


def test_on_policy_loss_on_the_gold_batch_is_the_off_policy_loss(tiny, student) -> None:
    """With the gold batch as its own 'sample', CE from one and KD from the other must
    add up to the off-policy loss, value and gradients."""
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    rows = [json.loads(line) for line in tiny.data.read_text().splitlines()[:3]]
    batch = _batch(tiny.tokenizer, rows)
    step = DistillationStep(
        student, teacher, LossConfig(kd_ratio=0.3, chunk_size=16), SharedVocabulary(len(tiny.tokenizer))
    )
    trained = [p for p in [*student.parameters(), *step.parameters()] if p.requires_grad]

    def loss_and_grads(**kwargs):
        for p in trained:
            p.grad = None
        loss, metrics = step(student, batch, **kwargs)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trained], metrics

    off_loss, off_grads, off_metrics = loss_and_grads()
    on_loss, on_grads, on_metrics = loss_and_grads(kd_inputs=batch)
    assert on_loss == pytest.approx(off_loss, rel=1e-5)
    for on_grad, off_grad in zip(on_grads, off_grads, strict=True):
        assert torch.allclose(on_grad, off_grad, atol=1e-6, rtol=1e-4)
    assert on_metrics == pytest.approx(off_metrics, rel=1e-5)
    half_loss, _, _ = loss_and_grads(kd_inputs=batch, kd_divisor=2.0)
    ce, kd = off_metrics["ce_loss"], off_metrics["kd_loss"]
    assert half_loss == pytest.approx(0.7 * ce + 0.3 * kd / 2, rel=1e-5)


def test_a_4bit_student_samples_and_stays_trainable(tiny) -> None:
    """QLoRA: sampling must not trigger bitsandbytes' CPU inference repacking."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    base = AutoModelForCausalLM.from_pretrained(tiny.student, quantization_config=quantization, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).train()
    tokenizer = tiny.tokenizer
    prompt = tokenizer("Janet has 3 apples", add_special_tokens=False)["input_ids"]
    cfg = _cfg(ratio=1.0, max_new_tokens=6)
    generated = sample(model, [prompt, prompt[:2]], cfg, tokenizer.pad_token_id, tokenizer.eos_token_id, 64, seed=0)
    assert generated.shape[0] == 2 and model.training
    loss = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([prompt])).loss
    loss.backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if p.requires_grad)
