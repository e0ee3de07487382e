"""Min-SNR-gamma weighting (Hang et al., ICCV 2023, arXiv 2303.09556; code
TiankaiHang/Min-SNR-Diffusion-Training): for epsilon prediction the MSE of timestep t is
weighted by min(SNR(t), gamma) / SNR(t).

Written from the paper, not taken from the SpeeD repository, whose Min-SNR baseline
reduces the weight to gamma / (SNR + 1) (a `.min(axis=1)[0]` that picks a scalar)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffrepro.training_methods import LossWeighting, register_training_component, snr


@dataclass(frozen=True)
class MinSNRParams:
    gamma: float = 5.0

    def __post_init__(self):
        if self.gamma <= 0:
            raise ValueError(f"min_snr needs gamma > 0, got {self.gamma}")


def min_snr_weights(alphas_cumprod: np.ndarray, gamma: float = 5.0) -> np.ndarray:
    s = snr(alphas_cumprod)
    # The reference code sets the weight to 1 where SNR is 0 (never on this schedule).
    return np.where(s > 0, np.minimum(s, gamma) / np.where(s > 0, s, 1.0), 1.0)


@register_training_component("min_snr", parts=("weighting",), params=MinSNRParams)
def min_snr(params: MinSNRParams, alphas_cumprod):
    """Min-SNR-gamma weighting min(SNR, gamma) / SNR on the epsilon-MSE."""
    return {"weighting": LossWeighting(min_snr_weights(alphas_cumprod, params.gamma))}
