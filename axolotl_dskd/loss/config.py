"""The loss's settings, as the YAML's dskd_* keys set them (their defaults live here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from axolotl_dskd.loss.divergences import DivergenceConfig

# What the KD sums are divided by: `global` = response tokens of the global batch (exact
# under gradient accumulation); `paper` = DSKDv2's per-micro-batch pair counts.
NORMALIZATIONS = ("global", "paper")


@dataclass(frozen=True)
class LossConfig:
    """Loss knobs from the YAML (dskd_method, dskd_kd_ratio, dskd_agreement_mask, ...)."""

    method: str = "dskd"
    kd_ratio: float = 0.5
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    agreement_mask: bool = True
    chunk_size: int = 512  # rows per chunk; the YAML default of dskd_loss_chunk_size
    normalization: str = "global"

    @classmethod
    def from_settings(cls, settings: Any) -> LossConfig:
        """The loss settings carried in the training arguments (the dskd_* YAML keys)."""
        return cls(
            method=settings.dskd_method,
            kd_ratio=settings.dskd_kd_ratio,
            divergence=DivergenceConfig(
                name=settings.dskd_divergence,
                temperature=settings.dskd_temperature,
                skew_lambda=settings.dskd_skew_lambda,
                adaptive_kl_alpha=settings.dskd_adaptive_kl_alpha,
            ),
            agreement_mask=settings.dskd_agreement_mask,
            chunk_size=settings.dskd_loss_chunk_size,
            normalization=settings.dskd_normalization,
        )
