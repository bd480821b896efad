"""Row-wise divergences between a target and a trained distribution, given as logits.

Every function takes `target_logits` (p, never trained through) and `student_logits`
(q, the trained side), both [rows, vocab], applies the temperature to both, works in
float32 and returns one value per row. Non-finite logits (-inf, +inf, NaN) mark tokens
that are excluded from that distribution: they get probability 0 and add 0 to every
sum, the convention 0 * log 0 = 0 (the reference code zeroes such terms as well).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DIVERGENCES = (
    "forward_kl",
    "reverse_kl",
    "js",
    "skewed_forward_kl",
    "skewed_reverse_kl",
    "adaptive_kl",
    "tvd",
)


@dataclass(frozen=True)
class DivergenceConfig:
    """Which divergence to use and its knobs (YAML: dskd_divergence, dskd_temperature, ...)."""

    name: str = "forward_kl"
    temperature: float = 2.0
    skew_lambda: float = 0.1
    adaptive_kl_alpha: float = 0.5


def log_probs(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, bool]:
    """log softmax(logits / T) in fp32, with non-finite logits excluded (log prob -inf), and
    whether any was excluded. A finite sum proves every logit finite in one reduction, so
    the usual all-finite case skips the masking passes."""
    scaled = logits.float() / temperature
    if torch.isfinite(scaled.sum()):
        return torch.log_softmax(scaled, dim=-1), False
    return torch.log_softmax(
        torch.nan_to_num(scaled, nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf), dim=-1
    ), True


def _weighted_log_ratio(log_w: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, masked: bool) -> torch.Tensor:
    """Sum over the vocab of w * (log a - log b), where entries with w == 0 add nothing."""
    weight = log_w.exp()
    if not masked:  # all log values finite: no 0 * inf to guard against
        return (weight * (log_a - log_b)).sum(-1)
    # mask before multiplying: 0 * (-inf - -inf) would be NaN, and so would its gradient
    log_ratio = torch.where(weight > 0, log_a - log_b, torch.zeros_like(log_a))
    return (weight * log_ratio).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float, masked: bool) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed stably from log a and log b."""
    if not masked:
        return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))
    # logaddexp(-inf, -inf) has a NaN gradient; feed it zeros there and put -inf back after
    excluded = torch.isneginf(log_a) & torch.isneginf(log_b)
    safe_a = log_a.masked_fill(excluded, 0.0)
    safe_b = log_b.masked_fill(excluded, 0.0)
    mixed = torch.logaddexp(safe_a + math.log(weight_a), safe_b + math.log1p(-weight_a))
    return mixed.masked_fill(excluded, float("-inf"))


# Each divergence: (log p, log q, config, masked: whether some log prob is -inf) -> [rows]


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    return _weighted_log_ratio(log_p, log_p, log_q, masked)


def reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    return _weighted_log_ratio(log_q, log_q, log_p, masked)


def js(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    log_m = _log_mix(log_p, log_q, 0.5, masked)
    to_p, to_q = _weighted_log_ratio(log_p, log_p, log_m, masked), _weighted_log_ratio(log_q, log_q, log_m, masked)
    return 0.5 * to_p + 0.5 * to_q


def skewed_forward_kl(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    """DistiLLM's SKL: KL(p || lambda p + (1 - lambda) q)."""
    return _weighted_log_ratio(log_p, log_p, _log_mix(log_p, log_q, cfg.skew_lambda, masked), masked)


def skewed_reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    """DistiLLM's SRKL: KL(q || (1 - lambda) p + lambda q)."""
    return _weighted_log_ratio(log_q, log_q, _log_mix(log_p, log_q, 1.0 - cfg.skew_lambda, masked), masked)


def adaptive_kl(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    """AKL (Wu et al. 2024): FKL and RKL weighted by the detached head/tail gaps of p.

    The tail is the set of smallest target probabilities whose cumulative sum stays
    within `adaptive_kl_alpha`; the head is the rest.
    """
    p, q = log_p.exp(), log_q.exp()
    sorted_p, order = p.sort(dim=-1)
    gap = (sorted_p - q.gather(-1, order)).abs().detach()
    in_tail = sorted_p.cumsum(-1) <= cfg.adaptive_kl_alpha
    gap_tail = (gap * in_tail).sum(-1)
    gap_head = (gap * ~in_tail).sum(-1)
    total = (gap_head + gap_tail).clamp_min(torch.finfo(gap.dtype).tiny)
    head_weight, tail_weight = gap_head / total, gap_tail / total
    return head_weight * forward_kl(log_p, log_q, cfg, masked) + tail_weight * reverse_kl(log_p, log_q, cfg, masked)


def tvd(log_p: torch.Tensor, log_q: torch.Tensor, cfg: DivergenceConfig, masked: bool) -> torch.Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


_BY_NAME: dict[str, Callable[[torch.Tensor, torch.Tensor, DivergenceConfig, bool], torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "js": js,
    "skewed_forward_kl": skewed_forward_kl,
    "skewed_reverse_kl": skewed_reverse_kl,
    "adaptive_kl": adaptive_kl,
    "tvd": tvd,
}


def divergence(target_logits: torch.Tensor, student_logits: torch.Tensor, cfg: DivergenceConfig) -> torch.Tensor:
    """D(softmax(target/T) || softmax(student/T)) per row, as configured."""
    log_p, p_masked = log_probs(target_logits, cfg.temperature)
    log_q, q_masked = log_probs(student_logits, cfg.temperature)
    return _BY_NAME[cfg.name](log_p, log_q, cfg, p_masked or q_masked)
