"""ParaTAA (Tang et al., ICML 2024) inside diffusers' SD-1.x pipeline: the released SD script's
setting (TZW1998/ParaTAA-Diffusion, parallel_sd.py; its variation: parallel_sd_winit.py) on the
same fixed-point solver as the DiT method (methods/parataa.py), with the pipeline's U-Net,
guidance and DDIM scheduler as the denoiser and trajectory (diffrepro.t2i.parallel)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method
from methods.parataa import ParaTAASetting


@dataclass(frozen=True)
class ParaTAASDSetting(ParaTAASetting):
    # Where warm_start / variation_steps take the initial trajectory from: the sequential
    # trajectory (same noise) of this prompt (parallel_sd_winit.py's prompt1, "a cute dog"),
    # or, with null, of the next class's prompt (the embedded suite's class prompts, as the
    # DiT method's next label).
    source_prompt: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.source_prompt is not None and not self.source_prompt.strip():
            raise ValueError("parataa_sd: source_prompt must be a prompt or null (the next class's), got ''")

    def reference(self) -> tuple[str, dict]:
        return "sequential_sd", {"steps": self.steps}

    def id(self) -> str:
        source = re.sub(r"[^a-z0-9]+", "-", self.source_prompt.lower()).strip("-") if self.source_prompt else ""
        return super().id() + (f"-src-{source}" if source else "")


def source_prompts(call, setting) -> list[str] | None:
    """Per image, the prompt whose trajectory starts the solver (None: solve from scratch)."""
    from diffrepro.t2i.components import DIGIT_WORDS, digit_prompt

    if not (setting.warm_start or setting.variation_steps):
        return None
    if setting.source_prompt is not None:
        return [setting.source_prompt] * len(call.prompts)
    if not call.class_prompts:
        raise ValueError("parataa_sd: warm_start / variation_steps with a prompt list need a source_prompt "
                         "(the prompt whose trajectory is reused, parallel_sd_winit.py's prompt1)")
    return [digit_prompt((int(label) + 1) % len(DIGIT_WORDS)) for label in call.labels]


@register_method("parataa_sd", setting=ParaTAASDSetting, roles=("model",), family="pipeline")
def parataa_sd(pipeline, unets, call, setting: ParaTAASDSetting) -> MethodOutput:
    """ParaTAA in the SD pipeline: parallel fixed-point DDIM with Triangular Anderson Acceleration."""
    from diffrepro.diffusion.parallel import ParaTAASolver
    from diffrepro.t2i.parallel import solve_in_pipeline

    # variation: the source trajectory's states before step N - k are kept (finished_index = k)
    solve_from = setting.steps - setting.variation_steps if setting.variation_steps else 0

    def solver(trajectory, x_T, noise, initial):
        return ParaTAASolver(trajectory, x_T, noise, window=setting.window, order=setting.order,
                             memory=setting.memory, tolerance=setting.tolerance,
                             relative_tolerance=setting.relative_tolerance,
                             max_iterations=setting.iteration_cap, initial=initial, solve_from=solve_from,
                             window_init=setting.window_init, taa_history=setting.taa_history)

    return solve_in_pipeline(pipeline, call, solver, source_prompts(call, setting))
