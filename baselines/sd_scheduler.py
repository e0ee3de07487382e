"""Fewer steps in the text-to-image pipeline with another diffusers scheduler (PNDM, DDIM,
DPM-Solver++, UniPC), built from the pipeline's own scheduler config (diffrepro.t2i.schedulers)."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, check_int, register_method


@dataclass(frozen=True)
class SDSchedulerSetting:
    scheduler: str = "pipeline"  # pipeline (its configured scheduler), pndm, ddim, dpmsolver++, unipc
    steps: int | None = None     # None: t2i.steps

    def __post_init__(self):
        from diffrepro.t2i.schedulers import NAMES

        if self.scheduler not in NAMES:
            raise ValueError(f"sd_scheduler scheduler must be one of {list(NAMES)}, got {self.scheduler!r}")
        check_int("sd_scheduler", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        return f"{self.scheduler}{self.steps}" if self.steps else self.scheduler


@register_method("sd_scheduler", setting=SDSchedulerSetting, roles=("model",), family="pipeline")
def sd_scheduler(pipeline, unets, call, setting: SDSchedulerSetting) -> MethodOutput:
    """The pipeline with another diffusers scheduler and step count (fewer steps at matched cost)."""
    from diffrepro.t2i.step_count import count_unet_calls
    from diffrepro.t2i.schedulers import using_scheduler

    with using_scheduler(pipeline, setting.scheduler):
        samples, steps = count_unet_calls(call)
    return MethodOutput(samples, steps)
