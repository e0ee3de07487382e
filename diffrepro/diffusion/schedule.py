"""ADM/DiT's Gaussian diffusion schedule and timestep respacing."""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """ADM's linear schedule in float64, scaled so any length matches the 1000-step one."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    return np.cumprod(1.0 - linear_betas(num_timesteps))


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Kept original timesteps, ascending, as DiT's `create_diffusion(str(steps))`.

    ADM walks a float stride of (T - 1) / (steps - 1) from 0 and rounds with Python's
    round(); the result contains 0 and T - 1. The accumulation is kept as ADM does it,
    since that defines which timesteps the paper's samples used.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    if steps == 1:
        return [0]
    stride = (num_timesteps - 1) / (steps - 1)
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    if len(set(kept)) != steps:
        raise ValueError(f"cannot space {num_timesteps} timesteps into {steps} distinct steps")
    return kept


def sampling_timesteps(steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The kept timesteps in the order a sampler visits them (noisiest first)."""
    return space_timesteps(num_timesteps, steps)[::-1]
