"""T-Stitch with ControlNet (NVlabs/T-Stitch sdxl_canny.py / sdxl_depth.py / sdxl_pose.py): inside
diffusers' ControlNet pipeline the large model's ControlNet runs at every step and its residuals
go to whichever U-Net runs, the small one for the first steps (diffrepro.t2i.stitch,
diffrepro.t2i.controlnet). The embedded suite steers each image with the edge map of a digit of
its prompt's class and scores control fidelity as the edge IoU of that map and the image; at paper
scale each caption is steered by its own COCO image's control image (rule control_images,
diffrepro.t2i.control_images)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from diffrepro.methods import MethodOutput, register_method


@dataclass(frozen=True)
class TStitchControlNetSetting:
    ratio: float              # fraction of the steps, by step index, given to the small U-Net
    scale: float = 0.5        # controlnet_conditioning_scale (the T-Stitch SDXL scripts: 0.5)
    steps: int | None = None  # None: t2i.steps

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"tstitch_controlnet_sd ratio must be in [0, 1], got {self.ratio}")
        if not (isinstance(self.scale, (int, float)) and 0.0 <= self.scale <= 10.0):
            raise ValueError(f"tstitch_controlnet_sd scale (controlnet_conditioning_scale) must be a number "
                             f"in [0, 10], got {self.scale!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise ValueError(f"tstitch_controlnet_sd steps must be an integer in [1, 1000], got {self.steps!r}")

    def id(self) -> str:
        name = f"r{self.ratio:g}-s{self.scale:g}"
        return f"{self.steps}-{name}" if self.steps else name


@register_method("tstitch_controlnet_sd", setting=TStitchControlNetSetting, roles=("small", "large", "controlnet"),
                 family="pipeline")
def tstitch_controlnet_sd(pipeline, unets, call, setting: TStitchControlNetSetting) -> MethodOutput:
    """T-Stitch inside a ControlNet pipeline: the ControlNet's residuals reach both U-Nets."""
    from diffrepro.t2i.controlnet import digit_control, edge_iou, edge_map
    from diffrepro.t2i.stitch import stitched

    if getattr(pipeline, "controlnet", None) is None:
        raise ValueError(f"tstitch_controlnet_sd needs a ControlNet pipeline; got {type(pipeline).__name__} "
                         f"(give the method entry a `controlnet` role)")
    controlnet, edges = pipeline.controlnet, None
    if getattr(call, "class_prompts", True):
        # the embedded suite: the edge map of a real digit of each prompt's class
        image, edges = digit_control(call.indices, [int(y) for y in call.labels], pipeline.vae_scale_factor)
        image = image.to(controlnet.device, controlnet.dtype)
    elif getattr(call, "control_images", None) is not None:
        # paper scale: each caption's control image, resized to the generated size with PIL's
        # default filter as the T-Stitch SDXL scripts' image.resize((1024, 1024))
        image = [picture.resize(call.size) for picture in call.control_images]
    else:
        raise ValueError("tstitch_controlnet_sd: caption prompts need control images; give the ControlNet model "
                         "control_images (rule control_images makes them from each caption's COCO image)")
    counted = Counter()
    hook = controlnet.register_forward_pre_hook(lambda *_: counted.update(["controlnet"]))
    try:
        with stitched(pipeline, unets["small"], setting.ratio) as (wrapper, call_kwargs):
            samples = call(image=image, controlnet_conditioning_scale=float(setting.scale), **call_kwargs)
    finally:
        hook.remove()
    per_image = {}
    if edges is not None and samples.shape[1] == 1 and tuple(samples.shape[2:]) == edges.shape[1:]:
        # the embedded suite's pixels: edge agreement of the control map and the generated digit
        pixels = ((samples[:, 0].detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
        per_image["edge_iou"] = edge_iou(edges, edge_map(pixels))
    return MethodOutput(samples, Counter(wrapper.calls) + counted, per_image=per_image)
