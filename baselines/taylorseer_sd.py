"""TaylorSeer (Liu et al., 2025) on the text-to-image pipeline's U-Net, through diffusers' hook
(diffusers/hooks/taylorseer_cache.py): between full steps, the attention and feed-forward
outputs are forecast by a Taylor expansion from the last full steps."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, PlainPipelineReference, check_int, register_method


@dataclass(frozen=True)
class TaylorSeerSetting(PlainPipelineReference):
    cache_interval: int = 1   # a full step every `cache_interval` steps; 1: every step (off)
    max_order: int = 1        # order of the Taylor forecast (diffusers' default)
    warmup_steps: int = 3     # full steps before any forecast (diffusers' disable_cache_before_step)
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        check_taylorseer(self, "taylorseer_sd")
        check_int("taylorseer_sd", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        name = f"i{self.cache_interval}-o{self.max_order}-w{self.warmup_steps}"
        return f"{self.steps}-{name}" if self.steps else name


def check_taylorseer(setting, method: str) -> None:
    """TaylorSeer's knobs (also taylorseer_dit's)."""
    for name, low in (("cache_interval", 1), ("max_order", 0), ("warmup_steps", 0)):
        check_int(method, name, getattr(setting, name), low)
    if setting.warmup_steps < 1 and setting.cache_interval > 1:
        raise ValueError(f"{method} warmup_steps must be >= 1 when cache_interval > 1: "
                         "a forecast needs one full step first")


@register_method("taylorseer_sd", setting=TaylorSeerSetting, roles=("model",), family="pipeline")
def taylorseer_sd(pipeline, unets, call, setting: TaylorSeerSetting) -> MethodOutput:
    """diffusers' TaylorSeer cache hook on the pipeline's U-Net."""
    from diffrepro.t2i.caches import taylorseer
    from diffrepro.t2i.step_count import count_unet_calls

    with taylorseer(pipeline.unet, setting.cache_interval, setting.max_order, setting.warmup_steps):
        samples, steps = count_unet_calls(call)
    return MethodOutput(samples, steps)
