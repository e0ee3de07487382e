"""T-Stitch on LDM U-Nets (Pan et al., 2024; NVlabs/T-Stitch ldm/): LDM-S for the first, noisiest
steps, LDM for the rest, sampled with LDM's DDIM (eta = 1) and guidance against a uniform
random context (diffrepro.diffusion.random_context_guidance)."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method

LDM_TIMESTEPS = 1000  # diffrepro.diffusion.ldm_ddim (no torch here)


@dataclass(frozen=True)
class TStitchLDMSetting:
    ratio: float  # fraction of the trajectory (by original timestep) given to the small U-Net

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch_ldm ratio must be in [0, 1], got {self.ratio}")

    def id(self) -> str:
        return f"r{self.ratio:g}"


def uses_small_unet(t: int, ratio: float, num_timesteps: int = LDM_TIMESTEPS) -> bool:
    """T-Stitch's LDM rule (ldm/ldm/models/diffusion/ddpm.py, TStitchProxy.get_cur_idx): the small
    model while t / 1000 > 1 - r (strict, unlike DiT's >=), and throughout at r = 1."""
    return ratio == 1.0 or t / num_timesteps > 1 - ratio


@register_method("tstitch_ldm", setting=TStitchLDMSetting, roles=("small", "large"), family="ldm")
def tstitch_ldm(models, sampler, noise, labels, generators, setting: TStitchLDMSetting) -> MethodOutput:
    """Trajectory stitching of two LDM U-Nets: small first, large from the switch on."""
    from diffrepro.diffusion.random_context_guidance import draw_context_seeds, with_random_contexts
    from diffrepro.diffusion.sampling import sample_loop

    # one seed per image for the unconditional contexts, drawn before the loop as T-Stitch
    # draws its uc; each model draws its own context from it
    seeds = draw_context_seeds(generators)
    small = with_random_contexts(models["small"], seeds)
    large = with_random_contexts(models["large"], seeds)

    def pick(i: int, t: int):
        return ("small", small) if uses_small_unet(t, setting.ratio) else ("large", large)

    samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return MethodOutput(samples, steps)
