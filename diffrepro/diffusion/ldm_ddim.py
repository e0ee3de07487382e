"""LDM's DDIM sampler (CompVis latent-diffusion ldm/models/diffusion/ddim.py, as T-Stitch's
ldm/ runs it): the "linear" schedule of ldm/modules/diffusionmodules/util.make_beta_schedule
(betas = linspace(sqrt(start), sqrt(end), T)^2, 0.0015..0.0195 for cin-ldm-vq-f8), the
uniform grid t = 1, 1 + T/N, ..., whose last step goes to alphas_cumprod[0] (not to 1), and
sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)); T-Stitch samples with
eta = 1, so every step draws noise.

Through diffusers' DDIMScheduler, which is this sampler for Stable Diffusion (itself an LDM):
timestep_spacing "leading" + steps_offset 1 gives the same grid, set_alpha_to_one False the
same last step, and the same sigma formula. The noise is drawn per image from the images'
generators and handed to the scheduler, so samples do not depend on the batch. The betas are
computed in float64 as LDM does; diffusers then holds alphas_cumprod in float32, as LDM's
sampler does (it registers them as float32 tensors).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .samplers import per_image_noise

LDM_TIMESTEPS = 1000


def ldm_linear_betas(linear_start: float, linear_end: float, num_timesteps: int = LDM_TIMESTEPS) -> np.ndarray:
    """make_beta_schedule("linear", ...): linear in sqrt(beta), in float64."""
    return np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=np.float64) ** 2


def ldm_ddim_timesteps(steps: int, num_timesteps: int = LDM_TIMESTEPS) -> list[int]:
    """make_ddim_timesteps("uniform"): range(0, T, T // N) + 1, visited noisiest first."""
    if not (1 <= steps <= num_timesteps and num_timesteps % steps == 0):
        raise ValueError(f"LDM's uniform DDIM grid needs a step count dividing {num_timesteps} "
                         f"(range(0, T, T // N) has N entries only then), got {steps}")
    return [t + 1 for t in range(0, num_timesteps, num_timesteps // steps)][::-1]


class LDMDDIMSampler:
    """DDIM with LDM's schedule and grid; `step` as the other samplers (diffrepro.diffusion.samplers)."""

    name = "ldm_ddim"

    def __init__(self, steps: int, eta: float = 1.0, linear_start: float = 0.0015,
                 linear_end: float = 0.0195, num_train_timesteps: int = LDM_TIMESTEPS):
        from diffusers import DDIMScheduler

        self.eta = float(eta)
        self.scheduler = DDIMScheduler(
            num_train_timesteps=num_train_timesteps,
            trained_betas=ldm_linear_betas(linear_start, linear_end, num_train_timesteps).tolist(),
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
            prediction_type="epsilon")
        self.scheduler.set_timesteps(steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        expected = ldm_ddim_timesteps(steps, num_train_timesteps)
        if self.timesteps != expected:  # diffusers changed its spacing: refuse rather than drift
            raise RuntimeError(f"DDIMScheduler's grid {self.timesteps[:3]}... is not LDM's {expected[:3]}...")

    def step(self, i: int, model_output: torch.Tensor, x: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        eps = model_output[:, : x.shape[1]]
        noise = per_image_noise(x, generators) if self.eta > 0 else None
        return self.scheduler.step(eps, self.timesteps[i], x, eta=self.eta, variance_noise=noise).prev_sample
