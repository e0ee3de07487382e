"""ParaDiGMS (Shih et al., NeurIPS 2023, arXiv 2305.16317): sliding-window Picard iteration,
the parallel-sampling baseline ParaTAA compares against."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.diffusion.parallel_setting import SolvesSequentialDDIM
from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class PicardSetting(SolvesSequentialDDIM):
    steps: int               # DDIM steps of the trajectory being solved
    window: int              # ParaDiGMS' "parallel": steps per batched call
    tolerance: float = 0.1   # change RMS <= tolerance x noise std (ParaDiGMS' default 0.1)
    max_iterations: int = 0  # 0: the number of steps

    def __post_init__(self):
        if not 1 <= self.window <= self.steps or self.tolerance < 0 or self.max_iterations < 0:
            raise ValueError(f"picard: need 1 <= window <= steps, tolerance >= 0 and "
                             f"max_iterations >= 0; got {self}")

    def id(self) -> str:
        return f"n{self.steps}-w{self.window}-tol{self.tolerance:g}-it{self.iteration_cap}"


@register_method("picard", setting=PicardSetting, roles=("model",), samplers=("ddim",))
def picard(models, sampler, noise, labels, generators, setting: PicardSetting) -> MethodOutput:
    """ParaDiGMS: parallel Picard iteration over a sliding window of DDIM steps."""
    from diffrepro.diffusion.parallel import PicardSolver, solve_in_lockstep, summarize  # torch

    trajectory = setting.trajectory(sampler, noise.device)  # solved where the model runs
    solvers = [PicardSolver(trajectory, noise[k], trajectory.draw_noise(noise.shape[1:], generators[k]),
                            window=setting.window, tolerance=setting.tolerance,
                            max_iterations=setting.iteration_cap)
               for k in range(len(noise))]
    calls = solve_in_lockstep(solvers, models["model"], labels)
    samples, per_image, traces = summarize(solvers)
    return MethodOutput(samples, {"model": calls}, per_image, traces, uniform_batch=False)
