"""The plain sampler, one network call per step: what parallel samplers must reproduce and
what fewer-steps baselines are measured by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class SequentialSetting:
    steps: int  # the sampler's step count (overrides sampling.steps)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sequential: steps must be >= 1, got {self.steps}")

    def reference(self) -> tuple[str, dict]:
        return "sequential", {"steps": self.steps}  # itself: the reference of the others

    def id(self) -> str:
        return f"n{self.steps}"


@register_method("sequential", setting=SequentialSetting, roles=("model",))
def sequential(models, sampler, noise, labels, generators, setting: SequentialSetting) -> MethodOutput:
    """Sequential sampling with one model: one network call per step."""
    from diffrepro.diffusion.sampling import sample_loop  # torch: not at import (see methods/)

    samples, steps = sample_loop(sampler, lambda i, t: ("model", models["model"]), noise, labels,
                                 generators)
    n = len(sampler.timesteps)
    per_image = {"parallel_iterations": np.full(len(noise), n, dtype=np.int64),
                 "network_evaluations": np.full(len(noise), n, dtype=np.int64),
                 "converged": np.ones(len(noise), dtype=bool)}
    return MethodOutput(samples, steps, per_image)
