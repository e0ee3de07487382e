"""T-Stitch (Pan et al., 2024, arXiv 2402.14167): a small model for the early, noisiest
steps, the large model for the rest, with one hand-off of the latent as it is."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from diffrepro.methods import MethodOutput, check_int, register_method

SAMPLER_NAMES = ("ddim", "ddpm", "dpmsolver++")  # diffrepro.diffusion.samplers.SAMPLERS (no torch here)


@dataclass(frozen=True)
class TStitchSetting:
    ratio: float  # fraction of the trajectory (by original timestep) given to the small model
    # The paper's samplers x steps figure: a setting may fix its own sampler and step count;
    # None takes sampling.sampler / sampling.steps.
    sampler: str | None = None
    steps: int | None = None

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch ratio must be in [0, 1], got {self.ratio}")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"tstitch sampler must be one of {list(SAMPLER_NAMES)}, got {self.sampler!r}")
        check_int("tstitch", "steps", self.steps, 2, optional=True)

    def id(self) -> str:
        prefix = f"{self.sampler or ''}{self.steps or ''}"
        return f"{prefix}-r{self.ratio:g}" if prefix else f"r{self.ratio:g}"


def uses_small_model(t: int, ratio: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> bool:
    """The released T-Stitch rule for DiT (NVlabs/T-Stitch dit/models.py, TStitch): small model
    while t_orig / 1000 >= 1 - r, t_orig the original (not respaced) timestep."""
    return t / num_timesteps >= 1 - ratio


@register_method("tstitch", setting=TStitchSetting, roles=("small", "large"))
def tstitch(models, sampler, noise, labels, generators, setting: TStitchSetting) -> MethodOutput:
    """Trajectory stitching: small denoiser first, large denoiser from the switch on."""
    # torch comes with the sampling loop: imported here, not at the top, because the
    # workflow imports every plugin to read its config (docs/extending.md)
    from diffrepro.diffusion.sampling import sample_loop

    small, large = models["small"], models["large"]

    def pick(i: int, t: int):
        return ("small", small) if uses_small_model(t, setting.ratio) else ("large", large)

    samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return MethodOutput(samples, steps)
