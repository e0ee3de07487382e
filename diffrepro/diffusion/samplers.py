"""Samplers over DiT's respaced schedule: DDIM (eta = 0 by default) and DDPM (learned variance).

A sampler exposes `timesteps` (original 0..999 values, noisiest first) and
`step(i, model_output, x, generators)` -> x at the next timestep. Model outputs are
DiT's: the first C channels are epsilon, the next C (if present) the variance interpolation.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from .schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod, linear_betas, sampling_timesteps

SAMPLERS = ("ddim", "ddpm", "dpmsolver++")


class Sampler(Protocol):
    name: str
    timesteps: list[int]

    def step(self, i: int, model_output: torch.Tensor, x: torch.Tensor,
             generators: Sequence[torch.Generator] | None) -> torch.Tensor: ...


class DDIMSampler:
    """DDIM (Song et al., 2021, eq. 12) between consecutive kept timesteps.

    Written here, not taken from diffusers: diffusers' DDIMScheduler derives the previous
    timestep as t - 1000 // N (a fixed stride), which does not walk DiT's linspace grid
    (e.g. N = 25 keeps 999, 957, ..., while the stride gives 999 -> 959). Coefficients are
    computed in float64 as ADM does, then applied to float32 tensors.
    """

    name = "ddim"

    def __init__(self, steps: int, eta: float = 0.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        self.timesteps = sampling_timesteps(steps, num_train_timesteps)
        self.eta = eta
        abar = alphas_cumprod(num_train_timesteps)
        self._coefficients = []
        self.posterior_std = []  # the DDPM (eta = 1) noise scale of each step
        for i, t in enumerate(self.timesteps):
            a = abar[t]
            a_prev = abar[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else 1.0
            posterior_std = math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
            self.posterior_std.append(posterior_std)
            sigma = eta * posterior_std
            self._coefficients.append((
                math.sqrt(1.0 / a),          # x0 = c_x * x - c_eps * eps
                math.sqrt(1.0 / a - 1.0),
                math.sqrt(a_prev),           # x_prev = c_x0 * x0 + c_dir * eps + sigma * z
                math.sqrt(max(1 - a_prev - sigma**2, 0.0)),
                sigma,
            ))

    def affine_coefficients(self, i: int) -> tuple[float, float, float]:
        """(a, b, c) with x_prev = a * x + b * eps + c * z: the step as an affine map, the
        form parallel-in-time solvers need."""
        c_x, c_eps, c_x0, c_dir, sigma = self._coefficients[i]
        return c_x0 * c_x, c_dir - c_x0 * c_eps, sigma

    def step(self, i, model_output, x, generators=None):
        c_x, c_eps, c_x0, c_dir, sigma = self._coefficients[i]
        eps = model_output[:, : x.shape[1]]
        x0 = c_x * x - c_eps * eps
        x_prev = c_x0 * x0 + c_dir * eps
        if sigma > 0:
            x_prev = x_prev + sigma * per_image_noise(x, generators)
        return x_prev


class DDPMSampler:
    """Ancestral DDPM with DiT's learned variance, through diffusers' DDPMScheduler.

    Given the respaced timesteps, diffusers steps to the previous kept timestep and forms
    the posterior from alphas_cumprod at the kept steps: the same betas ADM's respacing
    recomputes, and the same learned-range interpolation between log posterior variance
    and log beta. tests/test_samplers.py checks this against an independent ADM-style
    implementation.
    """

    name = "ddpm"

    def __init__(self, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        from diffusers import DDPMScheduler

        betas = linear_betas(num_train_timesteps)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, trained_betas=betas.tolist(),
            variance_type="learned_range", clip_sample=False, prediction_type="epsilon")
        self.timesteps = sampling_timesteps(steps, num_train_timesteps)
        self.scheduler.set_timesteps(timesteps=self.timesteps)

    def step(self, i, model_output, x, generators=None):
        generator = list(generators) if generators is not None else None
        return self.scheduler.step(model_output, self.timesteps[i], x,
                                   generator=generator).prev_sample


class DPMSolverPPSampler:
    """DPM-Solver++ (2M, data prediction; Lu et al., 2022) through diffusers'
    DPMSolverMultistepScheduler on DiT's linear betas.

    The timesteps are diffusers' own linspace spacing (999 down to 999/N, then a last step
    to the clean image), as a user of the library gets it; DiT's respacing, which ends at
    t = 0, is kept for DDIM and DDPM. The learned variance channels are ignored. The solver
    is multistep (it remembers the previous model output), so its state restarts at step 0:
    one sampler object serves batch after batch.
    """

    name = "dpmsolver++"

    def __init__(self, steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        from diffusers import DPMSolverMultistepScheduler

        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            trained_betas=linear_betas(num_train_timesteps).tolist(),
            algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon")
        self.steps = steps
        self.scheduler.set_timesteps(steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]

    def step(self, i, model_output, x, generators=None):
        if i == 0:
            self.scheduler.set_timesteps(self.steps)  # forget the previous batch's outputs
        eps = model_output[:, : x.shape[1]]
        return self.scheduler.step(eps, self.timesteps[i], x).prev_sample


def make_sampler(name: str, steps: int, **options) -> Sampler:
    if name == "ddim":
        return DDIMSampler(steps, **options)
    if name == "ddpm":
        return DDPMSampler(steps, **options)
    if name == "dpmsolver++":
        return DPMSolverPPSampler(steps, **options)
    raise ValueError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")


def per_image_noise(x: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise drawn image by image, so it does not depend on the batch."""
    if generators is None:
        raise ValueError("this sampler draws noise: pass one torch.Generator per image")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generators]).to(x.device)
