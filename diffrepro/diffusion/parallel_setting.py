"""What the settings of parallel DDIM solvers share, without torch: the workflow imports
every method's setting to read its config, and importing torch there costs seconds per
Snakemake start (twice per job on a cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .parallel import Trajectory
    from .samplers import DDIMSampler


class SolvesSequentialDDIM:
    """Mixin for the (frozen dataclass) settings of a parallel DDIM solver with fields
    `steps` and `max_iterations`: measured against the sequential sampler, same steps."""

    @property
    def iteration_cap(self) -> int:
        return self.max_iterations or self.steps  # N iterations always suffice

    def reference(self) -> tuple[str, dict]:
        return "sequential", {"steps": self.steps}

    def trajectory(self, sampler: DDIMSampler, device=None) -> Trajectory:
        """The sampler's DDIM trajectory, its coefficients on `device` (where the states live)."""
        from .parallel import Trajectory

        trajectory = Trajectory.from_sampler(sampler, device)
        if trajectory.steps != self.steps:
            raise ValueError(f"the setting has {self.steps} steps, the sampler {trajectory.steps}")
        return trajectory
