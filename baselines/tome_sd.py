"""Token Merging for Stable Diffusion (Bolya & Hoffman, 2023) through its pip package `tomesd`
(dbolya/tomesd, tomesd/patch.py): a fraction `ratio` of the tokens merged before self-attention
in the U-Net's transformer blocks at most `max_downsample` times downsampled."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, PlainPipelineReference, check_int, register_method


@dataclass(frozen=True)
class ToMeSetting(PlainPipelineReference):
    ratio: float = 0.0        # fraction of tokens merged; 0: none (off); tomesd allows up to 1 - 1/(sx*sy) = 0.75
    max_downsample: int = 1   # 1, 2, 4 or 8 (tomesd's default 1: the full-resolution blocks only)
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        if not (isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio <= 0.75):
            raise ValueError(f"tome_sd ratio must be in [0, 0.75], got {self.ratio!r}")
        if self.max_downsample not in (1, 2, 4, 8):
            raise ValueError(f"tome_sd max_downsample must be 1, 2, 4 or 8, got {self.max_downsample!r}")
        check_int("tome_sd", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        name = f"r{self.ratio:g}" + (f"-d{self.max_downsample}" if self.max_downsample != 1 else "")
        return f"{self.steps}-{name}" if self.steps else name


@register_method("tome_sd", setting=ToMeSetting, roles=("model",), family="pipeline")
def tome_sd(pipeline, unets, call, setting: ToMeSetting) -> MethodOutput:
    """ToMe for SD on the pipeline's U-Net: tokens merged before self-attention."""
    from diffrepro.t2i.caches import token_merging
    from diffrepro.t2i.step_count import count_unet_calls

    with token_merging(pipeline.unet, setting.ratio, setting.max_downsample):
        samples, steps = count_unet_calls(call)
    return MethodOutput(samples, steps)
