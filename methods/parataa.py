"""ParaTAA (Tang et al., ICML 2024, arXiv 2402.09970): the DDIM trajectory solved in
parallel by fixed-point iteration with Triangular Anderson Acceleration."""

from __future__ import annotations

import time
from dataclasses import dataclass

from diffrepro.diffusion.parallel_setting import SolvesSequentialDDIM
from diffrepro.methods import MethodOutput, register_method

# The names diffrepro.diffusion.parallel's ENTRY_RULES and HISTORY_RULES accept (repeated
# here: reading the config must not import torch; a test checks they agree).
WINDOW_INIT_RULES = ("paradigms", "release")
TAA_HISTORY_RULES = ("newest", "release")


@dataclass(frozen=True)
class ParaTAASetting(SolvesSequentialDDIM):
    steps: int                        # DDIM steps of the trajectory being solved
    window: int                       # steps evaluated per parallel iteration (one batch)
    order: int = 1                    # steps unrolled per update (k)
    memory: int = 2                   # TAA memory m; m = 1 is plain fixed-point iteration
    tolerance: float = 1e-3           # a step is done when its residual RMS <= tolerance ...
    relative_tolerance: float = 1e-3  # ... or <= relative_tolerance x the step's DDPM std
    max_iterations: int = 0           # 0: the number of steps (enough: each iteration finalises one)
    warm_start: bool = False          # solve every step, starting from another class's sequential trajectory
    # Solve only the last k steps for this class, the states before them taken from another
    # class's sequential trajectory (the release's parallel_sd_winit.py, an SDEdit-like
    # variation of that image: NOT this class's sequential sample). 0: off.
    variation_steps: int = 0
    # The released code's rules where it departs from ours (diffrepro/diffusion/parallel.py,
    # ENTRY_RULES and HISTORY_RULES); they matter only for a window shorter than the steps.
    window_init: str = "paradigms"    # states entering the window: "paradigms" | "release"
    taa_history: str = "newest"       # TAA's history rows (memory >= 3): "newest" | "release"

    def __post_init__(self):
        problems = [msg for bad, msg in [
            (self.steps < 1, f"steps must be >= 1, got {self.steps}"),
            (not 1 <= self.window <= self.steps, f"window must be in 1..steps, got {self.window}"),
            (not 1 <= self.order <= max(self.window, 1), f"order must be in 1..window, got {self.order}"),
            (self.memory < 1, f"memory must be >= 1 (1 = plain fixed point), got {self.memory}"),
            (self.tolerance < 0 or self.relative_tolerance < 0, "tolerances must be >= 0"),
            (self.max_iterations < 0, f"max_iterations must be >= 0, got {self.max_iterations}"),
            (not 0 <= self.variation_steps < self.steps,
             f"variation_steps must be in 0..steps-1 = 0..{self.steps - 1} (0 = off; "
             f"steps would re-solve every step, which is warm_start: true), got {self.variation_steps}"),
            (self.variation_steps > 0 and self.warm_start,
             "warm_start and variation_steps both start from another class's trajectory: set one "
             "(warm_start solves every step, variation_steps only the last k)"),
            (self.window_init not in WINDOW_INIT_RULES,
             f"window_init must be one of {', '.join(WINDOW_INIT_RULES)}, got {self.window_init!r}"),
            (self.taa_history not in TAA_HISTORY_RULES,
             f"taa_history must be one of {', '.join(TAA_HISTORY_RULES)}, got {self.taa_history!r}"),
        ] if bad]
        if problems:
            raise ValueError("parataa: " + "; ".join(problems))

    def id(self) -> str:
        # A field at its default adds nothing: the ids (and result paths) of the settings
        # that existed before it stay as they were.
        return (f"n{self.steps}-w{self.window}-k{self.order}-m{self.memory}-tol{self.tolerance:g}"
                f"-rtol{self.relative_tolerance:g}-it{self.iteration_cap}"
                + ("-warm" if self.warm_start else "")
                + (f"-var{self.variation_steps}" if self.variation_steps else "")
                + ("" if self.window_init == "paradigms" else f"-init{self.window_init}")
                + ("" if self.taa_history == "newest" else f"-hist{self.taa_history}"))


@register_method("parataa", setting=ParaTAASetting, roles=("model",), samplers=("ddim",))
def parataa(models, sampler, noise, labels, generators, setting: ParaTAASetting) -> MethodOutput:
    """ParaTAA: parallel fixed-point DDIM with Triangular Anderson Acceleration."""
    # torch-using imports here, not at the top: the workflow imports this module to read
    # its config, and must not pay for torch there
    import torch

    from diffrepro.diffusion.parallel import (ParaTAASolver, sequential_trajectories,
                                              solve_in_lockstep, summarize)

    denoiser = models["model"]
    trajectory = setting.trajectory(sampler, noise.device)  # solved where the model runs
    noises = torch.stack([trajectory.draw_noise(noise.shape[1:], g) for g in generators])
    initial, given_s = [None] * len(noise), 0.0
    if setting.warm_start or setting.variation_steps:
        # The paper's warm start reuses the trajectory of a similar prompt; here: the same
        # noise with the next class label. It is given, not counted in the cost. (The
        # release's variation starts from prompt A's ParaTAA trajectory, converged to its
        # tolerance; we take A's sequential one, the exact solution.)
        began = time.perf_counter()
        other = (labels + 1) % denoiser.null_label
        initial = list(sequential_trajectories(trajectory, denoiser, noise, other, noises))
        given_s = time.perf_counter() - began
    # variation: the states before step N - k are the other class's, as the release's
    # finished_index = variation_steps (its indices run from x_0 up)
    solve_from = setting.steps - setting.variation_steps if setting.variation_steps else 0
    solvers = [ParaTAASolver(trajectory, noise[k], noises[k], window=setting.window,
                             order=setting.order, memory=setting.memory,
                             tolerance=setting.tolerance,
                             relative_tolerance=setting.relative_tolerance,
                             max_iterations=setting.iteration_cap, initial=initial[k],
                             solve_from=solve_from, window_init=setting.window_init,
                             taa_history=setting.taa_history)
               for k in range(len(noise))]
    calls = solve_in_lockstep(solvers, denoiser, labels)
    samples, per_image, traces = summarize(solvers)
    return MethodOutput(samples, {"model": calls}, per_image, traces, uniform_batch=False,
                        given_s=given_s)
