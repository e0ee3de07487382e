"""One U-Net in the text-to-image pipeline, e.g. a BK-SDM student or its teacher: the
baseline every text-to-image method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from diffrepro.methods import MethodOutput, check_int, register_method


@dataclass(frozen=True)
class TextToImageSetting:
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        check_int("text_to_image", "steps", self.steps, 1, optional=True)

    def id(self) -> str:
        return f"steps{self.steps}" if self.steps else "default"


@register_method("text_to_image", setting=TextToImageSetting, roles=("model",), family="pipeline")
def text_to_image(pipeline, unets, call, setting: TextToImageSetting) -> MethodOutput:
    """The pipeline as it is, with the configured U-Net."""
    from diffrepro.t2i.step_count import count_unet_calls

    return MethodOutput(*count_unet_calls(call))
