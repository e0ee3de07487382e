"""T-Stitch for any diffusers text-to-image pipeline, without forking the pipeline's loop.

The large pipeline keeps its text encoder, scheduler, VAE and guidance; only the U-Net call is
redirected. `StitchedUNet` stands in for `pipeline.unet`: it shows the large U-Net to the
pipeline (config, dtype, add_embedding, ...) and runs the small U-Net while
`(i + 1) / len(timesteps) <= r` — the released SD/SDXL rule (NVlabs/T-Stitch,
tstitch_sd_utils.py; its SD-1.5 LCM pipeline compares i / len(timesteps), see RULES), with i
the step index and len(timesteps) the scheduler's own count (PNDM with skip_prk_steps has
N + 1 timesteps). The step index comes from the pipeline's
`callback_on_step_end`, so the rule does not depend on timestep values (PNDM repeats one).

In diffusers' ControlNet pipelines (SD and SDXL) the ControlNet's down / mid residuals are keyword
arguments of the U-Net call; the wrapper hands them to whichever U-Net runs, as T-Stitch's
TStitchSDXLControlNet does (diffrepro.t2i.controlnet says when a small U-Net can take them).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import torch


def uses_small_unet(step_index: int, num_timesteps: int, ratio: float) -> bool:
    """The released rule for SD / SDXL (and LCM-SDXL, which runs through the SDXL pipeline)."""
    return (step_index + 1) / num_timesteps <= ratio


def uses_small_unet_lcm(step_index: int, num_timesteps: int, ratio: float) -> bool:
    """The released rule for LatentConsistencyModelPipeline (LCM on SD-1.5, TStitchLCM): the
    step index itself against r, with r = 0 and r = 1 meaning the large or small U-Net alone.
    At 4 steps and r = 0.5 the small U-Net takes 3 steps, where the SD rule gives it 2."""
    if ratio in (0.0, 1.0):
        return ratio == 1.0
    return step_index / num_timesteps <= ratio


# The rule each pipeline class's released T-Stitch code applies (by class name, MRO included).
RULES = {"LatentConsistencyModelPipeline": uses_small_unet_lcm}


def stitch_rule(pipeline):
    return next((RULES[c.__name__] for c in type(pipeline).__mro__ if c.__name__ in RULES), uses_small_unet)


class StitchedUNet(torch.nn.Module):
    """The large U-Net as the pipeline sees it; the small one for the first steps."""

    def __init__(self, small: torch.nn.Module, large: torch.nn.Module, ratio: float, scheduler,
                 rule=uses_small_unet):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"T-Stitch ratio must be in [0, 1], got {ratio}")
        self.small, self.large = small, large
        self.ratio = ratio
        self.rule = rule
        self._scheduler = scheduler
        self.step_index = 0
        self.calls: Counter = Counter()  # U-Net calls per role, for the step counts

    # The pipeline reads the large model's attributes (config, dtype, device, add_embedding,
    # encoder_hid_proj, ...): everything this wrapper does not define comes from it.
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["large"], name)

    @property
    def config(self):
        return self.large.config

    def role(self) -> str:
        n = len(self._scheduler.timesteps)
        return "small" if self.rule(self.step_index, n, self.ratio) else "large"

    def forward(self, sample, timestep, *args, **kwargs):
        role = self.role()
        self.calls[role] += 1
        unet = self.small if role == "small" else self.large
        # LCM's guidance embedding goes only to a U-Net trained with one (LCM-SDXL has
        # time_cond_proj_dim; the LCM-LoRA SSD-1B does not, and would fail on it).
        if kwargs.get("timestep_cond") is not None and unet.config.get("time_cond_proj_dim") is None:
            kwargs = {**kwargs, "timestep_cond": None}
        return unet(sample, timestep, *args, **kwargs)

    def on_step_end(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        self.step_index = step_index + 1
        return {}


@contextlib.contextmanager
def stitched(pipeline, small_unet: torch.nn.Module, ratio: float):
    """Within the block, `pipeline.unet` is stitched; yields (wrapper, call kwargs).

    Pass the kwargs to the pipeline call (they hold the step callback). The pipeline's own
    U-Net is put back on exit, also after an error.
    """
    large = pipeline.unet
    if isinstance(large, StitchedUNet):
        raise ValueError("the pipeline is already stitched")
    controlnet = getattr(pipeline, "controlnet", None)
    if controlnet is not None:
        from .controlnet import check_residual_compatible

        for net in getattr(controlnet, "nets", [controlnet]):  # MultiControlNetModel: each net
            check_residual_compatible(net.config, small_unet.config)
    wrapper = StitchedUNet(small_unet, large, ratio, pipeline.scheduler, rule=stitch_rule(pipeline))
    # Plain attribute swap: DiffusionPipeline.__setattr__ would re-register the module and
    # rewrite the pipeline's config entry for "unet".
    object.__setattr__(pipeline, "unet", wrapper)
    try:
        yield wrapper, {"callback_on_step_end": wrapper.on_step_end}
    finally:
        object.__setattr__(pipeline, "unet", large)
