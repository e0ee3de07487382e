"""T-Stitch on diffusers text-to-image pipelines (SD-1.x, SDXL, LCM-SDXL): a small U-Net for
the first steps, the large pipeline's U-Net for the rest; text encoder, scheduler, VAE and
guidance stay the large pipeline's (diffrepro.t2i.stitch)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from diffrepro.methods import MethodOutput, check_int, register_method


@dataclass(frozen=True)
class TStitchSDSetting:
    ratio: float  # fraction of the steps, by step index, given to the small U-Net
    steps: int | None = None  # None: t2i.steps (LCM's 2 / 4 / 8-step grid sets its own)

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch_sd ratio must be in [0, 1], got {self.ratio}")
        check_int("tstitch_sd", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        return f"{self.steps}-r{self.ratio:g}" if self.steps else f"r{self.ratio:g}"


@register_method("tstitch_sd", setting=TStitchSDSetting, roles=("small", "large"), family="pipeline")
def tstitch_sd(pipeline, unets, call, setting: TStitchSDSetting) -> MethodOutput:
    """Trajectory stitching inside the large pipeline's own denoising loop."""
    from diffrepro.t2i.stitch import stitched

    with stitched(pipeline, unets["small"], setting.ratio) as (wrapper, call_kwargs):
        samples = call(**call_kwargs)
    return MethodOutput(samples, Counter(wrapper.calls))
