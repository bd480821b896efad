"""Arithmetic written as chat turns ("What is 37 + 45?" -> "37 + 45 = 82"): the demo's task
and the quality benchmark's. An untrained SmolLM2-135M-Instruct answers verbosely and
mostly wrong; Qwen2.5-Coder-0.5B-Instruct answers almost all of them, so a student has a
visible gap to close in a few CPU minutes."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

OPERATIONS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "add": ("+", lambda a, b: a + b),
    "sub": ("-", lambda a, b: a - b),
    "mul": ("*", lambda a, b: a * b),
}

Problem = tuple[str, int, int]  # (operation, a, b)


def problems(kind: str, count: int, digits: tuple[int, int], rng: random.Random, seen: set) -> list[Problem]:
    """Distinct (kind, a, b) problems with operands of the given digit counts, not in `seen`
    (which they join, so later draws never repeat them)."""
    picked: list[Problem] = []
    while len(picked) < count:
        a = rng.randint(10 ** (digits[0] - 1), 10 ** digits[0] - 1)
        b = rng.randint(10 ** (digits[1] - 1), 10 ** digits[1] - 1)
        a, b = (a, b) if kind != "sub" else (max(a, b), min(a, b))
        if (kind, a, b) not in seen:
            seen.add((kind, a, b))
            picked.append((kind, a, b))
    return picked


def worked(problem: Problem) -> tuple[str, str, int]:
    """The question, the worked answer and the result."""
    kind, a, b = problem
    symbol, apply = OPERATIONS[kind]
    return f"What is {a} {symbol} {b}?", f"{a} {symbol} {b} = {apply(a, b)}", apply(a, b)


def chat(question: str, answer: str) -> dict[str, Any]:
    """One training row for Axolotl's `chat_template` dataset type."""
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def chat_rows(picked: list[Problem]) -> list[dict[str, Any]]:
    return [chat(question, answer) for question, answer, _ in map(worked, picked)]


def eval_rows(picked: list[Problem]) -> list[dict[str, str]]:
    """Held-out rows for `axolotl-dskd eval --task gsm --answer-field answer`."""
    return [{"instruction": q, "output": a, "answer": str(result)} for q, a, result in map(worked, picked)]
