"""Three-model T-Stitch (Pan et al., 2024, Sec. 4 "three models"): S -> B -> XL, each model
taking a contiguous fraction of the trajectory, small first.

The rule is the released one: at original timestep t the progress is 1 - t/1000, and the
model that runs is the first whose cumulative fraction reaches it. With the medium fraction 0
it is two-model T-Stitch exactly. (The released three-model FID script is broken: it sets
`alloc` and reads `fractions`; this one is tested, tests/test_tstitch3.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from diffrepro.methods import MethodOutput, register_method

ROLES = ("small", "medium", "large")
# Cumulative fractions are sums of grid values (0.3 + 0.6 = 0.8999999999999999): compare
# with a tolerance far below one step of any grid.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class TStitch3Setting:
    small: float   # fraction of the trajectory for the small model (first, noisiest steps)
    medium: float  # then the medium model; the large model takes the rest, 1 - small - medium

    def __post_init__(self):
        for name in ("small", "medium"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"tstitch3 {name} fraction must be in [0, 1], got {getattr(self, name)}")
        if self.small + self.medium > 1.0 + TOLERANCE:
            raise ValueError(f"tstitch3 fractions small + medium must be at most 1, got "
                             f"{self.small} + {self.medium}")

    @property
    def large(self) -> float:
        return max(0.0, 1.0 - self.small - self.medium)

    def id(self) -> str:
        return f"s{self.small:g}-m{self.medium:g}"


def model_for_timestep(t: int, small: float, medium: float,
                       num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> str:
    progress = 1.0 - t / num_timesteps
    if progress <= small + TOLERANCE:
        return "small"
    if progress <= small + medium + TOLERANCE:
        return "medium"
    return "large"


@register_method("tstitch3", setting=TStitch3Setting, roles=ROLES)
def tstitch3(models, sampler, noise, labels, generators, setting: TStitch3Setting) -> MethodOutput:
    """Trajectory stitching over three models: small, then medium, then large."""
    from diffrepro.diffusion.sampling import sample_loop  # torch: see methods/tstitch.py

    def pick(i: int, t: int):
        role = model_for_timestep(t, setting.small, setting.medium)
        return role, models[role]

    samples, steps = sample_loop(sampler, pick, noise, labels, generators)
    return MethodOutput(samples, steps)
