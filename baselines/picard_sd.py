"""ParaDiGMS' sliding-window Picard iteration (Shih et al., NeurIPS 2023) inside diffusers'
SD-1.x pipeline: the same solver as baselines/picard.py on the pipeline's DDIM trajectory."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.picard import PicardSetting
from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class PicardSDSetting(PicardSetting):
    def reference(self) -> tuple[str, dict]:
        return "sequential_sd", {"steps": self.steps}


@register_method("picard_sd", setting=PicardSDSetting, roles=("model",), family="pipeline")
def picard_sd(pipeline, unets, call, setting: PicardSDSetting) -> MethodOutput:
    """ParaDiGMS in the SD pipeline: parallel Picard iteration over a sliding window of DDIM steps."""
    from diffrepro.diffusion.parallel import PicardSolver
    from diffrepro.t2i.parallel import solve_in_pipeline

    def solver(trajectory, x_T, noise, initial):
        return PicardSolver(trajectory, x_T, noise, window=setting.window, tolerance=setting.tolerance,
                            max_iterations=setting.iteration_cap)

    return solve_in_pipeline(pipeline, call, solver)
