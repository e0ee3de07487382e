"""Plain DDPM training (Ho et al., 2020): timesteps uniform over 0..T-1, the baseline the
training-acceleration papers measure their speed-ups against."""

from __future__ import annotations

from diffrepro.training_methods import plain_ddpm_part, register_training_component


@register_training_component("uniform", parts=("timesteps",))
def uniform(params, alphas_cumprod):
    """Uniform timesteps (plain DDPM)."""
    return {"timesteps": plain_ddpm_part("timesteps", len(alphas_cumprod))}
