"""ParaTAA (Tang et al., ICML 2024, arXiv 2402.09970): the DDIM trajectory solved in
parallel by fixed-point iteration with Triangular Anderson Acceleration."""

from __future__ import annotations

import time
from dataclasses import dataclass

from diffrepro.diffusion.parallel_setting import SolvesSequentialDDIM
from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class ParaTAASetting(SolvesSequentialDDIM):
    steps: int                        # DDIM steps of the trajectory being solved
    window: int                       # steps evaluated per parallel iteration (one batch)
    order: int = 1                    # steps unrolled per update (k)
    memory: int = 2                   # TAA memory m; m = 1 is plain fixed-point iteration
    tolerance: float = 1e-3           # a step is done when its residual RMS <= tolerance ...
    relative_tolerance: float = 1e-3  # ... or <= relative_tolerance x the step's DDPM std
    max_iterations: int = 0           # 0: the number of steps (enough: each iteration finalises one)
    warm_start: bool = False          # start from another class's sequential trajectory

    def __post_init__(self):
        problems = [msg for bad, msg in [
            (self.steps < 1, f"steps must be >= 1, got {self.steps}"),
            (not 1 <= self.window <= self.steps, f"window must be in 1..steps, got {self.window}"),
            (not 1 <= self.order <= max(self.window, 1), f"order must be in 1..window, got {self.order}"),
            (self.memory < 1, f"memory must be >= 1 (1 = plain fixed point), got {self.memory}"),
            (self.tolerance < 0 or self.relative_tolerance < 0, "tolerances must be >= 0"),
            (self.max_iterations < 0, f"max_iterations must be >= 0, got {self.max_iterations}"),
        ] if bad]
        if problems:
            raise ValueError("parataa: " + "; ".join(problems))

    def id(self) -> str:
        return (f"n{self.steps}-w{self.window}-k{self.order}-m{self.memory}-tol{self.tolerance:g}"
                f"-rtol{self.relative_tolerance:g}-it{self.iteration_cap}"
                + ("-warm" if self.warm_start else ""))


@register_method("parataa", setting=ParaTAASetting, roles=("model",), samplers=("ddim",))
def parataa(models, sampler, noise, labels, generators, setting: ParaTAASetting) -> MethodOutput:
    """ParaTAA: parallel fixed-point DDIM with Triangular Anderson Acceleration."""
    # torch-using imports here, not at the top: the workflow imports this module to read
    # its config, and must not pay for torch there
    import torch

    from diffrepro.diffusion.parallel import (ParaTAASolver, sequential_trajectories,
                                              solve_in_lockstep, summarize)

    denoiser = models["model"]
    trajectory = setting.trajectory(sampler)
    noises = torch.stack([trajectory.draw_noise(noise.shape[1:], g) for g in generators])
    initial, given_s = [None] * len(noise), 0.0
    if setting.warm_start:
        # The paper's warm start reuses the trajectory of a similar prompt; here: the same
        # noise with the next class label. It is given, not counted in the cost.
        began = time.perf_counter()
        other = (labels + 1) % denoiser.null_label
        initial = list(sequential_trajectories(trajectory, denoiser, noise, other, noises))
        given_s = time.perf_counter() - began
    solvers = [ParaTAASolver(trajectory, noise[k], noises[k], window=setting.window,
                             order=setting.order, memory=setting.memory,
                             tolerance=setting.tolerance,
                             relative_tolerance=setting.relative_tolerance,
                             max_iterations=setting.iteration_cap, initial=initial[k])
               for k in range(len(noise))]
    calls = solve_in_lockstep(solvers, denoiser, labels)
    samples, per_image, traces = summarize(solvers)
    return MethodOutput(samples, {"model": calls}, per_image, traces, uniform_batch=False,
                        given_s=given_s)
