"""Each divergence against a direct float64 formula written from its definition."""

import math

import numpy as np
import pytest
import torch

from axolotl_dskd.loss.divergences import DIVERGENCES, DivergenceConfig, divergence

TEMPERATURE = 2.0
LAMBDA = 0.1
AKL_ALPHA = 0.5


def _softmax(row: np.ndarray) -> np.ndarray:
    """Probabilities of row / T; non-finite logits are excluded tokens (probability 0)."""
    scaled = row / TEMPERATURE
    keep = np.isfinite(scaled)
    probs = np.zeros_like(scaled)
    shifted = scaled[keep] - scaled[keep].max()
    probs[keep] = np.exp(shifted) / np.exp(shifted).sum()
    return probs


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def _reference(name: str, p: np.ndarray, q: np.ndarray) -> float:
    if name == "forward_kl":
        return _kl(p, q)
    if name == "reverse_kl":
        return _kl(q, p)
    if name == "js":
        m = (p + q) / 2
        return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    if name == "skewed_forward_kl":
        return _kl(p, LAMBDA * p + (1 - LAMBDA) * q)
    if name == "skewed_reverse_kl":
        return _kl(q, (1 - LAMBDA) * p + LAMBDA * q)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if name == "adaptive_kl":
        order = np.argsort(p, kind="stable")
        cumulative = 0.0
        head_gap = tail_gap = 0.0
        for index in order:
            cumulative += p[index]
            gap = abs(p[index] - q[index])
            if cumulative <= AKL_ALPHA:
                tail_gap += gap
            else:
                head_gap += gap
        total = head_gap + tail_gap
        return (head_gap * _kl(p, q) + tail_gap * _kl(q, p)) / total
    raise AssertionError(name)


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(6, 11, generator=generator, dtype=torch.float64) * 3
    student = torch.randn(6, 11, generator=generator, dtype=torch.float64) * 3
    target[1, [2, 5]] = float("-inf")  # tokens excluded from both sides
    student[1, [2, 5]] = float("-inf")
    target[2, 0] = float("inf")  # a non-finite target logit is an excluded token
    student[3, 4] = float("nan")
    target[4, :] = target[4, 0]  # flat target row
    return target, student


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_matches_direct_formula(name: str) -> None:
    target, student = _rows()
    cfg = DivergenceConfig(name=name, temperature=TEMPERATURE, skew_lambda=LAMBDA, adaptive_kl_alpha=AKL_ALPHA)
    got = divergence(target, student, cfg).double()
    for row in range(target.shape[0]):
        p, q = _softmax(target[row].numpy()), _softmax(student[row].numpy())
        assert got[row].item() == pytest.approx(_reference(name, p, q), rel=1e-4, abs=1e-6), (name, row)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_is_zero_for_equal_rows_and_gradients_stay_finite(name: str) -> None:
    target, _ = _rows()
    student = target.clone().float().requires_grad_(True)
    values = divergence(target.float(), student, DivergenceConfig(name=name))
    assert torch.allclose(values, torch.zeros_like(values), atol=1e-5)
    values.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_forward_kl_is_infinite_when_student_excludes_a_target_token() -> None:
    target = torch.zeros(1, 4)
    student = torch.tensor([[0.0, 0.0, 0.0, float("-inf")]])
    assert divergence(target, student, DivergenceConfig()).item() == float("inf")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_all_finite_rows_take_the_unmasked_path_with_right_values_and_gradients(name: str) -> None:
    """The usual case (every logit finite) skips the masking: check it on its own, values
    against the direct formula, gradients against finite differences."""
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(5, 9, generator=generator, dtype=torch.float64) * 3
    student = (torch.randn(5, 9, generator=generator, dtype=torch.float64) * 3).requires_grad_(True)
    cfg = DivergenceConfig(name=name, temperature=TEMPERATURE, skew_lambda=LAMBDA, adaptive_kl_alpha=AKL_ALPHA)
    got = divergence(target, student, cfg)
    for row in range(target.shape[0]):
        p, q = _softmax(target[row].numpy()), _softmax(student[row].detach().numpy())
        assert got[row].item() == pytest.approx(_reference(name, p, q), rel=1e-6, abs=1e-9), (name, row)
    # AKL's head/tail weights are detached by design, so its gradient is not that of its
    # value. The divergences compute in float32: finite differences use a wide step.
    if name != "adaptive_kl":
        check = torch.autograd.gradcheck
        assert check(lambda s: divergence(target, s, cfg), (student,), eps=1e-3, atol=1e-3, rtol=1e-2)
