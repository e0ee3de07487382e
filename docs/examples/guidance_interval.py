"""Guidance interval: classifier-free guidance on the first (noisiest) part of the trajectory
only, the conditional model alone after it: one forward pass per step instead of two.

The README's "Add a method" example: copy this file into methods/, add its config entry, and
`snakemake --cores all reproduce_guidance_interval_table` gives its table and Pareto plot beside
T-Stitch (tests/test_pareto_kind.py runs exactly this).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class GuidanceInterval:
    guided: float  # fraction of the steps, from the noisiest, that run with guidance

    def __post_init__(self):
        if not 0.0 <= self.guided <= 1.0:
            raise ValueError(f"guidance_interval: guided must be in [0, 1], got {self.guided}")


@register_method("guidance_interval", setting=GuidanceInterval, roles=("model",))
def guidance_interval(models, sampler, noise, labels, generators, setting: GuidanceInterval) -> MethodOutput:
    """Guided steps first, then the conditional model alone."""
    # torch comes with it: imported here, since the workflow imports every method to plan
    from diffrepro.diffusion.sampling import sample_loop

    guided = models["model"]
    plain = guided.unguided()  # the conditional half alone: one forward pass instead of two
    n = len(sampler.timesteps)

    def pick(i: int, t: int):
        return "model", guided if i < setting.guided * n else plain

    samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return MethodOutput(samples, steps)
