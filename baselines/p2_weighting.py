"""P2 weighting (Choi et al., CVPR 2022, arXiv 2204.00227; code jychoi118/P2-weighting):
the epsilon-MSE of timestep t weighted by 1 / (k + SNR(t))^gamma, the VLB term unweighted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffrepro.training_methods import LossWeighting, register_training_component, snr


@dataclass(frozen=True)
class P2Params:
    k: float = 1.0
    gamma: float = 1.0  # the paper uses 0.5 or 1 (k = 1); gamma = 0 is plain DDPM

    def __post_init__(self):
        if self.k <= 0 or self.gamma < 0:
            raise ValueError(f"p2 needs k > 0 and gamma >= 0, got k={self.k}, gamma={self.gamma}")


def p2_weights(alphas_cumprod: np.ndarray, k: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    return 1.0 / (k + snr(alphas_cumprod)) ** gamma


@register_training_component("p2", parts=("weighting",), params=P2Params)
def p2(params: P2Params, alphas_cumprod):
    """P2 weighting 1 / (k + SNR)^gamma on the epsilon-MSE."""
    return {"weighting": LossWeighting(p2_weights(alphas_cumprod, params.k, params.gamma))}
