"""Paired comparisons of two arms on the same held-out rows: the mean difference and a 95%
bootstrap interval over the rows, and the plain verdict a user reads. Shared by
`axolotl-dskd compare` and `benchmarks/quality.py`."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DRAWS = 2000


@dataclass(frozen=True)
class PairedGap:
    """`arm` minus `baseline`, averaged per row over the seeds both have."""

    mean: float
    low: float
    high: float
    rows: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_gap(per_seed_differences: Sequence[Sequence[float]], draws: int = DRAWS, seed: int = 0) -> PairedGap:
    """Row-by-row differences of each shared seed, averaged over the seeds, with the 2.5th and
    97.5th percentiles of `draws` bootstrap means over the rows (how much of the gap the
    choice of rows alone explains)."""
    differences = [statistics.mean(column) for column in zip(*per_seed_differences, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(differences, k=len(differences))) for _ in range(draws))
    return PairedGap(
        statistics.mean(differences), means[int(0.025 * draws)], means[int(0.975 * draws) - 1], len(differences)
    )


def verdict(arm: str, baseline: str, gap: PairedGap, metric: str, lower_is_better: bool) -> str:
    """One plain sentence: better, worse, or not distinguishable on these rows."""
    interval = f"interval {gap.low:+.4f} to {gap.high:+.4f}"
    head = f"{arm} {gap.mean:+.4f} {metric} against {baseline} ({interval}, {gap.rows} held-out rows)"
    if not gap.excludes_zero():
        return f"{head}: not distinguishable on {gap.rows} rows; more held-out rows or seeds would tell"
    better = (gap.mean < 0) == lower_is_better
    return f"{head}: {arm} is {'better' if better else 'worse'} than {baseline} on these rows"
