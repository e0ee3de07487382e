"""SpeeD (Wang et al., arXiv 2405.17403; code 1zeryu/SpeeDiT, later NUS-HPC-AI-Lab/SpeeD):
sample more of the timesteps where the process still changes fast, and reweight them.

Both versions split the schedule at `meaningful_steps`, the first timestep where the
slope of sqrt(1 - abar) falls below 1e-4 (642 for the linear 1000-step schedule), and use
"dual sampling": half the batch drawn, the other half reflected about meaningful_steps.
- v1 (the SpeeDiT README's code): p(t) proportional to tanh(1e6 (slope - 1e-4)) + 1.5
  (about 5:1 before the split), P2 weighting (k = 1, gamma = 1) on the epsilon-MSE.
- v3 (the paper): p(t) = k below tau, 1 above (k = 5, tau = 700; the repository's main
  ImageNet/FFHQ configs use k = 2), weights = the slope of (1 - abar) min-max rescaled to
  [1 - lambda, lambda] below tau (lambda = 0.6) and 1 above. The reflection pivot stays 642.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baselines.p2_weighting import p2_weights
from diffrepro.training_methods import LossWeighting, TimestepSampler, register_training_component

SLOPE_THRESHOLD = 1e-4


def meaningful_steps(alphas_cumprod: np.ndarray, threshold: float = SLOPE_THRESHOLD) -> int:
    """First timestep after the last one whose slope of sqrt(1 - abar) is >= threshold
    (np.gradient: central differences, one-sided at the ends, as the SpeeDiT code)."""
    slope = np.gradient(np.sqrt(1.0 - alphas_cumprod))
    return int(np.argmax(slope < threshold)) + 1


def reflection(pivot: int):
    """SpeeD's dual sample of t: pivot - t below the pivot, t - pivot from it on."""
    def reflect(t: np.ndarray) -> np.ndarray:
        return np.where(t < pivot, pivot - t, t - pivot)
    return reflect


def v1_probabilities(alphas_cumprod: np.ndarray, threshold: float = SLOPE_THRESHOLD,
                     sharpness: float = 1e6, offset: float = 1.5) -> np.ndarray:
    slope = np.gradient(np.sqrt(1.0 - alphas_cumprod))
    p = np.tanh(sharpness * (slope - threshold)) + offset
    return p / p.sum()


def v3_probabilities(num_timesteps: int, k: float, tau: int) -> np.ndarray:
    p = np.where(np.arange(num_timesteps) < tau, float(k), 1.0)
    return p / p.sum()


def v3_weights(alphas_cumprod: np.ndarray, lam: float, tau: int) -> np.ndarray:
    """Slope of (1 - abar), min-max rescaled over all steps to [1 - lam, lam]; 1 from tau on."""
    slope = np.gradient(1.0 - alphas_cumprod)
    low = 1.0 - lam
    scaled = low + (1.0 - 2.0 * low) * (slope - slope.min()) / (slope.max() - slope.min())
    return np.where(np.arange(len(alphas_cumprod)) < tau, scaled, 1.0)


@dataclass(frozen=True)
class SpeedV1Params:
    p2_k: float = 1.0
    p2_gamma: float = 1.0


@dataclass(frozen=True)
class SpeedV3Params:
    k: float = 5.0
    tau: int = 700
    lam: float = 0.6

    def __post_init__(self):
        if self.k <= 0:
            raise ValueError(f"speed_v3 needs k > 0, got {self.k}")
        if not 0 < self.tau <= 1000:
            raise ValueError(f"speed_v3 needs 0 < tau <= 1000, got {self.tau}")
        if not 0.5 <= self.lam <= 1.0:
            raise ValueError(f"speed_v3 needs 0.5 <= lam <= 1 (weights in [1 - lam, lam]), got {self.lam}")


@register_training_component("speed_v1", parts=("timesteps", "weighting"), params=SpeedV1Params)
def speed_v1(params: SpeedV1Params, alphas_cumprod):
    """SpeeD v1: tanh-shaped timestep probabilities, dual sampling, P2 weighting."""
    pivot = meaningful_steps(alphas_cumprod)
    return {"timesteps": TimestepSampler(v1_probabilities(alphas_cumprod), reflect=reflection(pivot)),
            "weighting": LossWeighting(p2_weights(alphas_cumprod, params.p2_k, params.p2_gamma))}


@register_training_component("speed_v3", parts=("timesteps", "weighting"), params=SpeedV3Params)
def speed_v3(params: SpeedV3Params, alphas_cumprod):
    """SpeeD v3: k-times-likelier timesteps below tau, dual sampling, rescaled-slope weights."""
    pivot = meaningful_steps(alphas_cumprod)
    if params.tau > len(alphas_cumprod):
        raise ValueError(f"speed_v3 tau {params.tau} exceeds the schedule's {len(alphas_cumprod)} steps")
    return {"timesteps": TimestepSampler(v3_probabilities(len(alphas_cumprod), params.k, params.tau),
                                         reflect=reflection(pivot)),
            "weighting": LossWeighting(v3_weights(alphas_cumprod, params.lam, params.tau))}
