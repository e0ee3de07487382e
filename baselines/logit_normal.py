"""Logit-normal timestep sampling (Esser et al., SD3, ICML 2024, arXiv 2403.03206): the noise
level u = sigmoid(n), n ~ N(mean, std), drawn with diffusers' SD3 training utility and mapped
to the discrete timestep floor(u * T), as diffusers' SD3 training scripts index it.

Here u is the noise level (t / T), as in the paper's density; diffusers indexes a descending
timestep list, which flips u, and the two agree for the default mean 0 (a symmetric density)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logit, ndtr

from diffrepro.training_methods import TimestepSampler, register_training_component


@dataclass(frozen=True)
class LogitNormalParams:
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.std <= 0:
            raise ValueError(f"logit_normal needs std > 0, got {self.std}")


def logit_normal_probabilities(num_timesteps: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """P(floor(u * T) = t): the logit-normal mass of [t / T, (t + 1) / T)."""
    edges = np.linspace(0.0, 1.0, num_timesteps + 1)
    with np.errstate(divide="ignore"):
        cdf = ndtr((logit(edges) - mean) / std)  # logit(0) = -inf, logit(1) = +inf
    return np.diff(cdf)


@register_training_component("logit_normal", parts=("timesteps",), params=LogitNormalParams)
def logit_normal(params: LogitNormalParams, alphas_cumprod):
    """SD3's logit-normal timestep sampling."""
    num_timesteps = len(alphas_cumprod)

    def draw(n, generator):
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=params.mean,
                                                  logit_std=params.std, generator=generator)
        return (u * num_timesteps).long().clamp_(0, num_timesteps - 1)

    return {"timesteps": TimestepSampler(logit_normal_probabilities(num_timesteps, params.mean,
                                                                    params.std), draw=draw)}
