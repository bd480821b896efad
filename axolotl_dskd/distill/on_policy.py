"""On-policy DSKD (DSKDv2 section 5): the KD terms of a micro-batch read responses the
student sampled itself for the batch's prompts, instead of the gold responses.

The gold batch keeps the CE. Here: which micro-batches sample (a seeded coin per
micro-batch), the left-padded prompt batch, generation with the KV cache, and the rows
of the sampled batch (prompt masked, response trained, EOS kept as in off-policy rows),
which the trainer's own collator then pads and, across tokenizers, re-tokenizes and
aligns exactly as it does off-policy rows.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from axolotl_dskd.collate.packing import batch_is_packed, sub_rows
from axolotl_dskd.distill.eval_mode import eval_mode_keeping_4bit
from axolotl_dskd.labels import IGNORE_INDEX

ON_POLICY_KEYS = ("ratio", "start_step", "max_new_tokens", "temperature", "top_p", "top_k")


@dataclass(frozen=True)
class OnPolicyConfig:
    """The dskd_on_policy_* settings (defaults live in args.DSKDArgs) and the run's seed."""

    ratio: float
    start_step: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int

    @classmethod
    def from_settings(cls, settings: Any, seed: int) -> OnPolicyConfig:
        """From anything carrying the dskd_on_policy_* keys (training args, DSKDArgs)."""
        return cls(
            *(getattr(settings, f"dskd_on_policy_{name}") for name in ON_POLICY_KEYS),
            seed=seed,
        )

    def samples(self, global_step: int, micro_batch: int) -> bool:
        """The coin for one micro-batch: a pure function of the seed and the position in
        training, so a resumed run flips the same coins."""
        if self.ratio <= 0 or global_step < self.start_step:
            return False
        return random.Random(f"{self.seed}:{global_step}:{micro_batch}").random() < self.ratio


def prompts(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's tokens before its first trained label, without padding. A packed batch
    is cut into the rows packed in it; there a row with nothing trained (a padded tail)
    gives no prompt."""
    labels = batch["labels"].tolist()
    if batch_is_packed(batch):
        packed = zip(batch["input_ids"].tolist(), labels, sub_rows(batch["position_ids"]), strict=True)
        rows = [(ids[start:end], row_labels[start:end]) for ids, row_labels, spans in packed for start, end in spans]
        rows = [(ids, row_labels) for ids, row_labels in rows if any(label != IGNORE_INDEX for label in row_labels)]
    else:
        masks = batch["attention_mask"].tolist()
        rows = [
            ([token for token, keep in zip(ids, mask, strict=True) if keep], row_labels)
            for ids, mask, row_labels in zip(batch["input_ids"].tolist(), masks, labels, strict=True)
        ]
    prompt_rows = []
    for ids, row_labels in rows:
        trained = [k for k, label in enumerate(row_labels[: len(ids)]) if label != IGNORE_INDEX]
        prompt_rows.append(ids[: trained[0]] if trained else ids)
    return prompt_rows


def left_padded(prompt_rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every prompt ending at the last column, as
    generation needs; the model derives position ids from the mask."""
    width = max(len(row) for row in prompt_rows)
    input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in prompt_rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompt_rows])
    return input_ids, attention_mask


def sampled_rows(prompt_rows: list[list[int]], generated: torch.Tensor, eos_id: int) -> list[dict[str, list[int]]]:
    """Unpadded training rows: prompt (masked) + the sampled response up to and including
    its first EOS (trained); what generation wrote after that EOS is padding."""
    rows = []
    for prompt, response in zip(prompt_rows, generated.tolist(), strict=True):
        if eos_id in response:
            response = response[: response.index(eos_id) + 1]
        ids = prompt + response
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [IGNORE_INDEX] * len(prompt) + response,
            }
        )
    return rows


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompt_rows: list[list[int]],
    cfg: OnPolicyConfig,
    pad_id: int,
    eos_id: int,
    max_length: int,
    seed: int,
    synced: bool = False,
) -> torch.Tensor:
    """The student's continuations [rows, new tokens], sampled with its KV cache in eval
    mode (no dropout), from a generator seeded per call so the run's RNG is untouched.
    `synced`: ranks keep stepping until all are done (engines that gather each layer on
    every rank need it)."""
    input_ids, attention_mask = left_padded(prompt_rows, pad_id)
    device = next(model.parameters()).device
    max_new_tokens = min(cfg.max_new_tokens, max_length - input_ids.shape[1])
    if max_new_tokens <= 0:
        return input_ids.new_zeros((len(prompt_rows), 0))
    with eval_mode_keeping_4bit(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
            synced_gpus=synced,
        )
    return output[:, input_ids.shape[1] :].cpu()


def sampled_batch(
    model: PreTrainedModel,
    gold: dict[str, torch.Tensor],
    cfg: OnPolicyConfig,
    collate: Any,
    pad_id: int,
    eos_id: int,
    max_length: int,
    seed: int,
    synced: bool = False,
) -> dict[str, torch.Tensor]:
    """The on-policy twin of a gold micro-batch, collated like a gold batch."""
    prompt_rows = prompts(gold)
    generated = sample(model, prompt_rows, cfg, pad_id, eos_id, max_length, seed, synced)
    return collate(sampled_rows(prompt_rows, generated, eos_id))


class OnPolicySampler:
    """The trainer's side of on-policy DSKD: counts the micro-batches of each optimizer step
    (the coin is a pure function of that position) and, when the coin says so, returns the
    student's own samples for the micro-batch's prompts, collated by the trainer's collator."""

    def __init__(self, cfg: OnPolicyConfig, tokenizer: Any, collate: Any, max_length: int, synced: bool) -> None:
        self.cfg = cfg
        self.collate = collate
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.max_length = max_length
        self.synced = synced
        self._micro_batch = (-1, 0)  # (global step, micro-batches seen in it)

    def batch(
        self, student: PreTrainedModel, gold: dict[str, torch.Tensor], global_step: int
    ) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
        """The sampled batch (or None: this micro-batch reads the gold responses) and its
        metrics (none when on-policy distillation is off)."""
        if self.cfg.ratio <= 0:
            return None, {}
        step, seen = self._micro_batch
        seen = seen + 1 if step == global_step else 0
        self._micro_batch = (global_step, seen)
        if not self.cfg.samples(global_step, seen):
            return None, {"on_policy": 0.0}
        start = time.perf_counter()
        seed = self.cfg.seed * 1_000_003 + global_step * 1009 + seen
        sampled = sampled_batch(
            student, gold, self.cfg, self.collate, self.pad_id, self.eos_id, self.max_length, seed, self.synced
        )
        return sampled, {"on_policy": 1.0, "on_policy_gen_seconds": time.perf_counter() - start}
