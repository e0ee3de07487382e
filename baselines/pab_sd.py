"""Pyramid Attention Broadcast (Zhao et al., 2024) on the text-to-image pipeline's U-Net, through
diffusers' hook (diffusers/hooks/pyramid_attention_broadcast.py): attention outputs broadcast
to the following steps inside a timestep range, cross-attention less often recomputed than
self-attention in the paper's pyramid."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, PlainPipelineReference, check_int, register_method


@dataclass(frozen=True)
class PABSetting(PlainPipelineReference):
    spatial_skip: int = 1      # self-attention recomputed every `spatial_skip` steps; 1: every step (off)
    cross_skip: int = 1        # cross-attention likewise
    timestep_low: int = 100    # broadcast only while timestep_low < t < timestep_high (diffusers' default range)
    timestep_high: int = 800
    steps: int | None = None   # None: t2i.steps

    def __post_init__(self):
        for name in ("spatial_skip", "cross_skip"):
            check_int("pab_sd", name, getattr(self, name), 1)
        check_timestep_range(self, "pab_sd")
        check_int("pab_sd", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        name = f"s{self.spatial_skip}-c{self.cross_skip}"
        if (self.timestep_low, self.timestep_high) != (100, 800):
            name += f"-t{self.timestep_low}-{self.timestep_high}"
        return f"{self.steps}-{name}" if self.steps else name


def check_timestep_range(setting, method: str) -> None:
    """PAB's broadcast range (also pab_dit's)."""
    if not (isinstance(setting.timestep_low, int) and isinstance(setting.timestep_high, int)
            and -1 <= setting.timestep_low < setting.timestep_high <= 1001):
        raise ValueError(f"{method} needs integers -1 <= timestep_low < timestep_high <= 1001, got "
                         f"{setting.timestep_low!r}, {setting.timestep_high!r}")


@register_method("pab_sd", setting=PABSetting, roles=("model",), family="pipeline")
def pab_sd(pipeline, unets, call, setting: PABSetting) -> MethodOutput:
    """diffusers' Pyramid Attention Broadcast hook on the pipeline's U-Net."""
    from diffrepro.t2i.caches import pyramid_attention_broadcast
    from diffrepro.t2i.step_count import count_unet_calls

    with pyramid_attention_broadcast(pipeline.unet, setting.spatial_skip, setting.cross_skip,
                                     (setting.timestep_low, setting.timestep_high)):
        samples, steps = count_unet_calls(call)
    return MethodOutput(samples, steps)
